"""Server: wires transport, rpc, methods and service, and runs the stop sequence.

Reads frames from the event loop (or a thread where the loop cannot watch
stdin), dispatches them on the loop, and stops on ``shutdown``, stdin EOF,
SIGTERM, SIGINT, a closed stdout, or the parent's death, the same way whatever
the trigger (PROTOCOL.md §2): (1) stop accepting, (2) cancel everything in
flight, (3) let every request answer (a stream with its final chunk), cutting
short what cannot end in time, (4) every line is written as it is sent, (5)
free the models, and ``serve`` returns the exit status, 0, well within 2 s.
The lifecycle itself (which requests pass) is the rpc layer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from typing import BinaryIO

from .engine.api import Engine
from .methods import build_method_table
from .rpc import Dispatcher, RequestId
from .service import ModelLimits, ModelService
from .settings import Settings
from .transport import READ_CHUNK, ByteSource, ChannelClosed, LineFramer, LineWriter, read_frames

__all__ = ["Server"]

log = logging.getLogger(__name__)

# The stop's budget, 2 s in all (PROTOCOL.md §2). Cancelled work answers within 0.25 s in
# every phase that can be interrupted; what is still running after the grace is inside
# native code that cannot be (a grammar's set-up, a chat template) and is cut short.
_GRACE_SECONDS = 0.8
_CUT_SHORT_SECONDS = 0.2  # for the cut-short handlers to write their answers
_CLOSE_SECONDS = 0.5  # freeing the models; a worker stuck in native code is left to the exit
_PARENT_POLL_SECONDS = 0.5


class Server:
    """One sidecar session over a pair of byte streams."""

    def __init__(
        self,
        source: ByteSource,
        sink: BinaryIO,
        *,
        settings: Settings,
        engine_factory: Callable[[], Engine],
        parent_pid: int | None = None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_stop`` is called once, on the event loop, when the stop sequence begins."""
        self._on_stop = on_stop
        self._parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self._made_non_blocking: int | None = None  # stdin's descriptor, if reading it made it so
        self._source = source
        self._sink = sink
        self._writer = LineWriter(sink)
        self._max_line_bytes = settings.max_line_bytes
        self._service = ModelService(
            engine_factory, ModelLimits(max_models=settings.max_models, max_bytes=settings.max_model_bytes)
        )
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher = Dispatcher(
            build_method_table(
                self._service,
                cancel_request=self._cancel_request,
                request_shutdown=self._request_stop,
                settings=settings,
            ),
            self._send,
        )

    async def serve(self) -> int:
        """Serve until told to stop; return the process exit status."""
        self._loop = asyncio.get_running_loop()
        self._install_signal_handlers()
        pipe = _pipe_descriptor(self._source, self._sink)
        if pipe is None or not self._read_on_loop(pipe):
            threading.Thread(target=self._read_input, name="stdin-reader", daemon=True).start()
        watcher = asyncio.create_task(self._watch_parent(self._parent_pid))
        await self._stopping.wait()
        watcher.cancel()
        await self._wind_down()
        if self._made_non_blocking is not None:
            # An inherited stdin shares its blocking flag with the host: leave it as it was.
            with contextlib.suppress(OSError):
                os.set_blocking(self._made_non_blocking, True)
        return 0

    def _cancel_request(self, request_id: RequestId) -> bool:
        return self._dispatcher.cancel(request_id)

    def _request_stop(self, reason: str = "shutdown requested") -> None:
        """Steps 1 and 2 of the stop, at once, whatever the trigger; ``serve`` does the rest."""
        if not self._stopping.is_set():
            log.info("stopping: %s", reason)
            self._on_stop()
            self._dispatcher.stop()
            self._stopping.set()

    def _request_stop_threadsafe(self, reason: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._request_stop, reason)

    def _read_on_loop(self, fd: int) -> bool:
        """Read a pipe or socket from the event loop: a request is handled as soon as it lands.

        A reader thread hands each line over with ``call_soon_threadsafe``, a
        wake-up of the loop that cost about 18 µs per request (measured on ping).
        False if this loop cannot watch the descriptor (Windows' proactor loop).
        """
        assert self._loop is not None
        loop = self._loop
        framer = LineFramer(self._max_line_bytes)

        def on_readable() -> None:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("reading stdin failed: %s", exc)
                data = b""
            if data:
                frames = framer.feed(data)
            else:
                loop.remove_reader(fd)
                frames = framer.finish()
            for frame in frames:
                self._dispatcher.handle_frame(frame)
            if not data:
                self._request_stop("stdin closed")

        try:
            if os.get_blocking(fd):
                os.set_blocking(fd, False)
                self._made_non_blocking = fd
            loop.add_reader(fd, on_readable)
        except (NotImplementedError, OSError):
            if self._made_non_blocking is not None:
                with contextlib.suppress(OSError):
                    os.set_blocking(fd, True)
                self._made_non_blocking = None
            return False
        return True

    def _read_input(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            for frame in read_frames(self._source, self._max_line_bytes):
                loop.call_soon_threadsafe(self._dispatcher.handle_frame, frame)
        except (OSError, ValueError) as exc:
            log.warning("reading stdin failed: %s", exc)
        self._request_stop_threadsafe("stdin closed")

    def _send(self, line: bytes) -> None:
        try:
            self._writer.write_line(line)
        except ChannelClosed:
            self._request_stop_threadsafe("stdout closed")

    async def _wind_down(self) -> None:
        """Steps 3 to 5 of the stop: every request answered, the models freed."""
        await self._dispatcher.drain(_GRACE_SECONDS)
        await self._dispatcher.cut_short(_CUT_SHORT_SECONDS)
        try:
            await asyncio.wait_for(self._service.close(), _CLOSE_SECONDS)
        except TimeoutError:
            log.warning("models did not close in %.1f s; exiting anyway", _CLOSE_SECONDS)

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows, or not the main thread
                self._loop.add_signal_handler(signum, self._request_stop, signal.Signals(signum).name)

    async def _watch_parent(self, parent: int) -> None:
        """Stop when the parent dies (re-parenting changes our parent pid)."""
        while os.getppid() == parent:
            await asyncio.sleep(_PARENT_POLL_SECONDS)
        self._request_stop("parent process exited")


def _pipe_descriptor(source: ByteSource, sink: BinaryIO) -> int | None:
    """The descriptor of ``source`` if the event loop can watch it (a pipe or socket), else None.

    Regular files and terminals cannot be polled; they are read on a thread. So
    is a socket that also carries the output: reading it non-blocking would make
    the writes non-blocking too.
    """
    try:
        fd: int = source.fileno()  # type: ignore[attr-defined]
        read_end = os.fstat(fd)
        write_end = os.fstat(sink.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    if (read_end.st_dev, read_end.st_ino) == (write_end.st_dev, write_end.st_ino):
        return None
    return fd if stat.S_ISFIFO(read_end.st_mode) or stat.S_ISSOCK(read_end.st_mode) else None
