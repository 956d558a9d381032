"""Memory stays flat over many loads, unloads and cancelled streams (slow: about half a minute).

Deselect with ``-m "not slow"``; CI runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import RawSidecar
from .tiny_model import LETTERS_FOREVER

pytestmark = pytest.mark.slow
CYCLES = 1000
# Allocator arenas and caches settle first; growth after that is what a leak looks like.
WARM_UP = 200


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _grows_under_five_percent(sidecar: RawSidecar, cycle: Callable[[], None], warm_up: int) -> None:
    for _ in range(warm_up):
        cycle()
    before = _rss_bytes(sidecar.process.pid)
    for _ in range(CYCLES):
        cycle()
    after = _rss_bytes(sidecar.process.pid)
    assert after < before * 1.05, f"RSS grew from {before} to {after} bytes over {CYCLES} cycles"


def test_load_unload_cycles_keep_memory_flat(sidecar: RawSidecar, tiny_model: Path) -> None:
    def cycle() -> None:
        sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 256})
        assert sidecar.request("unloadModel") == {"unloaded": True}

    _grows_under_five_percent(sidecar, cycle, warm_up=WARM_UP)


def test_cancelled_streams_keep_memory_flat(loaded: RawSidecar) -> None:
    def cycle() -> None:
        # A chunk a token (the random model's own text may show nothing), without end.
        params = {"prompt": "hello", "temperature": 0, "grammar": LETTERS_FOREVER}
        request_id = loaded.send_request("promptStream", params)
        first = loaded.next_message()  # cancelled mid-generation, not while still queued
        assert first["method"] == "streamChunk" and first["params"]["requestId"] == request_id
        assert not first["params"]["isFinal"]
        loaded.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": request_id}})
        _chunks, response = loaded.collect_stream(request_id)
        # Without maxTokens the stream would run to the end of its 2048-token context.
        assert response["result"]["finishReason"] == "cancelled", response
        assert response["result"]["usage"]["completionTokens"] > 0

    _grows_under_five_percent(loaded, cycle, warm_up=WARM_UP)
