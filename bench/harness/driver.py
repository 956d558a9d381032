"""The orchestrator's handle on one driver process (start, command, stop), and its progress lines."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import BENCH, REPO, driver_command

__all__ = ["Driver", "DriverError", "progress"]

_TIMEOUT_S = 300.0


class DriverError(RuntimeError):
    """A driver answered with an error, stopped answering, or died."""


class Driver:
    """One system's driver process; its stderr goes to ``<log_dir>/<log_name or key>.log``."""

    def __init__(self, key: str, log_dir: Path, log_name: str | None = None) -> None:
        self.key = key
        self.log_path = log_dir / f"{log_name or key}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                driver_command(key),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=BENCH,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)])},
            )

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; raise ``DriverError`` for a failure."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps({"op": op, **params}).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError as exc:
            raise self._failure(f"{op}: the driver is gone") from exc
        readable, _, _ = select.select([stdout], [], [], _TIMEOUT_S)
        line = stdout.readline() if readable else b""
        if not line:
            raise self._failure(f"{op}: no answer within {_TIMEOUT_S:.0f} s or the driver died")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise self._failure(reply["error"])
        return reply

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("exit")
                self._process.wait(timeout=10)
            except (DriverError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()

    def _failure(self, what: str) -> DriverError:
        return DriverError(f"{self.key}: {what} (log: {self.log_path})")


def progress(message: str) -> None:
    """One line on stderr saying what the run is doing now."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
