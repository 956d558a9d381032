"""Every phase of a request answers ``cancel`` and the stop sequence in time (PROTOCOL.md §3, table).

Each test catches a request in one phase — load, tokenize, template render, grammar
set-up, prefill, decode, embed — on real llama.cpp, then cancels it or stops the
sidecar. Phases that can be interrupted answer a cancel within 0.25 s (the protocol's
bound; asserted with a 4x margin for a busy machine); the stop ends every request
properly (a stream with its final chunk, then its response) and exits 0 within 2 s,
also where llama.cpp cannot be interrupted (the stop cuts the request short). The
download phase has its own tests in test_download.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import RawSidecar
from .phases import exponential_grammar, slow_template_model
from .tiny_model import LETTERS_FOREVER

CANCEL_BOUND = 0.25  # PROTOCOL.md §3
MARGIN = 4  # a 2-core machine shared with other work
PROSE = "The quick brown fox jumps over the lazy dog. "


@dataclass(frozen=True)
class Caught:
    """A request caught in a phase: its id, whether it is a stream, and its chunks already taken."""

    request_id: Any
    stream: bool
    chunks_taken: int = 0


def _load(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    # Without mmap the weights are read, not mapped: the load lasts long enough to be caught.
    request_id = sidecar.send_request("loadModel", {"modelPath": str(models["slow"]), "useMmap": False})
    assert sidecar.next_message()["method"] == "loadProgress"
    return Caught(request_id, stream=False)


def _tokenize(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["tiny"])})
    # 8 MiB of prose: about 0.8 s of tokenizing on this vocabulary, in 1,000 pieces.
    request_id = sidecar.send_request("countTokens", {"prompt": PROSE * (8 * 2**20 // len(PROSE))})
    time.sleep(0.3)
    return Caught(request_id, stream=False)


def _template(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["slow template"])})
    request_id = sidecar.send_request("promptStream", {"messages": [{"role": "user", "content": "hi"}]})
    time.sleep(0.3)
    return Caught(request_id, stream=True)


def _grammar(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["tiny"])})
    # Seconds of set-up at this depth, doubling with each level; no check inside.
    request_id = sidecar.send_request("promptStream", {"prompt": "hi", "grammar": exponential_grammar(31)})
    time.sleep(0.3)
    return Caught(request_id, stream=True)


def _prefill(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["slow"]), "contextSize": 4096})
    # 2,402 tokens on this vocabulary: over a second of prompt processing (1.3 s measured).
    prompt = "hello world and the " * 150
    request_id = sidecar.send_request("promptStream", {"prompt": prompt, "maxTokens": 1, "temperature": 0})
    time.sleep(0.3)
    return Caught(request_id, stream=True)


def _decode(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["tiny"])})
    params = {"prompt": "hello", "temperature": 0, "grammar": LETTERS_FOREVER}
    request_id = sidecar.send_request("promptStream", params)
    assert sidecar.next_message()["method"] == "streamChunk"
    return Caught(request_id, stream=True, chunks_taken=1)


def _embed(sidecar: RawSidecar, models: dict[str, Path]) -> Caught:
    sidecar.request("loadModel", {"modelPath": str(models["slow"]), "contextSize": 4096})
    # 1,922 tokens, within the 2,048-token embedding context: about a second of decoding.
    request_id = sidecar.send_request("embed", {"input": "hello world and the " * 120})
    time.sleep(0.3)
    return Caught(request_id, stream=False)


PHASES: dict[str, Callable[[RawSidecar, dict[str, Path]], Caught]] = {
    "load": _load,
    "tokenize": _tokenize,
    "template render": _template,
    "grammar set-up": _grammar,
    "prefill": _prefill,
    "decode": _decode,
    "embed": _embed,
}
# llama.cpp's grammar set-up and the model's chat template cannot be interrupted (§3).
UNINTERRUPTIBLE = {"template render", "grammar set-up"}


@pytest.fixture(scope="module")
def models(tiny_model: Path, slow_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "tiny": tiny_model,
        "slow": slow_model,
        "slow template": slow_template_model(tmp_path_factory.mktemp("models")),
    }


def _ended_properly(sidecar: RawSidecar, caught: Caught, timeout: float) -> dict[str, Any]:
    """The caught request's response, after exactly one final chunk if it is a stream."""
    if not caught.stream:
        return sidecar.response(caught.request_id, timeout=timeout)
    chunks, response = sidecar.collect_stream(caught.request_id, timeout=timeout)
    first = caught.chunks_taken
    assert [chunk["index"] for chunk in chunks] == list(range(first, first + len(chunks)))
    assert [chunk["isFinal"] for chunk in chunks] == [False] * (len(chunks) - 1) + [True], chunks[-3:]
    if "result" in response:
        assert chunks[-1]["finishReason"] == response["result"]["finishReason"]
        if not first:
            assert "".join(chunk["content"] for chunk in chunks) == response["result"]["text"]
    return response


def _cancelled(response: dict[str, Any]) -> bool:
    """A cancelled request's answer: a cancelled result, or -32800 where there is no partial result."""
    if "error" in response:
        return bool(response["error"]["code"] == -32800)
    return bool(
        response["result"].get("finishReason") == "cancelled" or response["result"].get("complete") is False
    )


@pytest.mark.parametrize("phase", [phase for phase in PHASES if phase not in UNINTERRUPTIBLE])
def test_a_cancel_is_answered_within_a_quarter_second(
    sidecar: RawSidecar, models: dict[str, Path], phase: str
) -> None:
    caught = PHASES[phase](sidecar, models)
    cancelled_at = time.monotonic()
    assert sidecar.request("cancel", {"requestId": caught.request_id}) == {"cancelled": True}
    response = _ended_properly(sidecar, caught, timeout=CANCEL_BOUND * MARGIN * 4)
    took = time.monotonic() - cancelled_at
    assert _cancelled(response), response
    assert took < CANCEL_BOUND * MARGIN, f"{phase}: the cancel took {took * 1000:.0f} ms"
    assert sidecar.request("ping") == {}  # and the sidecar serves on


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_shutdown_ends_every_phase_properly_and_exits_within_two_seconds(
    sidecar: RawSidecar, models: dict[str, Path], phase: str
) -> None:
    caught = PHASES[phase](sidecar, models)
    assert sidecar.request("shutdown") is None
    stopped_at = time.monotonic()
    assert sidecar.wait_exit(5) == 0
    took = time.monotonic() - stopped_at
    assert took < 2.0, f"{phase}: the exit took {took * 1000:.0f} ms"
    assert _cancelled(_ended_properly(sidecar, caught, timeout=1))


@pytest.mark.parametrize("trigger", ["shutdown", "stdin EOF", "SIGTERM", "SIGINT"])
@pytest.mark.parametrize("phase", ["grammar set-up", "decode"])
def test_every_trigger_runs_the_same_stop(
    sidecar: RawSidecar, models: dict[str, Path], phase: str, trigger: str
) -> None:
    caught = PHASES[phase](sidecar, models)
    stopped_at = time.monotonic()
    if trigger == "shutdown":
        sidecar.send_request("shutdown")
    elif trigger == "stdin EOF":
        sidecar.close_stdin()
    else:
        sidecar.process.send_signal(getattr(signal, trigger))
    assert sidecar.wait_exit(5) == 0
    took = time.monotonic() - stopped_at
    assert took < 2.0, f"{phase}, {trigger}: the exit took {took * 1000:.0f} ms"
    response = _ended_properly(sidecar, caught, timeout=1)
    assert response["result"]["finishReason"] == "cancelled"
