"""Checks on GBNF text before llama.cpp's grammar parser sees it.

llama.cpp parses grammars recursively, one stack frame per nested group, so a
deeply nested grammar overflows the stack and kills the process (30,000 levels
do on Linux; far fewer on macOS, whose secondary threads get 512 KiB stacks).
Its parser also prints why it refused a grammar straight to stderr rather than
through the log callback; ``stderr_captured`` collects that text.
This module knows the grammar notation and file descriptors, not llama.cpp's API.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MAX_GRAMMAR_NESTING", "grammar_nesting", "outside_refs", "parse_error_reason", "stderr_captured"]

# Generated JSON grammars nest a handful of groups; 128 frames fit any thread's stack.
MAX_GRAMMAR_NESTING = 128

_PARSE_ERROR = re.compile(r"error parsing grammar: (.*)")


def grammar_nesting(gbnf: str) -> int:
    """How deep ``(`` groups nest in ``gbnf``; brackets inside literals, classes and comments do not count."""
    deepest = depth = 0
    closing: str | None = None  # '"' inside a literal, ']' inside a character class
    in_comment = escaped = False
    for char in gbnf:
        if in_comment:
            in_comment = char != "\n"
        elif escaped:
            escaped = False
        elif closing is not None:
            escaped = char == "\\"
            if char == closing:
                closing = None
        elif char == "#":
            in_comment = True
        elif char in '"[':
            closing = '"' if char == '"' else "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(depth - 1, 0)
    return deepest


def outside_refs(schema: object) -> list[str]:
    """Every ``$ref`` in a JSON Schema that points outside it (anything but ``#…``).

    llama-cpp-python's converter refuses to fetch those with an ``assert``, which
    ``python -O`` removes; checked here, a request can never make the sidecar fetch.
    """
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        own = [ref] if isinstance(ref, str) and not ref.startswith("#") else []
        return own + [found for value in schema.values() for found in outside_refs(value)]
    if isinstance(schema, list):
        return [found for item in schema for found in outside_refs(item)]
    return []


def parse_error_reason(stderr_text: str) -> str | None:
    """The reason in llama.cpp's "error parsing grammar: …" line, if it printed one."""
    match = _PARSE_ERROR.search(stderr_text)
    return match.group(1).strip() if match else None


@contextmanager
def stderr_captured(withhold: bytes = b"") -> Iterator[list[bytes]]:
    """Collect what anything in the process writes to fd 2 meanwhile, then pass it on.

    The list fills when the block ends. Other threads' log lines written meanwhile
    are collected too and written to stderr afterwards, so nothing is lost; only
    ``withhold`` (e.g. request text that llama.cpp echoes) is left out.
    """
    captured: list[bytes] = []
    read_end, write_end = os.pipe()
    reader = threading.Thread(target=_read_all, args=(read_end, captured), daemon=True)
    reader.start()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield captured
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        os.close(saved)
        reader.join()
        os.close(read_end)
        passed_on = b"".join(captured).replace(withhold, b"", 1) if withhold else b"".join(captured)
        if passed_on:
            os.write(2, passed_on)


def _read_all(fd: int, into: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        into.append(chunk)
