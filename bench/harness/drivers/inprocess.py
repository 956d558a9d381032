"""Driver: llama-cpp-python in this process, the floor the sidecar is measured against.

Run by the project's ``.venv`` (the portable build the sidecar uses) and by
``bench/.native-venv`` (the same source built for this CPU only).

Runs the same low-level loop the sidecar's engine runs (``Llama.generate`` with
the same sampling arguments, one token at a time, stop at an end-of-generation
token or ``maxTokens``), turning token bytes into text with an incremental
UTF-8 decoder. No JSON-RPC, no queue, no thread hop: what is left is llama.cpp
and llama-cpp-python's own per-token Python.
"""

from __future__ import annotations

import codecs
import os
import time
from typing import Any

from .channel import serve
from .timeline import Timeline

_state: dict[str, Any] = {}


def start(_params: dict[str, Any]) -> dict[str, Any]:
    return {"pids": [os.getpid()], "spawnToReadyMs": None}


def load(params: dict[str, Any]) -> dict[str, Any]:
    """Import llama_cpp (first time) and load the model: the cost a host pays before its first prompt."""
    started = time.perf_counter()
    import llama_cpp

    from sidecar.engine.backends import choose_cpu_backend

    # As the sidecar does: a portable build has no CPU backend until one is chosen.
    backend = choose_cpu_backend(llama_cpp)
    _state["llm"] = llama_cpp.Llama(
        model_path=params["modelPath"],
        n_ctx=params["contextSize"],
        n_threads=params["threads"],
        n_threads_batch=params["threads"],
        n_batch=params["batchSize"],
        n_gpu_layers=0,
        # As the sidecar and node-llama-cpp run it: llama.cpp's default (auto) turns it on for
        # the CPU, which Llama can only ask for as True.
        flash_attn=True,
        verbose=False,
    )
    _state["is_eog"] = llama_cpp.llama_vocab_is_eog
    return {
        "loadMs": (time.perf_counter() - started) * 1000,
        "pids": [os.getpid()],
        "backend": {
            "variant": backend.variant,
            "build": backend.build,
            "bufferTypes": list(backend.buffer_types),
        },
    }


def generate(params: dict[str, Any]) -> dict[str, Any]:
    llm, is_eog = _state["llm"], _state["is_eog"]
    vocab = llm._model.vocab
    timeline = Timeline()
    tokens = llm.tokenize(params["prompt"].encode("utf-8"), add_bos=True, special=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    produced = 0
    stream = llm.generate(tokens, top_k=40, top_p=0.95, min_p=0.05, temp=0.0, repeat_penalty=1.0)
    for token in stream:
        if is_eog(vocab, token):
            break
        produced += 1
        timeline.text(decoder.decode(llm.detokenize([token])))
        if produced >= params["maxTokens"]:
            break
    stream.close()
    timeline.text(decoder.decode(b"", final=True))
    return timeline.result(produced, len(tokens))


def _close() -> None:
    if "llm" in _state:
        _state["llm"].close()


if __name__ == "__main__":
    serve({"start": start, "load": load, "generate": generate}, _close)
