"""RPC: JSON-RPC 2.0 dispatch, request ids, cancellation, and the error boundary.

This layer turns frames into method calls and results into response lines.
It owns the in-flight table (request id -> cancel token), the lifecycle
(new -> initializing -> ready -> stopping, and the one gate every request
passes on arrival), batches, and the single place where an exception becomes
a wire error. Method lookup and the response
envelope are jsonrpcserver's (its per-request dispatch; batches are handled
here). It knows method names and a validator per method, not what any method
means, and nothing of models or llama.cpp.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import orjson
from jsonrpcserver import Error, Result, Success
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.response import to_serializable

from .errors import (
    DuplicateRequestId,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MessageTooLarge,
    NotInitialized,
    ParseError,
    RequestCancelled,
    ShuttingDown,
    SidecarError,
)
from .transport import LineTooLong

__all__ = [
    "MAX_BATCH",
    "MAX_RESPONSE_BYTES",
    "CancelToken",
    "Dispatcher",
    "Handler",
    "Lifecycle",
    "MethodEntry",
    "Phase",
    "RequestContext",
    "RequestId",
]

log = logging.getLogger(__name__)
# What a host learns of an unexpected failure: the details (a traceback) go to the log.
_SEE_THE_LOG = "Internal error; see the sidecar's stderr log."
# The longest response line written. Hosts' line buffers are finite (the TypeScript
# client's takes 64 MiB): a longer line would be dropped there and its request left
# unanswered, so the sidecar answers -32010 in its place.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Members a batch may have; a larger batch is one -32600 (JSON-RPC sets no limit).
MAX_BATCH = 1000
# The answer to a request the stop sequence could not wait for (cut_short).
_STOPPED = RequestCancelled("The sidecar stopped before this request could finish.")

RequestId: TypeAlias = str | int | float | None
Params: TypeAlias = dict[str, Any]
Notify: TypeAlias = Callable[[str, Params], None]
Send: TypeAlias = Callable[[bytes], None]
_T = TypeVar("_T")


class CancelToken:
    """A flag set once by ``cancel``; read from any thread, including native callbacks.

    A plain attribute: the GIL makes its write visible to every thread, and it
    costs a request nothing (a ``threading.Event`` took about 2 µs to make).
    """

    __slots__ = ("_callbacks", "_cancelled")

    def __init__(self) -> None:
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] | None = None

    def cancel(self) -> None:
        """Set the flag, then run the callbacks (on the event loop: that is where cancels arrive)."""
        if self._cancelled:
            return
        self._cancelled = True
        for callback in self._callbacks or ():
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the token is cancelled (now, if it is), for waits that must end at once."""
        if self._cancelled:
            callback()
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    @property
    def cancelled(self) -> bool:
        return self._cancelled


@dataclass(slots=True)
class RequestContext:
    """What a handler may know about the request it serves."""

    request_id: RequestId
    is_notification: bool
    received_ns: int
    notify: Notify
    cancel_token: CancelToken = field(default_factory=CancelToken)


Handler: TypeAlias = Callable[[RequestContext, Params], Awaitable[object]]


@dataclass(slots=True, frozen=True)
class _Call:
    """A request that passed the arrival checks, waiting to run."""

    request: dict[str, Any]
    context: RequestContext
    behind_initialize: asyncio.Future[bool] | None  # the initialize it must wait for, if any


@dataclass(slots=True, frozen=True)
class MethodEntry:
    """One row of the method table: how to check params and what to call."""

    validate_params: Callable[[Params], Params]
    handler: Handler
    accepts_notification: bool = False
    cancellable: bool = False  # whether the handler watches its cancel token
    # The handler never waits (ping, cancel, listModels): it is answered inside
    # ``handle_frame``, without a task and the loop iteration a task costs.
    immediate: bool = False


class Phase(enum.Enum):
    """Where the sidecar is in its life."""

    NEW = "new"  # nothing but the initialize method is taken
    INITIALIZING = "initializing"  # an initialize runs; requests sent behind it wait for its outcome
    READY = "ready"
    STOPPING = "stopping"  # the stop sequence began: every new request is refused


# What runs one request: its context, params sent by position (refused), params by name.
_Run: TypeAlias = Callable[[RequestContext, tuple[object, ...], Params], Awaitable[object]]


