"""A raw protocol peer for end-to-end tests: a real ``python -m sidecar`` over pipes.

Every line the sidecar writes is parsed and validated against the protocol's
JSON Schemas as it arrives (responses against the result schema of the
method they answer), so each end-to-end test also proves the schemas and the
code agree. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from sidecar.schema import validator_for

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0
SIDECAR_COMMAND = (sys.executable, "-m", "sidecar")
# The frozen sidecar `make package` builds (tests/test_package.py).
PACKAGED_SIDECAR = ROOT / "dist" / "llama-sidecar" / "llama-sidecar"


def validate_server_message(message: object, method_of: dict[Any, str]) -> None:
    """Raise if ``message`` breaks the schemas (envelope, result, error, notification)."""
    validator_for("message.json#/$defs/ServerMessage").validate(message)
    for item in message if isinstance(message, list) else [message]:
        assert isinstance(item, dict)
        if "method" in item:
            validator_for(f"notifications/{item['method']}.json#/$defs/params").validate(item["params"])
        elif "result" in item and item["id"] in method_of:
            method = method_of.pop(item["id"])  # answered: the id may be used again
            validator_for(f"methods/{method}.json#/$defs/result").validate(item["result"])


class RawSidecar:
    """One sidecar process, spoken to line by line."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        emulator: Sequence[str] = (),
        command: Sequence[str] = SIDECAR_COMMAND,
    ) -> None:
        """``command ARGS`` (``python -m sidecar`` unless told), run by ``emulator`` if given (qemu)."""
        self.process = subprocess.Popen(
            [*emulator, *command, "--log-level", "debug", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self._ids = itertools.count(1000)
        self.method_of: dict[Any, str] = {}
        self.messages: queue.Queue[Any] = queue.Queue()
        self._backlog: list[Any] = []
        self.load_progress: dict[Any, list[float]] = {}
        self.stderr_lines: list[bytes] = []
        self.bad_lines: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # -- sending -------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: object) -> None:
        if isinstance(message, dict) and "id" in message and isinstance(message.get("method"), str):
            # An id still in flight keeps its method: a duplicate is refused, not answered.
            self.method_of.setdefault(message["id"], message["method"])
        try:
            line = orjson.dumps(message)
        except TypeError:  # integers beyond 64 bits, which only the standard library writes
            line = json.dumps(message).encode()
        self.send_bytes(line + b"\n")

    def send_request(self, method: str, params: dict[str, Any] | None = None, request_id: Any = None) -> Any:
        request_id = next(self._ids) if request_id is None else request_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return request_id

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    # -- receiving -----------------------------------------------------------

    def next_message(self, timeout: float = WAIT) -> Any:
        """The oldest message not yet taken."""
        return self._take(lambda _message: True, timeout)

    def response(self, request_id: Any, timeout: float = WAIT) -> dict[str, Any]:
        """Wait for the response to ``request_id``; other messages stay for later calls.

        The request's ``loadProgress`` notifications (which come before its
        response) move to ``load_progress[request_id]``.
        """
        response: dict[str, Any] = self._take(lambda m: _is_response_to(m, request_id), timeout)

        def is_its_progress(message: Any) -> bool:
            return (
                isinstance(message, dict)
                and message.get("method") == "loadProgress"
                and message["params"]["requestId"] == request_id
            )

        self.load_progress[request_id] = [
            m["params"]["progress"] for m in self._backlog if is_its_progress(m)
        ]
        self._backlog = [m for m in self._backlog if not is_its_progress(m)]
        return response

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = WAIT) -> Any:
        """Send a request and return its result; fail the test on an error response."""
        response = self.response(self.send_request(method, params), timeout)
        assert "result" in response, response
        return response["result"]

    def error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request that must fail; return its error object."""
        response = self.response(self.send_request(method, params))
        assert "error" in response, response
        error: dict[str, Any] = response["error"]
        return error

    def initialize(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("initialize", {"protocolVersion": "1.0"})
        return result

    def stream(
        self, params: dict[str, Any], timeout: float = WAIT
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Run a promptStream to its end: (chunks in arrival order, response)."""
        return self.collect_stream(self.send_request("promptStream", params), timeout)

    def collect_stream(
        self, request_id: Any, timeout: float = WAIT
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout

        def belongs(message: Any) -> bool:
            is_chunk = message.get("method") == "streamChunk" and message["params"]["requestId"] == request_id
            return is_chunk or _is_response_to(message, request_id)

        while True:
            message = self._take(belongs, max(deadline - time.monotonic(), 0.01))
            if "method" not in message:
                return chunks, message
            chunks.append(message["params"])

    def notifications(self, method: str) -> list[dict[str, Any]]:
        """Every ``method`` notification received and not yet taken, in order (removed)."""
        while not self.messages.empty():
            self._backlog.append(self.messages.get_nowait())
        found = [m for m in self._backlog if isinstance(m, dict) and m.get("method") == method]
        self._backlog = [m for m in self._backlog if not (isinstance(m, dict) and m.get("method") == method)]
        return found

    def _take(self, wanted: Callable[[Any], bool], timeout: float) -> Any:
        """Remove and return the oldest message ``wanted`` accepts; keep the others in order."""
        for position, message in enumerate(self._backlog):
            if wanted(message):
                return self._backlog.pop(position)
        deadline = time.monotonic() + timeout
        while True:
            assert not self.bad_lines, f"the sidecar wrote an invalid line: {self.bad_lines[-1]!r}"
            try:
                message = self.messages.get(timeout=min(max(deadline - time.monotonic(), 0), 0.5))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                raise AssertionError(f"no awaited message from the sidecar within {timeout:.1f} s") from None
            if wanted(message):
                return message
            self._backlog.append(message)

    def wait_exit(self, timeout: float = 5.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill the process if it still runs, and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        for reader in self._readers:
            reader.join(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = orjson.loads(line)
                validate_server_message(message, self.method_of)
            except Exception as exc:  # recorded; the fixture fails the test
                self.bad_lines.append(line + f"  <- {exc}".encode())
                continue
            self.messages.put(message)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)


def _is_response_to(message: Any, request_id: Any) -> bool:
    return isinstance(message, dict) and "method" not in message and message.get("id") == request_id
