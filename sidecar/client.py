"""A Python host for the sidecar: spawns ``python -m sidecar`` and speaks the protocol.

Blocking API with a reader thread: each request returns when its response
arrives; ``prompt_stream`` returns a ``Stream`` that yields chunks as they
come. Every wait is bounded by a timeout, and if the sidecar exits every
pending call raises ``SidecarExited`` at once. The demo and the tests use it;
Python hosts can too. It shares no code with the server: it knows the wire
protocol only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import IO, Any

import orjson

__all__ = ["RemoteError", "SidecarClient", "SidecarExited", "Stream"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.1"
_DEFAULT_TIMEOUT = 60.0
_END = object()


class RemoteError(Exception):
    """An error response from the sidecar."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class SidecarExited(Exception):
    """The sidecar process ended while a call was waiting."""


class Stream:
    """The chunks of one ``promptStream`` request, then its result."""

    def __init__(self, request_id: int, future: Future[Any], timeout: float) -> None:
        self.request_id = request_id
        self._future = future
        self._timeout = timeout
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield every chunk, the final one (``isFinal: true``) last."""
        while True:
            try:
                chunk = self._chunks.get(timeout=self._timeout)
            except queue.Empty as exc:
                raise TimeoutError(f"no stream chunk for {self._timeout} s") from exc
            if chunk is _END:
                if self._future.done():
                    self._future.result()  # raises what ended the stream
                return
            yield chunk
            if chunk["isFinal"]:
                return

    def result(self) -> dict[str, Any]:
        """The promptStream response: text, finishReason, usage, timings."""
        value: dict[str, Any] = self._future.result(timeout=self._timeout)
        return value

    def _put(self, item: object) -> None:
        self._chunks.put(item)


class SidecarClient:
    """One sidecar process and the calls in flight to it."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
        stderr: IO[bytes] | int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._exit_error: SidecarExited | None = None
        self.process = subprocess.Popen(
            list(command or [sys.executable, "-m", "sidecar"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env if env is not None else os.environ.copy(),
        )
        self._reader = threading.Thread(target=self._read_loop, name="sidecar-client-reader", daemon=True)
        self._reader.start()

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def initialize(self, client_name: str = "sidecar.client") -> dict[str, Any]:
        return self._request_object(
            "initialize", {"protocolVersion": PROTOCOL_VERSION, "clientInfo": {"name": client_name}}
        )

    def close(self, timeout: float = 5.0) -> int:
        """Ask the sidecar to shut down, then make sure it is gone; return its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(RemoteError, SidecarExited, TimeoutError, OSError):
                self.request("shutdown", timeout=timeout)
        self._close_stdin()
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(timeout)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return status

    # -- methods -----------------------------------------------------------

    def load_model(self, model_path: str, **options: Any) -> dict[str, Any]:
        return self._request_object("loadModel", {"modelPath": model_path, **options})

    def unload_model(self, model_id: str | None = None) -> dict[str, Any]:
        return self._request_object("unloadModel", {} if model_id is None else {"modelId": model_id})

    def list_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self.request("listModels")["models"]
        return models

    def prompt(self, prompt: str | None = None, **options: Any) -> dict[str, Any]:
        return self._request_object("prompt", _generation_params(prompt, options))

    def prompt_stream(self, prompt: str | None = None, **options: Any) -> Stream:
        request_id = next(self._ids)
        future: Future[Any] = Future()
        stream = Stream(request_id, future, self._timeout)
        with self._lock:
            self._raise_if_exited()
            self._pending[request_id] = future
            self._streams[request_id] = stream
        self._write(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "promptStream",
                "params": _generation_params(prompt, options),
            }
        )
        return stream

    def create_session(self, **options: Any) -> dict[str, Any]:
        """A chat session; prompt it with ``prompt(sessionId=..., text=...)`` (or ``prompt_stream``)."""
        return self._request_object("createSession", options)

    def close_session(self, session_id: str) -> bool:
        closed: bool = self.request("closeSession", {"sessionId": session_id})["closed"]
        return closed

    def cancel(self, request_id: int) -> bool:
        cancelled: bool = self.request("cancel", {"requestId": request_id})["cancelled"]
        return cancelled

    def ping(self) -> dict[str, Any]:
        return self._request_object("ping")

    # -- plumbing ----------------------------------------------------------

    def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and wait for its result; raise ``RemoteError`` for an error response."""
        request_id = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            self._raise_if_exited()
            self._pending[request_id] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._write(message)
        return future.result(timeout=timeout or self._timeout)

    def _request_object(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(method, params)
        return result

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def _write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        data = orjson.dumps(message) + b"\n"
        try:
            with self._write_lock:
                self.process.stdin.write(data)
                self.process.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise SidecarExited("the sidecar is not running") from exc

    def _close_stdin(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass

    def _read_loop(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.error("sidecar wrote a line that is not JSON: %r", line[:200])
                continue
            for item in message if isinstance(message, list) else [message]:
                self._route(item)
        status = self.process.wait()
        self._fail_all(SidecarExited(f"the sidecar exited with status {status}"))

    def _route(self, message: dict[str, Any]) -> None:
        if message.get("method") == "streamChunk":
            params = message["params"]
            stream = self._streams.get(params["requestId"])
            if stream is not None:
                stream._put(params)
            return
        if "method" in message:
            return  # other notifications: none yet
        request_id = message.get("id")
        with self._lock:
            future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            stream = self._streams.pop(request_id, None) if isinstance(request_id, int) else None
        if future is None:
            return
        if "error" in message:
            error = message["error"]
            future.set_exception(RemoteError(error["code"], error["message"], error.get("data")))
        else:
            future.set_result(message.get("result"))
        if stream is not None:
            stream._put(_END)

    def _fail_all(self, error: SidecarExited) -> None:
        with self._lock:
            self._exit_error = error
            pending, self._pending = self._pending, {}
            streams, self._streams = self._streams, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        for stream in streams.values():
            stream._put(_END)

    def _raise_if_exited(self) -> None:
        if self._exit_error is not None:
            raise self._exit_error


def _generation_params(prompt: str | None, options: dict[str, Any]) -> dict[str, Any]:
    return options if prompt is None else {"prompt": prompt, **options}
