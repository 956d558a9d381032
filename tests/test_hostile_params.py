"""Parameters and messages a buggy or hostile host might send: a clear error each, nothing else changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .harness import RawSidecar

BAD_GENERATION_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"maxTokens": -1}, "maxTokens"),
    ({"maxTokens": 0}, "maxTokens"),
    ({"maxTokens": 2**40}, "maxTokens"),
    ({"maxTokens": 2**70}, "maxTokens"),  # beyond 64 bits: read as a float, refused as not an integer
    ({"topK": -1}, "topK"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 1e300}, "temperature"),
    ({"topP": 1.5}, "topP"),
    ({"seed": -1}, "seed"),
    ({"stop": ["x"] * 65}, "stop"),
    ({"stop": ["x" * 1025]}, "stop/0"),
    ({"messages": []}, "messages"),
    ({"context": 1}, "context"),  # the dispatcher's own argument name: still just an unknown param
]


@pytest.mark.parametrize(
    ("params", "field"), BAD_GENERATION_PARAMS, ids=[f for _p, f in BAD_GENERATION_PARAMS]
)
def test_absurd_generation_params_are_refused_by_name(
    loaded: RawSidecar, params: dict[str, Any], field: str
) -> None:
    request = {"prompt": "hi", **params} if "messages" not in params else params
    error = loaded.error("prompt", request)
    assert error["code"] == -32602 and error["data"]["field"] == field, error


@pytest.mark.parametrize(
    ("params", "field"),
    [({"threads": 0}, "threads"), ({"threads": 100_000}, "threads"), ({"contextSize": -5}, "contextSize")],
)
def test_absurd_load_params_are_refused_by_name(
    sidecar: RawSidecar, tiny_model: Path, params: dict[str, Any], field: str
) -> None:
    error = sidecar.error("loadModel", {"modelPath": str(tiny_model), **params})
    assert error["code"] == -32602 and error["data"]["field"] == field


def test_prompts_under_at_and_just_over_the_context_size(sidecar: RawSidecar, tiny_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 256})
    # "a" is one token in the tiny vocabulary, plus BOS: n letters make n + 1 prompt tokens.
    fits = sidecar.request("prompt", {"prompt": "a" * 254, "temperature": 0})
    assert fits["usage"]["promptTokens"] == 255
    assert fits["usage"]["completionTokens"] == 1 and fits["finishReason"] == "length"
    full = sidecar.error("prompt", {"prompt": "a" * 255})
    assert full["code"] == -32006 and full["data"] == {"promptTokens": 256, "contextSize": 256}
    over = sidecar.error("prompt", {"prompt": "a" * 256})
    assert over["code"] == -32006 and over["data"] == {"promptTokens": 257, "contextSize": 256}
    chunks, response = sidecar.stream({"prompt": "a" * 256})  # a stream ends with its final chunk first
    assert [chunk["finishReason"] for chunk in chunks] == ["error"] and response["error"] == over


@pytest.mark.parametrize(
    ("request_id", "echoed"),
    [
        (2**64 - 1, 2**64 - 1),  # the largest unsigned 64-bit integer: echoed exactly
        (-(2**63), -(2**63)),
        (2**70 + 1, float(2**70)),  # beyond 64 bits: read as a float, echoed rounded (PROTOCOL.md §1)
        (-(2**70), float(-(2**70))),
    ],
)
def test_request_ids_beyond_64_bits_are_echoed_as_rounded_floats(
    sidecar: RawSidecar, request_id: int, echoed: int | float
) -> None:
    sidecar.send_bytes(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % request_id)
    response = sidecar.next_message()
    assert response["result"] == {} and response["id"] == echoed and type(response["id"]) is type(echoed)


def test_a_request_id_too_large_for_a_double_is_a_parse_error(sidecar: RawSidecar) -> None:
    sidecar.send_bytes(b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}\n')
    response = sidecar.next_message()
    assert response["error"]["code"] == -32700 and response["id"] is None


def test_deeply_nested_json_is_a_parse_error(sidecar: RawSidecar) -> None:
    sidecar.send_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    response = sidecar.next_message()
    assert response["error"]["code"] in (-32700, -32600) and response["id"] is None
    assert sidecar.request("ping") == {}


def test_an_empty_prompt_still_generates(loaded: RawSidecar) -> None:
    result = loaded.request("prompt", {"prompt": "", "maxTokens": 3, "temperature": 0})
    assert result["usage"] == {"promptTokens": 1, "completionTokens": 3}
