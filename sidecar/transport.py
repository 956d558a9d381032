"""Transport: newline-delimited frames over byte streams, and the stdout guard.

This layer knows bytes and lines. It splits an input stream into frames (one
message per ``\\n``-terminated line, a trailing ``\\r`` tolerated, a maximum
line size enforced) and writes whole lines to the protocol channel from any
thread. It does not know JSON, JSON-RPC, methods or models.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "READ_CHUNK",
    "ByteSource",
    "ChannelClosed",
    "Frame",
    "LineFramer",
    "LineTooLong",
    "LineWriter",
    "protect_stdout",
    "read_frames",
]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024


class ByteSource(Protocol):
    """A stream that returns whatever bytes are available (``sys.stdin.buffer``, ``BytesIO``)."""

    def read1(self, size: int = ..., /) -> bytes: ...


@dataclass(slots=True, frozen=True)
class LineTooLong:
    """A line that was longer than the limit; its bytes were skipped."""

    size: int
    limit: int


Frame = bytes | LineTooLong


class ChannelClosed(Exception):
    """The peer closed the protocol channel; nothing more can be written."""


def protect_stdout() -> BinaryIO:
    """Reserve the real stdout for the protocol and point fd 1 at stderr.

    Native code (llama.cpp, crash dumps) and stray ``print`` calls write to fd 1;
    after this call they land in stderr, and only the returned stream reaches the
    host's stdout pipe. Call it before importing ``llama_cpp``.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)  # non-inheritable by default: child processes never get it
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb", buffering=0)


def read_frames(stream: ByteSource, max_line_bytes: int) -> Iterator[Frame]:
    """Yield each line of ``stream`` without its terminator, or a ``LineTooLong``.

    Blank lines are skipped. A final line without ``\\n`` is still a frame (the
    peer may close right after writing it).
    """
    framer = LineFramer(max_line_bytes)
    while chunk := stream.read1(READ_CHUNK):
        yield from framer.feed(chunk)
    yield from framer.finish()


class LineFramer:
    """Splits bytes, fed as they arrive, into frames; for readers that get chunks (pipes, sockets).

    Never holds more than about ``max_line_bytes`` plus one chunk in memory.
    """

    __slots__ = ("_max_line_bytes", "_pending", "_skipped")

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line_bytes = max_line_bytes
        self._pending = bytearray()
        self._skipped = 0  # > 0 while discarding the rest of an over-long line

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames that ``chunk`` completes, in order."""
        frames: list[Frame] = []
        pending, limit = self._pending, self._max_line_bytes
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            size = self._skipped + len(pending) + end - start
            if self._skipped or size > limit:
                frames.append(LineTooLong(size, limit))
            elif line := _strip_cr(bytes(pending) + chunk[start:end] if pending else chunk[start:end]):
                frames.append(line)
            pending.clear()
            self._skipped = 0
            start = end + 1
        if self._skipped or len(pending) + len(chunk) - start > limit:
            self._skipped += len(pending) + len(chunk) - start
            pending.clear()
        else:
            pending += chunk[start:]
        return frames

    def finish(self) -> list[Frame]:
        """The last frame, at the end of input: a line without ``\\n``, if any."""
        if self._skipped:
            return [LineTooLong(self._skipped, self._max_line_bytes)]
        line = _strip_cr(bytes(self._pending))
        self._pending.clear()
        return [line] if line else []


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class LineWriter:
    """Writes whole lines to the protocol channel; safe to call from any thread.

    One lock makes every line atomic: worker threads stream chunks while the
    event loop writes responses, and their bytes never interleave.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once a write found the channel closed."""
        return self._closed

    def write_line(self, payload: bytes) -> None:
        """Write ``payload`` and a newline, or raise ``ChannelClosed``."""
        data = payload + b"\n"
        with self._lock:
            if self._closed:
                raise ChannelClosed
            try:
                view = memoryview(data)
                while view:  # a raw stream may accept only part of a large line
                    written = self._stream.write(view)
                    view = view[written or 0 :]
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                self._closed = True
                raise ChannelClosed from exc