class Lifecycle:
    """The phases new -> initializing -> ready -> stopping, and the gate every request passes.

    A failed initialize goes back to new; a successful one, from any phase but
    stopping, makes the sidecar ready; nothing leaves stopping. The lifecycle
    knows one method by name, the initialize method, and which methods exist
    (a method that does not exist always passes, to be answered -32601).
    """

    def __init__(self, known_methods: Collection[str], initialize_method: str = "initialize") -> None:
        self._known = known_methods
        self._initialize_method = initialize_method
        self._phase = Phase.NEW
        self._initializing: asyncio.Future[bool] | None = None  # the outcome of the initialize that runs

    @property
    def phase(self) -> Phase:
        return self._phase

    def gate(self, method: str) -> asyncio.Future[bool] | None:
        """Admit a request for ``method`` as it arrives, or raise the error that refuses it.

        None: run it now. A future: an initialize is in progress; the request runs
        after it, if it succeeds (see ``admitted``). Raises ``ShuttingDown`` once
        stopping, ``NotInitialized`` before any initialize.
        """
        if method not in self._known:
            return None
        if self._phase is Phase.STOPPING:
            raise ShuttingDown("The sidecar is shutting down and takes no new requests.")
        if method == self._initialize_method:
            if self._phase is Phase.NEW:
                self._phase = Phase.INITIALIZING
                self._initializing = asyncio.get_running_loop().create_future()
            return None
        if self._phase is Phase.READY:
            return None
        if self._initializing is None:
            raise self._not_initialized()
        return self._initializing

    async def admitted(self, behind: asyncio.Future[bool]) -> None:
        """Wait for the initialize a request was sent behind; ``NotInitialized`` if it failed."""
        if not await asyncio.shield(behind):
            raise self._not_initialized()

    def watch(self, method: str, run: _Run) -> _Run:
        """``run``, reporting its outcome here when ``method`` is the initialize method."""
        if method != self._initialize_method:
            return run

        async def initialize(
            context: RequestContext, positional: tuple[object, ...], params: Params
        ) -> object:
            succeeded = False
            try:
                result = await run(context, positional, params)
                succeeded = True
                return result
            finally:
                self._initialize_ended(succeeded)

        return initialize

    def stop(self) -> bool:
        """Enter the stopping phase; False if the sidecar was stopping already."""
        if self._phase is Phase.STOPPING:
            return False
        self._phase = Phase.STOPPING
        return True

    def _initialize_ended(self, succeeded: bool) -> None:
        if self._phase is not Phase.STOPPING:
            self._phase = Phase.READY if succeeded or self._phase is Phase.READY else Phase.NEW
        waiting, self._initializing = self._initializing, None
        if waiting is not None and not waiting.done():
            waiting.set_result(succeeded)

    def _not_initialized(self) -> NotInitialized:
        return NotInitialized(f"The sidecar is not initialized; send {self._initialize_method!r} first.")


