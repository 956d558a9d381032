"""Loading on real llama.cpp: progress notifications, cancelling a load, the model limit."""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RawSidecar
from .test_soak import _rss_bytes


def test_a_load_reports_increasing_progress_ending_at_one(sidecar: RawSidecar, slow_model: Path) -> None:
    request_id = sidecar.send_request("loadModel", {"modelPath": str(slow_model), "useMmap": False})
    assert "result" in sidecar.response(request_id)
    progress = sidecar.load_progress[request_id]
    assert progress[0] == 0 and progress[-1] == 1
    steps = list(itertools.pairwise(progress))
    assert all(later - earlier >= 0.01 for earlier, later in steps[:-1])  # a percent or more
    assert all(later > earlier for earlier, later in steps)
    assert 10 <= len(progress) <= 102  # llama.cpp's own steps between the ends, not every tensor


def test_loading_a_loaded_model_again_reports_only_completion(loaded: RawSidecar, tiny_model: Path) -> None:
    request_id = loaded.send_request("loadModel", {"modelPath": str(tiny_model), "modelId": "tiny"})
    assert "result" in loaded.response(request_id)
    assert loaded.load_progress[request_id] == [1]


def test_a_cancelled_load_frees_what_it_read(sidecar: RawSidecar, slow_model: Path, tiny_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(tiny_model)})  # llama.cpp's libraries are in memory
    sidecar.request("unloadModel")
    # Without mmap the weights are read into the process's own memory: RSS shows them.
    before = _rss_bytes(sidecar.process.pid)
    request_id = sidecar.send_request("loadModel", {"modelPath": str(slow_model), "useMmap": False})
    first = sidecar.next_message()
    assert first["method"] == "loadProgress" and first["params"]["requestId"] == request_id
    sidecar.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": request_id}})
    response = sidecar.response(request_id)
    assert response["error"]["code"] == -32800, response
    assert sidecar.load_progress[request_id][-1:] != [1]
    assert sidecar.request("listModels") == {"models": []}
    model_bytes = slow_model.stat().st_size
    assert _rss_bytes(sidecar.process.pid) < before + model_bytes / 4
    # and the sidecar loads the same file right after
    assert sidecar.request("loadModel", {"modelPath": str(slow_model)})["modelId"] == "slow"


def test_a_load_cancelled_while_queued_never_starts(
    sidecar: RawSidecar, slow_model: Path, tiny_model: Path
) -> None:
    first = sidecar.send_request("loadModel", {"modelPath": str(slow_model), "useMmap": False})
    queued = sidecar.send_request("loadModel", {"modelPath": str(tiny_model)})
    sidecar.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": queued}})
    assert sidecar.response(queued)["error"]["code"] == -32800
    assert "result" in sidecar.response(first)
    assert [m["modelId"] for m in sidecar.request("listModels")["models"]] == ["slow"]


@pytest.fixture
def two_model_sidecar() -> Iterator[RawSidecar]:
    yield from _started("--max-models", "2")


@pytest.fixture
def byte_limited_sidecar(tiny_model: Path) -> Iterator[RawSidecar]:
    yield from _started("--max-models", "0", "--max-model-bytes", str(tiny_model.stat().st_size * 2))


def _started(*args: str) -> Iterator[RawSidecar]:
    sidecar = RawSidecar(*args)
    try:
        sidecar.initialize()
        yield sidecar
        sidecar.close_stdin()
        assert sidecar.wait_exit() == 0
    finally:
        sidecar.stop()


def test_past_the_limit_the_least_recently_used_model_is_unloaded(
    two_model_sidecar: RawSidecar, tiny_model: Path, tmp_path: Path
) -> None:
    sidecar = two_model_sidecar
    files = {name: shutil.copy(tiny_model, tmp_path / f"{name}.gguf") for name in ("a", "b", "c")}
    sidecar.request("loadModel", {"modelPath": str(files["a"])})
    sidecar.request("loadModel", {"modelPath": str(files["b"])})
    session_id = sidecar.request("createSession", {"modelId": "a"})["sessionId"]
    sidecar.request("prompt", {"sessionId": session_id, "text": "hi", "maxTokens": 2})  # a is used last
    models = {m["modelId"]: m for m in sidecar.request("listModels")["models"]}
    assert models["a"]["lastUsedAt"] >= models["b"]["lastUsedAt"]
    assert models["a"]["sessions"] == [session_id] and models["b"]["sessions"] == []
    sidecar.request("loadModel", {"modelPath": str(files["c"])})
    assert [m["modelId"] for m in sidecar.request("listModels")["models"]] == ["a", "c"]
    sidecar.request("prompt", {"modelId": "c", "prompt": "x", "maxTokens": 2})
    sidecar.request("loadModel", {"modelPath": str(files["b"])})  # now a is the oldest in use
    assert [m["modelId"] for m in sidecar.request("listModels")["models"]] == ["c", "b"]
    # a's session stays open and goes on once a is back
    assert sidecar.error("prompt", {"sessionId": session_id, "text": "again"})["code"] == -32005
    sidecar.request("loadModel", {"modelPath": str(files["a"]), "modelId": "a"})
    assert (
        sidecar.request("prompt", {"sessionId": session_id, "text": "again", "maxTokens": 2})["text"]
        is not None
    )


def test_a_byte_limit_counts_the_model_files(
    byte_limited_sidecar: RawSidecar, tiny_model: Path, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        path = shutil.copy(tiny_model, tmp_path / f"{name}.gguf")
        byte_limited_sidecar.request("loadModel", {"modelPath": str(path)})
    assert [m["modelId"] for m in byte_limited_sidecar.request("listModels")["models"]] == ["b", "c"]


@pytest.mark.parametrize(
    ("asked", "llama_cpp_says"), [(None, "auto"), (True, "enabled"), (False, "disabled")], ids=str
)
def test_flash_attention_is_llama_cpp_s_choice_unless_asked(
    tiny_model: Path, asked: bool | None, llama_cpp_says: str
) -> None:
    sidecar = RawSidecar()  # at debug level: llama.cpp's context lines are in the log
    try:
        sidecar.initialize()
        params = {"modelPath": str(tiny_model)} | ({} if asked is None else {"flashAttention": asked})
        sidecar.request("loadModel", params)
        sidecar.request("prompt", {"prompt": "hi", "maxTokens": 2})
    finally:
        sidecar.stop()
    log = b"".join(sidecar.stderr_lines).decode("utf-8", "replace")
    assert re.findall(r"llama_context: flash_attn += (\w+)", log) == [llama_cpp_says]
    # Left to llama.cpp, it turns flash attention on: the CPU backend supports it.
    assert ("Flash Attention enabled" in log) is (asked is None), log[-2000:]
