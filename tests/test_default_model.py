"""The embedded SmolLM2 model: the sidecar answers exactly as llama-cpp-python in-process does."""

from __future__ import annotations

import subprocess
from types import ModuleType
from typing import Any

import pytest

from sidecar.client import SidecarClient

PROMPT = "The three primary colors are"
PARAMS: dict[str, Any] = {"maxTokens": 48, "temperature": 0, "seed": 3}
THREADS = 1  # the same on both sides; one thread does not collapse when the machine is busy


@pytest.fixture(scope="module")
def client(default_model: str) -> Any:
    with SidecarClient(stderr=subprocess.DEVNULL) as client:
        client.initialize()
        client.load_model("default", contextSize=2048, threads=THREADS)
        yield client


def test_greedy_reply_equals_in_process_llama_cpp_python(
    client: SidecarClient, default_model: str, llama_cpp_in_process: ModuleType
) -> None:
    threads = THREADS
    llm = llama_cpp_in_process.Llama(
        # verbose=True: with False the library leaks the /dev/null files it opens to silence loads.
        default_model,
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,  # what llama.cpp's default, which the sidecar keeps, chooses on the CPU
        verbose=True,
    )
    try:
        expected = llm.create_completion(PROMPT, max_tokens=PARAMS["maxTokens"], temperature=0, seed=3)
    finally:
        llm.close()
    result = client.prompt(PROMPT, **PARAMS)
    assert result["text"] == expected["choices"][0]["text"]
    assert result["usage"] == {
        "promptTokens": expected["usage"]["prompt_tokens"],
        "completionTokens": expected["usage"]["completion_tokens"],
    }
    assert len(result["text"]) > 40


def test_streamed_chunks_join_to_the_prompt_result(client: SidecarClient) -> None:
    messages = [{"role": "user", "content": "Name two fruits."}]
    whole = client.prompt(messages=messages, **PARAMS)
    stream = client.prompt_stream(messages=messages, **PARAMS)
    chunks = list(stream)
    assert chunks[-1]["isFinal"] and sum(chunk["isFinal"] for chunk in chunks) == 1
    assert "".join(chunk["content"] for chunk in chunks) == whole["text"] == stream.result()["text"]
    assert whole["text"].strip()


def test_chat_reply_ends_at_the_end_of_turn(client: SidecarClient) -> None:
    result = client.prompt(messages=[{"role": "user", "content": "Say OK."}], maxTokens=200, temperature=0)
    assert result["finishReason"] == "stop"
    assert "<|im_end|>" not in result["text"]