class Dispatcher:
    """Reads JSON-RPC messages, runs their handlers as tasks, writes responses.

    ``handle_frame`` is called on the event loop thread for each line, in
    arrival order; it does all bookkeeping synchronously (so a ``cancel`` that
    follows a request always finds it) and never waits for a handler.
    """

    def __init__(
        self,
        methods: Mapping[str, MethodEntry],
        send: Send,
        *,
        initialize_method: str = "initialize",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._methods = methods
        self._max_response_bytes = max_response_bytes
        self._send = send
        self._lifecycle = Lifecycle(methods.keys(), initialize_method)
        self._jsonrpc_methods = {name: self._boundary(name, entry) for name, entry in methods.items()}
        # Every request id in flight; the token only for methods that can be cancelled.
        self._in_flight: dict[RequestId, CancelToken | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One task per request that runs (a batch's members each have theirs): what the
        # end of the stop sequence interrupts, when they have not answered in time.
        self._calls: set[asyncio.Task[Any]] = set()
        self._cutting_short = False

    # -- public surface --------------------------------------------------

    def handle_frame(self, frame: bytes | LineTooLong) -> None:
        """Take one framed line (or an over-long line's marker) from the host."""
        if isinstance(frame, LineTooLong):
            error = MessageTooLarge(
                f"Message of {frame.size} bytes exceeds the maximum line size of {frame.limit} bytes.",
                {"size": frame.size, "maxLineBytes": frame.limit},
            )
            self._send(_error_response(error, None))
            return
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            self._send(_error_response(ParseError(f"Parse error: {exc}."), None))
            return
        if isinstance(message, list):
            self._handle_batch(message)
        else:
            self._handle_single(message)

    def cancel(self, request_id: RequestId) -> bool:
        """Cancel the in-flight request with that id; False if there is none."""
        token = self._in_flight.get(request_id)
        if token is None or token.cancelled:
            return False
        token.cancel()
        return True

    def stop(self) -> None:
        """Begin stopping: every request read from now on is refused, everything in flight is cancelled."""
        if self._lifecycle.stop():
            for token in self._in_flight.values():
                if token is not None:
                    token.cancel()

    @property
    def phase(self) -> Phase:
        return self._lifecycle.phase

    async def drain(self, timeout: float) -> None:
        """Wait until every running handler has answered, at most ``timeout`` s."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def cut_short(self, timeout: float) -> None:
        """Interrupt every request still running, and wait at most ``timeout`` s for their answers.

        The end of the stop sequence, for work that did not end when cancelled
        (it is inside native code that cannot be interrupted): each handler sees
        ``asyncio.CancelledError`` where it waits and may still answer (a stream
        ends itself so); one that does not is answered -32800 here.
        """
        self._cutting_short = True
        for task in self._calls:
            task.cancel()
        await self.drain(timeout)

    def notify(self, method: str, params: Params) -> None:
        """Send a notification to the host; callable from any thread."""
        self._send(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    # -- message handling ------------------------------------------------

    def _handle_single(self, message: object) -> None:
        prepared = self._prepare(message)
        if isinstance(prepared, bytes):
            self._send(prepared)
        elif prepared is not None and self._answers_at_once(prepared):
            _run_without_waiting(self._answer_one(prepared))
        elif prepared is not None:
            task = self._spawn(self._answer_one(prepared))
            self._calls.add(task)  # a single request's run is its whole task
            task.add_done_callback(self._calls.discard)

    def _answers_at_once(self, call: _Call) -> bool:
        entry = self._methods.get(call.request["method"])
        return entry is not None and entry.immediate and call.behind_initialize is None

    def _handle_batch(self, messages: list[object]) -> None:
        if not messages or len(messages) > MAX_BATCH:
            # A huge batch would be answered member by member: a line of gigabytes, first in memory.
            problem = "empty batch" if not messages else f"a batch of {len(messages)}; at most {MAX_BATCH}"
            self._send(_error_response(InvalidRequest(f"Invalid request: {problem}."), None))
            return
        immediate: list[bytes] = []
        calls: list[_Call] = []
        for message in messages:
            prepared = self._prepare(message)
            if isinstance(prepared, bytes):
                immediate.append(prepared)
            elif prepared is not None:
                calls.append(prepared)
        self._spawn(self._answer_batch(immediate, calls))

    def _prepare(self, message: object) -> bytes | _Call | None:
        """Check one request on arrival; return an error line, a call to run, or None."""
        try:
            request = _check_envelope(message)
        except SidecarError as error:
            return _error_response(error, _usable_id(message))
        method, is_notification, request_id = request["method"], "id" not in request, request.get("id")
        entry = self._methods.get(method)
        if is_notification and entry is not None and not entry.accepts_notification:
            log.debug("ignored %s sent as a notification", method)
            return None
        if not is_notification and request_id in self._in_flight:
            duplicate = DuplicateRequestId(f"Request id {request_id!r} is already in flight.")
            return _error_response(duplicate, request_id)
        try:
            behind = self._lifecycle.gate(method)  # last: it takes an initialize in
        except SidecarError as error:
            # A well-formed notification never gets a reply, not even "not initialized"
            # or "shutting down".
            return None if is_notification else _error_response(error, request_id)
        context = RequestContext(request_id, is_notification, time.monotonic_ns(), self.notify)
        if not is_notification:
            self._in_flight[request_id] = (
                context.cancel_token if entry is not None and entry.cancellable else None
            )
        return _Call(request, context, behind)

    async def _answer_one(self, call: _Call) -> None:
        response = await self._run(call)
        if response is not None:
            self._send(response)

    async def _answer_batch(self, immediate: list[bytes], calls: list[_Call]) -> None:
        answers = await asyncio.gather(*(self._own_task(self._run(call)) for call in calls))
        answered = [
            (call.context.request_id, line) for call, line in zip(calls, answers, strict=True) if line
        ]
        lines = immediate + self._fit_in_one_line(immediate, answered)
        if lines:
            self._send(b"[" + b",".join(lines) + b"]")

    def _fit_in_one_line(
        self, immediate: list[bytes], answered: list[tuple[RequestId, bytes]]
    ) -> list[bytes]:
        """The batch's answers, the longest replaced by -32010 until the batch's line fits the cap."""
        lines = [line for _id, line in answered]

        def batch_size() -> int:
            members = [*immediate, *lines]
            return 2 + sum(len(member) for member in members) + max(len(members) - 1, 0)

        kept = set(range(len(lines)))  # answers not yet replaced
        while kept and batch_size() > self._max_response_bytes:
            longest = max(kept, key=lambda index: len(lines[index]))
            kept.remove(longest)
            request_id, line = answered[longest]
            lines[longest] = self._too_large(len(line), request_id)
        return lines

    def _too_large(self, size: int, request_id: RequestId) -> bytes:
        too_large = MessageTooLarge(
            f"The response of {size} bytes exceeds the maximum line size of "
            f"{self._max_response_bytes} bytes; ask for less at once (e.g. fewer embed inputs).",
            {"size": size, "maxLineBytes": self._max_response_bytes},
        )
        return _error_response(too_large, request_id)

    async def _run(self, call: _Call) -> bytes | None:
        context = call.context
        request = create_request(call.request)
        try:
            if call.behind_initialize is not None:
                await self._lifecycle.admitted(call.behind_initialize)
            # jsonrpcserver's per-request step: the envelope is already checked, and its
            # batch machinery (a task per request) would only add a loop iteration.
            _request, result = await dispatch_request(self._jsonrpc_methods, context, request)
        except SidecarError as refused:  # sent behind an initialize that failed
            return None if context.is_notification else _error_response(refused, context.request_id)
        except asyncio.CancelledError:
            if not self._cutting_short:
                raise
            return None if context.is_notification else _error_response(_STOPPED, context.request_id)
        finally:
            if not context.is_notification:
                self._in_flight.pop(context.request_id, None)
        if context.is_notification:
            return None
        try:
            line = orjson.dumps(to_serializable(to_response(request, result)))
        except TypeError:  # orjson.JSONEncodeError too: a result JSON cannot carry (an int beyond 64 bits)
            log.exception("%s: the result could not be encoded", call.request["method"])
            return _error_response(InternalError(_SEE_THE_LOG), context.request_id)
        return (
            self._too_large(len(line), context.request_id) if len(line) > self._max_response_bytes else line
        )

    def _boundary(self, name: str, entry: MethodEntry) -> Callable[..., Awaitable[Result]]:
        """Wrap a handler so that every outcome is a jsonrpcserver Result."""

        async def checked(context: RequestContext, positional: tuple[object, ...], params: Params) -> object:
            if positional:
                raise InvalidParams(
                    "Invalid params: params must be an object (by-name), not an array.", {"field": ""}
                )
            return await entry.handler(context, entry.validate_params(params))

        run = self._lifecycle.watch(name, checked)

        # Positional-only: a param named "context" goes into params with the others.
        async def call(context: RequestContext, /, *positional: object, **params: Any) -> Result:
            try:
                return Success(await run(context, positional, params))
            except SidecarError as error:
                optional_data = () if error.data is None else (error.data,)
                return Error(error.code, error.message, *optional_data)
            except Exception:
                log.exception("%s failed", name)
                return Error(InternalError.code, _SEE_THE_LOG)

        # jsonrpcserver checks that params bind to the method's signature on every request;
        # this one binds anything, and a precomputed signature spares the inspection (~10 µs).
        call.__signature__ = inspect.signature(call)  # type: ignore[attr-defined]
        return call

    def _own_task(self, coroutine: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task for one request's run, known to ``cut_short``."""
        task = asyncio.ensure_future(coroutine)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _run_without_waiting(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends to its end, here and now.

    It is what a task would do, minus the task and the loop iteration before it
    starts (about 20 µs of a ping's round trip, measured). Only for methods
    marked ``immediate``; one that suspends is a bug in the method table.
    """
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a method marked immediate waited for something")


def _check_envelope(message: object) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidRequest("Invalid request: a request must be a JSON object.")
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('Invalid request: "jsonrpc" must be "2.0".')
    if not isinstance(message.get("method"), str):
        raise InvalidRequest('Invalid request: "method" must be a string.')
    if "id" in message and not _is_valid_id(message["id"]):
        raise InvalidRequest('Invalid request: "id" must be a string, a number or null.')
    if "params" in message and not isinstance(message["params"], dict | list):
        raise InvalidRequest('Invalid request: "params" must be an object or an array.')
    return message


def _is_valid_id(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _usable_id(message: object) -> RequestId:
    """The id to answer an invalid request with: its own if readable, else null."""
    if isinstance(message, dict) and _is_valid_id(message.get("id")):
        request_id: RequestId = message.get("id")
        return request_id
    return None


def _error_response(error: SidecarError, request_id: RequestId) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "error": error.to_wire(), "id": request_id})
