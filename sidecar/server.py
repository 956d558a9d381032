"""Server: wires transport, rpc, methods and service, and owns the lifecycle.

Reads frames on a thread (a blocking read never stalls the event loop),
dispatches them on the loop, and stops on ``shutdown``, stdin EOF, SIGTERM,
SIGINT, a closed stdout, or the parent's death: in-flight work is cancelled,
answered, models are freed, and ``serve`` returns the exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import BinaryIO

from .engine.api import Engine
from .methods import build_method_table
from .rpc import Dispatcher, RequestId
from .service import ModelService
from .settings import Settings
from .transport import ByteSource, ChannelClosed, LineWriter, read_frames

__all__ = ["Server"]

log = logging.getLogger(__name__)

_DRAIN_SECONDS = 1.0
_CLOSE_SECONDS = 0.8
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
    ) -> None:
        self._source = source
        self._writer = LineWriter(sink)
        self._max_line_bytes = settings.max_line_bytes
        self._service = ModelService(engine_factory)
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
        threading.Thread(target=self._read_input, name="stdin-reader", daemon=True).start()
        watcher = asyncio.create_task(self._watch_parent(os.getppid()))
        await self._stopping.wait()
        watcher.cancel()
        await self._wind_down()
        return 0

    def _cancel_request(self, request_id: RequestId) -> bool:
        return self._dispatcher.cancel(request_id)

    def _request_stop(self, reason: str = "shutdown requested") -> None:
        if not self._stopping.is_set():
            log.info("stopping: %s", reason)
            self._stopping.set()

    def _request_stop_threadsafe(self, reason: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._request_stop, reason)

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
        self._dispatcher.shutting_down = True
        self._dispatcher.cancel_all()
        await self._dispatcher.drain(_DRAIN_SECONDS)
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
