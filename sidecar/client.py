"""A Python host for the sidecar: spawns ``python -m sidecar`` and speaks the protocol.

Blocking API with a reader thread: one method per protocol method, each
returning when its response arrives; ``prompt_stream`` returns a ``Stream``
that yields chunks as they come. ``load_model`` and ``download_model`` pass
their progress notifications to an ``on_progress`` callback, and a
``CancelToken`` given as ``cancel=`` stops a load, download, prompt or stream
from any thread. Callbacks run on the reader thread: they must return quickly
and must not wait for another call (``CancelToken.cancel`` is fine there). Every
wait is bounded by a timeout (a download's only when asked for), and if the
sidecar exits every pending call raises ``SidecarExited`` at once. The demo and
the tests use it; Python hosts can too. It shares no code with the server: it
knows the wire protocol only.
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from functools import partial
from typing import IO, Any

import orjson

from .settings import PARENT_PID_ENV

__all__ = ["CancelToken", "RemoteError", "SidecarClient", "SidecarExited", "Stream"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.2"
_DEFAULT_TIMEOUT = 60.0
_END = object()

Params = dict[str, Any]
ProgressCallback = Callable[[Params], None]
NotificationHandler = Callable[[str, Params], None]


class RemoteError(Exception):
    """An error response from the sidecar."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class SidecarExited(Exception):
    """The sidecar process ended while a call was waiting."""


