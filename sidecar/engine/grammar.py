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

__all__ = [
    "MAX_GRAMMAR_NESTING",
    "MAX_RULE_CHAIN",
    "grammar_nesting",
    "outside_refs",
    "parse_error_reason",
    "rule_chain",
    "stderr_captured",
]

# Generated JSON grammars nest a handful of groups; 128 frames fit any thread's stack.
MAX_GRAMMAR_NESTING = 128
# llama.cpp also recurses along chains of rule references (checking for left recursion):
# 70,000 chained rules overflowed an 8 MiB stack; macOS threads get 512 KiB.
MAX_RULE_CHAIN = 1000

# One capture at a time: fd 2 is the process's, and two interleaved dup2 pairs would
# leave it pointing at a finished capture's pipe (a hang, and the log gone).
_FD2 = threading.Lock()
_PARSE_ERROR = re.compile(r"error parsing grammar: (.*)")
_RULE = re.compile(r"^[ \t]*([A-Za-z0-9_-]+)[ \t]*::=", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def grammar_nesting(gbnf: str) -> int:
    """How deep ``(`` groups nest in ``gbnf``; brackets inside literals, classes and comments do not count."""
    deepest = depth = 0
    for char in _structure(gbnf):
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(depth - 1, 0)
    return deepest


def rule_chain(gbnf: str) -> int:
    """The longest chain of rules each referring to the next (a rule that comes back counts once)."""
    structure = _structure(gbnf)
    starts = list(_RULE.finditer(structure))
    references: dict[str, set[str]] = {}
    for this, following in zip(starts, [*starts[1:], None], strict=True):
        body = structure[this.end() : following.start() if following else len(structure)]
        references.setdefault(this[1], set()).update(_NAME.findall(body))
    return _longest_path(references)


def _longest_path(references: dict[str, set[str]]) -> int:
    """Rules on the longest reference path, found without recursion (the chain may be long)."""
    longest: dict[str, int] = {}
    for root in references:
        if root in longest:
            continue
        on_path = {root}
        stack = [(root, iter(references[root]))]
        while stack:
            rule, children = stack[-1]
            child = next((c for c in children if c in references and c not in on_path), None)
            if child is None:
                stack.pop()
                on_path.discard(rule)
                below = [longest.get(c, 0) for c in references[rule] if c in references]
                longest[rule] = 1 + max(below, default=0)
            elif child not in longest:
                on_path.add(child)
                stack.append((child, iter(references[child])))
    return max(longest.values(), default=0)


def _structure(gbnf: str) -> str:
    """``gbnf`` with literals, character classes and comments blanked out (newlines kept)."""
    kept: list[str] = []
    closing: str | None = None  # '"' inside a literal, ']' inside a character class
    in_comment = escaped = False
    for char in gbnf:
        if in_comment:
            in_comment = char != "\n"
            kept.append(char if char == "\n" else " ")
        elif escaped:
            escaped = False
            kept.append(" ")
        elif closing is not None:
            escaped = char == "\\"
            if char == closing:
                closing = None
            kept.append(" ")
        elif char == "#":
            in_comment = True
            kept.append(" ")
        elif char in '"[':
            closing = '"' if char == '"' else "]"
            kept.append(" ")
        else:
            kept.append(char)
    return "".join(kept)


def outside_refs(schema: object) -> list[str]:
    """Every ``$ref`` in a JSON Schema that points outside it (anything but ``#…``).

    llama-cpp-python's converter refuses to fetch those with an ``assert``, which
    ``python -O`` removes; checked here, a request can never make the sidecar fetch.
    Walked without recursion: a schema may nest deeper than Python's stack allows.
    """
    found: list[str] = []
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                found.append(ref)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


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
    with _FD2:
        yield from _captured_fd2(withhold)


def _captured_fd2(withhold: bytes) -> Iterator[list[bytes]]:
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
