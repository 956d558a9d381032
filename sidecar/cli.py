"""Command line: ``python -m sidecar`` / ``llama-sidecar``.

Guards stdout before anything else runs, configures stderr logging, and
serves JSON-RPC on stdin/stdout until told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
import threading
from typing import NoReturn, cast

from .engine.api import Engine
from .settings import PARENT_PID_ENV, Settings
from .transport import DEFAULT_MAX_LINE_BYTES, ByteSource, protect_stdout

__all__ = ["main"]

_STOP_DEADLINE_SECONDS = 1.9  # PROTOCOL.md §2: exit 0 within 2 s of the stop's start


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the sidecar; exits the process with the server's status."""
    parent = _parent_pid()  # first: the host may die while the imports below run
    _exit_quietly_on_stop_signals()
    args = _parse(argv)
    protocol_stream = protect_stdout()  # before llama.cpp can write to fd 1
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="sidecar %(levelname)s %(name)s: %(message)s",
    )
    # llama-cpp-python prints its own chatter (model metadata, the chat template,
    # prefix-match hits) to sys.stderr: as debug log lines it follows --log-level like
    # everything else, and stays out of the info log a host shows or attaches to a report.
    sys.stderr = _LogLines(logging.getLogger("sidecar.stderr"))
    from .server import Server  # after the guard: nothing imported before it may print

    server = Server(
        cast(ByteSource, sys.stdin.buffer),  # a BufferedReader, which has read1
        protocol_stream,
        settings=Settings(
            max_line_bytes=args.max_line_bytes,
            model_dirs=tuple(args.models_dir),
            log_text=args.log_text,
            max_models=args.max_models or None,
            max_model_bytes=args.max_model_bytes or None,
        ),
        engine_factory=_llama_cpp_engine,
        parent_pid=parent,
        on_stop=_exit_by_the_deadline,
    )
    # Not asyncio.run: closing the loop joins its default executor's threads, and one still
    # inside llama.cpp (a long tokenization) held the exit up for 8 s after a shutdown.
    status = asyncio.new_event_loop().run_until_complete(server.serve())
    logging.shutdown()
    # Worker threads may still sit in native code; waiting for them could
    # outlast the host's patience, and every model is already freed or abandoned.
    os._exit(status)


class _LogLines(io.TextIOBase):
    """A text stream whose complete lines become DEBUG log records."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self._logger.debug("%s", line)
        return len(text)


def _parent_pid() -> int:
    told = os.environ.get(PARENT_PID_ENV, "")
    return int(told) if told.isdigit() else os.getppid()


def _exit_quietly_on_stop_signals() -> None:
    """Exit 0 on SIGTERM/SIGINT while starting; the server takes over these signals once it serves.

    Nothing needs cleaning up before then, and a host that quits during start-up
    should see the same clean exit as later.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: os._exit(0))


def _exit_by_the_deadline() -> None:
    """Exit 0 at the stop's 2 s deadline whatever happens (the stop's last resort).

    The stop sequence ends well before it; this holds when the event loop itself
    is stuck, e.g. writing to a host that no longer reads stdout.
    """
    timer = threading.Timer(_STOP_DEADLINE_SECONDS, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _llama_cpp_engine() -> Engine:
    # Imported on the first loadModel: start-up stays fast and idle memory small.
    from .engine.llamacpp import LlamaCppEngine

    return LlamaCppEngine()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llama-sidecar",
        description="Serve llama.cpp over newline-delimited JSON-RPC 2.0 on stdin/stdout.",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=_positive,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longest input line accepted; longer lines get error -32010 (default: 16 MiB)",
    )
    parser.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="allow models only from DIR (repeatable; symlinks are resolved); default: anywhere",
    )
    parser.add_argument(
        "--max-models",
        type=_non_negative,
        default=3,
        metavar="N",
        help="models kept loaded at once; loading one more unloads the least recently used "
        "(default: 3; 0: no limit)",
    )
    parser.add_argument(
        "--max-model-bytes",
        type=_non_negative,
        default=None,
        metavar="BYTES",
        help="most bytes of model files kept loaded at once, as --max-models (default and 0: no limit)",
    )
    parser.add_argument(
        "--log-text",
        action="store_true",
        help="log prompt and reply text (off by default: it is user data)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="stderr log level (default: info)",
    )
    return parser.parse_args(argv)
