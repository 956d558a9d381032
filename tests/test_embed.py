"""Embeddings: one vector per input, from a second context of the loaded file."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import pytest

from sidecar.client import RemoteError, SidecarClient
from sidecar.engine import llamacpp
from sidecar.engine.api import LoadOptions
from sidecar.engine.llamacpp import LlamaCppEngine
from sidecar.errors import ModelLoadFailed

from .harness import RawSidecar
from .tiny_model import write_tiny_model


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_similar_texts_have_closer_vectors(smol: SidecarClient) -> None:
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Stock prices fell sharply today."]
    result = smol.request("embed", {"input": texts})
    cat, kitten, stocks = result["embeddings"]
    assert len(cat) == 576  # SmolLM2-135M's width
    assert math.isclose(math.sqrt(_dot(cat, cat)), 1.0, rel_tol=1e-4)  # normalized by default
    assert _dot(cat, kitten) > _dot(cat, stocks)
    assert result["promptTokens"] > 15


def test_embedding_and_generation_share_the_model(smol: SidecarClient) -> None:
    raw = smol.request("embed", {"input": "hello", "normalize": False})["embeddings"][0]
    assert not math.isclose(math.sqrt(_dot(raw, raw)), 1.0, rel_tol=1e-3)
    assert smol.prompt("Hello", maxTokens=3, temperature=0)["usage"]["completionTokens"] == 3


def test_embed_errors(loaded: RawSidecar) -> None:
    assert loaded.error("embed", {"input": []})["data"] == {"field": "input"}
    too_long = loaded.error("embed", {"input": "hello " * 3000})
    assert too_long["code"] == -32006 and too_long["data"]["contextSize"] == 2048
    assert loaded.error("embed", {"input": "x", "modelId": "nope"})["code"] == -32005
    assert len(loaded.request("embed", {"input": ["a", "b"]})["embeddings"]) == 2


def test_the_client_raises_remote_errors_for_embed(smol: SidecarClient) -> None:
    with pytest.raises(RemoteError):
        smol.request("embed", {"input": 5})


@pytest.mark.parametrize("declared", [None, gguf.PoolingType.NONE], ids=["undeclared", "none"])
def test_an_embedding_is_the_mean_of_the_token_vectors(
    sidecar: RawSidecar, tmp_path: Path, declared: gguf.PoolingType | None, llama_cpp_in_process: ModuleType
) -> None:
    path = write_tiny_model(tmp_path / "model.gguf", pooling_type=declared)
    sidecar.request("loadModel", {"modelPath": str(path)})
    (vector,) = sidecar.request("embed", {"input": ["hello world"], "normalize": False})["embeddings"]
    per_token = llama_cpp_in_process.Llama(
        str(path),
        embedding=True,
        pooling_type=llama_cpp_in_process.LLAMA_POOLING_TYPE_NONE,
        flash_attn=True,  # as the sidecar runs it: llama.cpp's default turns it on for the CPU
        verbose=False,
    ).embed("hello world", normalize=False)
    assert np.allclose(vector, np.mean(per_token, axis=0), atol=1e-5)


def test_a_reranker_gives_no_embeddings(sidecar: RawSidecar, tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "ranker.gguf", pooling_type=gguf.PoolingType.RANK)
    sidecar.request("loadModel", {"modelPath": str(path), "modelId": "ranker"})
    error = sidecar.error("embed", {"input": "hello"})
    assert error["code"] == -32602 and error["data"] == {"field": "modelId"}, error
    assert "reranker" in error["message"]


def test_the_embedding_context_is_capped_whatever_the_model_context(
    sidecar: RawSidecar, tmp_path: Path
) -> None:
    path = write_tiny_model(tmp_path / "long.gguf", context_length=8192)
    loaded = sidecar.request("loadModel", {"modelPath": str(path), "contextSize": 8192})
    assert loaded["contextSize"] == 8192
    long_input = "hello " * 600  # ~3000 tokens: fits the model's context, not the embedding context
    assert sidecar.request("countTokens", {"prompt": long_input})["promptTokens"] < 8192
    too_long = sidecar.error("embed", {"input": long_input})
    assert too_long["code"] == -32006 and too_long["data"]["contextSize"] == 2048, too_long


def test_an_embedding_context_that_does_not_fit_in_memory_fails_cleanly(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LlamaCppEngine()
    model = engine.load(
        str(tiny_model), LoadOptions(), progress=lambda _value: None, should_stop=lambda: False
    )
    try:
        monkeypatch.setattr(llamacpp, "available_memory", lambda: 1024)  # after the load: only embed sees it
        with pytest.raises(ModelLoadFailed) as refused:
            model.embed(["hello"], normalize=True)
        assert refused.value.code == -32003 and "embedding context needs" in refused.value.message
        monkeypatch.undo()
        assert len(model.embed(["hello"], normalize=True)[0]) == 1  # and it opens once memory is there
    finally:
        model.close()


def test_empty_texts_on_a_model_without_bos_are_refused_not_decoded(
    sidecar: RawSidecar, tmp_path: Path
) -> None:
    # With no BOS an empty text has no tokens; llama.cpp cannot decode nothing (a crash, beside other inputs).
    path = write_tiny_model(tmp_path / "no-bos.gguf", add_bos=False)
    sidecar.request("loadModel", {"modelPath": str(path)})
    for params, field in (
        ({"input": ["", "a"]}, "input/0"),
        ({"input": ["a", ""]}, "input/1"),
        ({"input": ""}, "input/0"),
    ):
        error = sidecar.error("embed", params)
        assert error["code"] == -32602 and error["data"] == {"field": field}, error
    assert sidecar.error("prompt", {"prompt": ""})["data"] == {"field": "prompt"}
    chunks, response = sidecar.stream({"prompt": ""})
    assert response["error"]["code"] == -32602 and [c["finishReason"] for c in chunks] == ["error"]
    assert len(sidecar.request("embed", {"input": ["a"]})["embeddings"]) == 1


def _anonymous_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("RssAnon:")).split()[1])


def test_the_embedding_context_maps_the_weights_even_when_the_model_was_read_in(
    sidecar: RawSidecar, default_model: str
) -> None:
    sidecar.request("loadModel", {"modelPath": default_model, "useMmap": False, "contextSize": 512})
    before = _anonymous_kib(sidecar.process.pid)
    sidecar.request("embed", {"input": "hello"})
    grown_mib = (_anonymous_kib(sidecar.process.pid) - before) / 1024
    # Its KV cache and buffers take tens of MiB; a private copy of SmolLM2's 94 MiB of weights would show.
    assert grown_mib < 80, f"the embedding context took {grown_mib:.0f} MiB of private memory"
