"""What one generation looked like from the caller's side: when each piece of text arrived.

Every driver (Python here, Node in ``bench/node/driver-io.mjs``) reports the same
record, all times taken in the calling process:

- ``ttftMs``: call start -> first non-empty text;
- ``e2eMs``: call start -> the call returned;
- ``decodeTps``: (completionTokens - 1) / (last text - first text);
- ``chunks`` and ``chunkSpanMs``: non-empty text pieces and first -> last piece.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Timeline"]


class Timeline:
    """Started at the call; fed each piece of text as it arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._first = 0.0
        self._last = 0.0
        self._chunks = 0
        self._parts: list[str] = []

    def text(self, piece: str) -> None:
        if not piece:
            return
        now = time.perf_counter()
        if not self._chunks:
            self._first = now
        self._last = now
        self._chunks += 1
        self._parts.append(piece)

    def result(self, completion_tokens: int, prompt_tokens: int, server: object = None) -> dict[str, Any]:
        end = time.perf_counter()
        span = self._last - self._first
        return {
            "ttftMs": (self._first - self.start) * 1000 if self._chunks else None,
            "e2eMs": (end - self.start) * 1000,
            "decodeTps": (completion_tokens - 1) / span if completion_tokens > 1 and span > 0 else None,
            "completionTokens": completion_tokens,
            "promptTokens": prompt_tokens,
            "chunks": self._chunks,
            "chunkSpanMs": span * 1000,
            "text": "".join(self._parts),
            "server": server,
        }