class CancelToken:
    """Cancels the calls it is passed to as ``cancel=``, from any thread.

    ``cancel()`` sends the protocol's ``cancel`` (as a notification: it never
    waits) for each of those calls still running; a call started after it is
    cancelled as soon as it is sent. The calls then end as the protocol says: a
    prompt or stream with ``finishReason: "cancelled"``, a download with
    ``complete: false``, a load with ``RemoteError`` -32800 — or normally, if
    they finished first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._hooks: set[Callable[[], None]] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            hooks, self._hooks = self._hooks, set()
        for hook in hooks:
            hook()

    def _watch(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on ``cancel()``, or now if that already happened."""
        with self._lock:
            if not self._cancelled:
                self._hooks.add(hook)
                return
        hook()

    def _forget(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks.discard(hook)


class Stream:
    """The chunks of one ``promptStream`` request, then its result."""

    request_id: int
    _future: Future[Any]

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _started(self, request_id: int, future: Future[Any]) -> None:
        self.request_id = request_id
        self._future = future
        future.add_done_callback(self._end)  # the response comes after the final chunk

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

    def _end(self, _future: object) -> None:
        self._chunks.put(_END)


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
        self._listeners: dict[int, NotificationHandler] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._exit_error: SidecarExited | None = None
        self.process = subprocess.Popen(
            list(command or [sys.executable, "-m", "sidecar"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**(env if env is not None else os.environ), PARENT_PID_ENV: str(os.getpid())},
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
                self.shutdown(timeout=timeout)
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

    # -- methods: one per protocol method (camelCase on the wire, snake_case here) --

    def load_model(
        self,
        model_path: str,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Load a GGUF file (or ``"default"``); ``on_progress`` gets each ``loadProgress``'s params.

        A cancelled load raises ``RemoteError`` -32800 unless it finished first.
        """
        return self._request_object(
            "loadModel",
            {"modelPath": model_path, **options},
            timeout=timeout,
            cancel=cancel,
            on_notification=_only("loadProgress", on_progress),
        )

    def unload_model(self, model_id: str | None = None) -> dict[str, Any]:
        return self._request_object("unloadModel", {} if model_id is None else {"modelId": model_id})

    def list_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self.request("listModels")["models"]
        return models

    def prompt(
        self, prompt: str | None = None, *, cancel: CancelToken | None = None, **options: Any
    ) -> dict[str, Any]:
        return self._request_object("prompt", _generation_params(prompt, options), cancel=cancel)

    def prompt_stream(
        self, prompt: str | None = None, *, cancel: CancelToken | None = None, **options: Any
    ) -> Stream:
        stream = Stream(self._timeout)
        stream._started(
            *self._send(
                "promptStream",
                _generation_params(prompt, options),
                cancel=cancel,
                on_notification=_only("streamChunk", stream._put),
            )
        )
        return stream

    def create_session(self, **options: Any) -> dict[str, Any]:
        """A chat session; prompt it with ``prompt(sessionId=..., text=...)`` (or ``prompt_stream``)."""
        return self._request_object("createSession", options)

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self._request_object("getSession", {"sessionId": session_id})

    def reset_session(self, session_id: str) -> dict[str, Any]:
        return self._request_object("resetSession", {"sessionId": session_id})

    def set_session_history(self, session_id: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        return self._request_object("setSessionHistory", {"sessionId": session_id, "messages": messages})

    def close_session(self, session_id: str) -> bool:
        closed: bool = self.request("closeSession", {"sessionId": session_id})["closed"]
        return closed

    def tokenize(self, text: str, **options: Any) -> list[int]:
        tokens: list[int] = self.request("tokenize", {"text": text, **options})["tokens"]
        return tokens

    def detokenize(self, tokens: Sequence[int], **options: Any) -> str:
        text: str = self.request("detokenize", {"tokens": list(tokens), **options})["text"]
        return text

    def count_tokens(self, prompt: str | None = None, **options: Any) -> dict[str, Any]:
        """``promptTokens`` as ``prompt(prompt or messages=...)`` would count them, and ``contextSize``."""
        return self._request_object("countTokens", _generation_params(prompt, options))

    def embed(self, input: str | list[str], **options: Any) -> dict[str, Any]:
        return self._request_object("embed", {"input": input, **options})

    def inspect_model(self, model_path: str) -> dict[str, Any]:
        return self._request_object("inspectModel", {"modelPath": model_path})

    def download_model(
        self,
        url: str,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Download into ``--models-dir``; ``on_progress`` gets each ``downloadProgress``'s params.

        A cancelled download returns ``complete: false``; the same call later
        resumes it. No time limit by default (not even the client's): a model
        of several GB takes what it takes. With ``timeout`` (seconds, for the
        whole transfer), a download still running then is cancelled, and once
        the sidecar has stopped it (so that a retry is not "busy"),
        ``TimeoutError`` is raised; its ``.part`` file stays for a later call.
        """
        request_id, future = self._send(
            "downloadModel",
            {"url": url, **options},
            cancel=cancel,
            on_notification=_only("downloadProgress", on_progress),
        )
        try:
            result: dict[str, Any] = future.result(timeout=timeout)
        except TimeoutError:
            self._send_cancel(request_id)
            with contextlib.suppress(TimeoutError, RemoteError, SidecarExited):
                future.result(timeout=self._timeout)  # the sidecar answers a cancel within about 0.25 s
            raise
        return result

    def cancel(self, request_id: int) -> bool:
        cancelled: bool = self.request("cancel", {"requestId": request_id})["cancelled"]
        return cancelled

    def ping(self) -> dict[str, Any]:
        return self._request_object("ping")

    def shutdown(self, timeout: float | None = None) -> None:
        """Ask the sidecar to stop; it exits once what was in flight is answered (see ``close``)."""
        self.request("shutdown", timeout=timeout)

    # -- plumbing ----------------------------------------------------------

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        on_notification: NotificationHandler | None = None,
    ) -> Any:
        """Send a request and wait for its result; raise ``RemoteError`` for an error response.

        Args:
            timeout: seconds to wait for the response; the client's timeout by default.
            cancel: cancels the request when cancelled (see ``CancelToken``).
            on_notification: called as ``(method, params)`` with each notification whose
                ``requestId`` is this request's, on the reader thread, before the response.
        """
        _, future = self._send(method, params, cancel=cancel, on_notification=on_notification)
        return future.result(timeout=timeout or self._timeout)

    def _request_object(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request(method, params, **kw)
        return result

    def _send(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        cancel: CancelToken | None = None,
        on_notification: NotificationHandler | None = None,
    ) -> tuple[int, Future[Any]]:
        """Write a request; return its id and the future its response settles."""
        request_id = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            self._raise_if_exited()
            self._pending[request_id] = future
            if on_notification is not None:  # before the write: the first notification may come at once
                self._listeners[request_id] = on_notification
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._write(message)
        if cancel is not None:
            # Watched only once sent: a cancel that overtook its request would find nothing to cancel.
            hook = partial(self._send_cancel, request_id)
            cancel._watch(hook)
            future.add_done_callback(lambda _: cancel._forget(hook))
        return request_id, future

    def _send_cancel(self, request_id: int) -> None:
        with contextlib.suppress(SidecarExited):
            self.notify("cancel", {"requestId": request_id})

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
        if "method" in message:
            self._route_notification(message["method"], message.get("params"))
            return
        request_id = message.get("id")
        if not isinstance(request_id, int):
            return  # id null: an error about a line the client did not send whole
        with self._lock:
            future = self._pending.pop(request_id, None)
            self._listeners.pop(request_id, None)
        if future is None:
            return
        if "error" in message:
            error = message["error"]
            future.set_exception(RemoteError(error["code"], error["message"], error.get("data")))
        else:
            future.set_result(message.get("result"))

    def _route_notification(self, method: str, params: object) -> None:
        """Hand a notification about a pending request to that request's handler."""
        if not isinstance(params, dict) or not isinstance(params.get("requestId"), int):
            return  # about no request of this client (its ids are integers)
        with self._lock:
            handler = self._listeners.get(params["requestId"])
        if handler is None:
            return
        try:
            handler(method, params)
        except Exception:  # a host's callback must not stop the reader: every call would hang
            log.exception("a %s callback raised; the client goes on", method)

    def _fail_all(self, error: SidecarExited) -> None:
        with self._lock:
            self._exit_error = error
            pending, self._pending = self._pending, {}
            self._listeners = {}
        for future in pending.values():  # a stream's future ends its chunks too
            if not future.done():
                future.set_exception(error)

    def _raise_if_exited(self) -> None:
        if self._exit_error is not None:
            raise self._exit_error


def _generation_params(prompt: str | None, options: dict[str, Any]) -> dict[str, Any]:
    return options if prompt is None else {"prompt": prompt, **options}


def _only(method: str, callback: ProgressCallback | None) -> NotificationHandler | None:
    """A handler passing ``method``'s notifications to ``callback`` (and ignoring others, as hosts must)."""
    if callback is None:
        return None

    def handler(name: str, params: Params) -> None:
        if name == method:
            callback(params)

    return handler
