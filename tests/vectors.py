"""Replays ``protocol/vectors/*.jsonl`` against a live sidecar (format: protocol/vectors/README.md)."""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .harness import ROOT, SIDECAR_COMMAND, RawSidecar

VECTOR_DIR = ROOT / "protocol" / "vectors"
_KINDS = {
    "$string": lambda v: isinstance(v, str),
    "$number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "$integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "$boolean": lambda v: isinstance(v, bool),
    "$object": lambda v: isinstance(v, dict),
    "$array": lambda v: isinstance(v, list),
    "$any": lambda _v: True,
}


def matches(pattern: Any, value: Any) -> bool:
    """True if ``value`` matches ``pattern`` under the vector rules."""
    if isinstance(pattern, str) and pattern in _KINDS:
        return bool(_KINDS[pattern](value))
    if isinstance(pattern, dict):
        return (
            isinstance(value, dict)
            and pattern.keys() == value.keys()
            and all(matches(pattern[key], value[key]) for key in pattern)
        )
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(pattern) == len(value)
            and all(matches(p, v) for p, v in zip(pattern, value, strict=True))
        )
    if isinstance(pattern, bool) or isinstance(value, bool):
        return pattern is value
    return bool(pattern == value)


def substitute(value: Any, placeholders: dict[str, str]) -> Any:
    if isinstance(value, str):
        return placeholders.get(value, value)
    if isinstance(value, dict):
        return {key: substitute(item, placeholders) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, placeholders) for item in value]
    return value


class VectorRun:
    """One vector file against one fresh sidecar, with the stream invariants checked throughout."""

    def __init__(
        self, path: Path, placeholders: dict[str, str], command: Sequence[str] = SIDECAR_COMMAND
    ) -> None:
        self.steps = [
            substitute(orjson.loads(line), placeholders) for line in path.read_bytes().splitlines() if line
        ]
        args = self.steps.pop(0)["sidecarArgs"] if "sidecarArgs" in self.steps[0] else []
        self.sidecar = RawSidecar(*args, command=command)
        self.streams: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.stream_ids: set[Any] = set()
        self.progress: dict[Any, list[float]] = defaultdict(list)  # loadProgress values per loadModel
        self.load_ids: set[Any] = set()
        self.pending: list[Any] = []

    def run(self) -> None:
        try:
            for number, step in enumerate(self.steps, start=1):
                try:
                    self._step(step)
                except AssertionError as exc:
                    raise AssertionError(
                        f"step {number} {orjson.dumps(step).decode()[:300]}: {exc}"
                    ) from None
            self.sidecar.close_stdin()
            assert self.sidecar.wait_exit(5) == 0
            self._drain()
            assert not self.pending, f"unmatched messages: {self.pending}"
        finally:
            self.sidecar.stop()
        assert not self.sidecar.bad_lines, self.sidecar.bad_lines

    def _step(self, step: dict[str, Any]) -> None:
        if "send" in step:
            message = step["send"]
            if isinstance(message, dict) and message.get("method") == "promptStream" and "id" in message:
                self.stream_ids.add(message["id"])
            if isinstance(message, dict) and message.get("method") == "loadModel" and "id" in message:
                self.load_ids.add(message["id"])
            self.sidecar.send(message)
        elif "sendRaw" in step:
            self.sidecar.send_bytes(step["sendRaw"].encode() + b"\n")
        elif "sendBase64" in step:
            self.sidecar.send_bytes(base64.b64decode(step["sendBase64"]) + b"\n")
        elif "expect" in step:
            received = self._next()
            assert matches(step["expect"], received), f"got {received}"
        elif "expectAnyOrder" in step:
            remaining = list(step["expectAnyOrder"])
            for _ in range(len(remaining)):
                received = self._next()
                found = next((p for p in remaining if matches(p, received)), None)
                assert found is not None, f"got {received}, expected one of {remaining}"
                remaining.remove(found)
        elif "expectChunks" in step:
            expected = step["expectChunks"]
            chunks = self.streams[expected["requestId"]]
            assert chunks and chunks[-1]["isFinal"], f"stream not complete: {chunks}"
            assert matches(expected["final"], chunks[-1]), f"final chunk {chunks[-1]}"
        else:
            raise AssertionError(f"unknown step {step}")

    def _next(self) -> Any:
        """The next message that is not a chunk or progress, checking their invariants on the way."""
        if self.pending:
            return self.pending.pop(0)
        while True:
            message = self.sidecar.next_message()
            if self._absorb(message):
                return message

    def _drain(self) -> None:
        while not self.sidecar.messages.empty():
            message = self.sidecar.messages.get_nowait()
            if self._absorb(message):
                self.pending.append(message)

    def _absorb(self, message: Any) -> bool:
        """Record a chunk or a load's progress (False), or check a response against them (True)."""
        if isinstance(message, dict) and message.get("method") == "loadProgress":
            params = message["params"]
            values = self.progress[params["requestId"]]
            assert not values or params["progress"] > values[-1], f"progress went back: {params}"
            values.append(params["progress"])
            return False
        if isinstance(message, dict) and message.get("method") == "streamChunk":
            params = message["params"]
            chunks = self.streams[params["requestId"]]
            assert not (chunks and chunks[-1]["isFinal"]), f"chunk after the final one: {params}"
            assert params["index"] == len(chunks), f"index gap: {params}"
            chunks.append(params)
            return False
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, dict) and item.get("id") in self.stream_ids and "error" not in item:
                chunks = self.streams[item["id"]]
                assert chunks and chunks[-1]["isFinal"], f"response before the final chunk: {item}"
            if isinstance(item, dict) and item.get("id") in self.load_ids:
                self.load_ids.discard(item["id"])
                values = self.progress.pop(item["id"], [])
                if "result" in item:
                    assert values and values[-1] == 1, f"loadModel answered before loadProgress 1: {values}"
        return True
