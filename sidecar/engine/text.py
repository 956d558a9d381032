"""Turning token bytes into text a host can show: whole characters, no stop strings.

Pure string handling, no llama.cpp: token pieces go in as bytes, complete
UTF-8 text comes out. A character split across tokens is held until it is
whole; invalid bytes are dropped (never replaced by U+FFFD); text that might
be the start of a stop string is held until it is known not to be one.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["TextAssembler"]


class TextAssembler:
    """Feeds token bytes in, hands complete and stop-free text out."""

    __slots__ = ("_decoder", "_held", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit.

        After a stop string is seen, ``stopped`` is true and the text before
        the stop string is the last thing returned.
        """
        text = self._decoder.decode(piece)
        if not self._stops:
            return text
        buffer = self._held + text
        cut = _first_stop(buffer, self._stops)
        if cut is not None:
            self._held = ""
            self.stopped = True
            return buffer[:cut]
        keep = _longest_partial_stop(buffer, self._stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def finish(self) -> str:
        """Text still held at the end (a partial stop string that never completed)."""
        tail = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return "" if self.stopped else tail


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [position for stop in stops if (position := text.find(stop)) != -1]
    return min(positions) if positions else None


def _longest_partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
