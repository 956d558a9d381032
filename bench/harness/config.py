"""What a run measures and with what: settings (full or quick), paths, and the five systems."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BASELINE",
    "BENCH",
    "NATIVE_PYTHON",
    "REPO",
    "SYSTEMS",
    "TS_CLIENT",
    "Settings",
    "System",
    "driver_command",
]

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
TS_CLIENT = REPO / "electron-example" / "client" / "dist" / "esm" / "index.js"
# The same llama-cpp-python source built with -march=native (bench/.native-venv, which
# make bench installs): the ceiling the portable build is measured against.
NATIVE_PYTHON = BENCH / ".native-venv" / "bin" / "python"


@dataclass(frozen=True, slots=True)
class System:
    key: str
    label: str
    is_sidecar: bool


SYSTEMS = (
    System("llama-cpp-python", "llama-cpp-python in-process", False),
    System("llama-cpp-python-native", "llama-cpp-python in-process, native build", False),
    System("sidecar-py", "sidecar · Python client", True),
    System("sidecar-ts", "sidecar · TS client", True),
    System("node-llama-cpp", "node-llama-cpp 3.21.1 in-process", False),
)
BASELINE = SYSTEMS[0].key


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything that shapes a run; every system gets the same values."""

    model_path: str
    out: Path
    quick: bool
    threads: int
    context_size: int
    batch_size: int
    max_tokens: int
    rounds: int
    warmup_rounds: int
    pings: int
    chunk_tokens: int
    chunk_repeats: int
    spawns: int
    streams: tuple[int, ...]
    long_prompt_tokens: int
    attempts: int
    session_turns: int  # turns of each chat-session conversation (harness/sessions.py)
    session_rounds: int
    session_max_tokens: int

    @property
    def tmp(self) -> Path:
        """Logs and generated models: bench/results/tmp/ is git-ignored."""
        return self.out / "tmp"

    @classmethod
    def for_mode(
        cls, *, quick: bool, model_path: str, out: Path, threads: int, context_size: int
    ) -> Settings:
        """The full run, or ``quick``: one short round of everything, to smoke-test the harness."""
        return cls(
            model_path=model_path,
            out=out,
            quick=quick,
            threads=threads,
            context_size=context_size,
            batch_size=512,
            max_tokens=16 if quick else 128,
            rounds=1 if quick else 4,
            warmup_rounds=0 if quick else 1,
            pings=200 if quick else 2000,
            chunk_tokens=2000,
            chunk_repeats=1 if quick else 5,
            spawns=1 if quick else 5,
            streams=(1, 2) if quick else (1, 2, 4),
            long_prompt_tokens=256 if quick else 1500,
            attempts=1 if quick else 3,
            session_turns=3 if quick else 10,
            session_rounds=1 if quick else 3,
            session_max_tokens=16 if quick else 48,
        )


def driver_command(key: str) -> list[str]:
    """How to start the driver process of one system (run with cwd=bench/, PYTHONPATH=bench/)."""
    python = [sys.executable, "-m"]
    commands = {
        "llama-cpp-python": [*python, "harness.drivers.inprocess"],
        "llama-cpp-python-native": [str(NATIVE_PYTHON), "-m", "harness.drivers.inprocess"],
        "sidecar-py": [*python, "harness.drivers.pyclient"],
        "sidecar-ts": [_node(), str(BENCH / "node" / "ts-client-driver.mjs")],
        "node-llama-cpp": [_node(), str(BENCH / "node" / "node-llama-cpp-driver.mjs")],
    }
    return commands[key]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node (>= 20) is not on PATH; the TS client and node-llama-cpp need it.")
    return node
