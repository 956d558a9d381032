"""How much CPU other processes took: the benchmark's noise, per sample and per run.

llama.cpp's threads slow down sharply when anything else runs on a 2-core
machine, and other work (a build, a test suite) may start at any moment. So
every measured call is accounted: all busy CPU time on the machine (psutil)
minus the CPU time of the driver's process tree (the driver and, for the
sidecar, its child). A sample during which others used more than
``NOISY_CORES`` is taken again (``attempts`` in all) and, if still noisy, counted;
retakes stop once they have cost ``RETAKE_BUDGET_S`` (the run must end).

Each measured call starts ``SETTLE_S`` after the previous one: llama-cpp-python's
OpenMP threads keep spinning for several milliseconds after a generation
returns, and would otherwise take a core from the next system's first token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil

__all__ = ["NOISY_CORES", "NoiseLedger", "wait_for_quiet"]

NOISY_CORES = 0.15
RETAKE_BUDGET_S = 150.0
SETTLE_S = 0.03
T = TypeVar("T")


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _tree_seconds(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _self_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass(slots=True)
class NoiseLedger:
    """Adds up, over every accounted call, the wall time and what other processes used."""

    attempts: int = 3
    wall: float = 0.0
    other: float = 0.0
    retried: int = 0
    retake_seconds: float = 0.0
    noisy: int = 0
    worst: float = 0.0

    def measure(self, pid: int, call: Callable[[], T]) -> tuple[T, float]:
        """Run ``call`` (which drives process ``pid``); return its result and others' average cores."""
        root = psutil.Process(pid)
        time.sleep(SETTLE_S)
        wall, busy, own = time.monotonic(), _busy_seconds(), _tree_seconds(root) + _self_seconds()
        result = call()
        wall = time.monotonic() - wall
        other = max(_busy_seconds() - busy - (_tree_seconds(root) + _self_seconds() - own), 0.0)
        self.wall += wall
        self.other += other
        return result, other / wall if wall > 0 else 0.0

    def quiet(
        self, pid: int, call: Callable[[], T], before_retake: Callable[[], object] = lambda: None
    ) -> tuple[T, float]:
        """Like ``measure``, but retake a sample that others disturbed (``attempts`` in all).

        Keeps the least disturbed attempt. ``before_retake`` puts the system back
        in the state the first attempt saw (e.g. the prompt cache holding the
        previous prompt).
        """
        best: tuple[T, float] | None = None
        for attempt in range(self.attempts):
            started = time.monotonic()
            if attempt:
                self.retried += 1
                before_retake()
            result, cores = self.measure(pid, call)
            if attempt:
                self.retake_seconds += time.monotonic() - started
            if best is None or cores < best[1]:
                best = (result, cores)
            if cores <= NOISY_CORES or self.retake_seconds > RETAKE_BUDGET_S:
                break
        assert best is not None
        if best[1] > NOISY_CORES:
            self.noisy += 1
            self.worst = max(self.worst, best[1])
        return best

    def report(self) -> dict[str, object]:
        return {
            "otherCoresAverage": round(self.other / self.wall, 3) if self.wall else 0.0,
            "samplesRetaken": self.retried,
            "retakeSeconds": round(self.retake_seconds, 1),
            "samplesStillNoisy": self.noisy,
            "worstOtherCores": round(self.worst, 2),
            "noisyThresholdCores": NOISY_CORES,
            "loadAverage1m": round(os.getloadavg()[0], 2),
        }


def wait_for_quiet(max_seconds: float) -> float:
    """Wait until other processes use under ``NOISY_CORES`` for a second; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        busy, own = _busy_seconds(), _self_seconds()
        time.sleep(1.0)
        if _busy_seconds() - busy - (_self_seconds() - own) <= NOISY_CORES:
            break
    return round(time.monotonic() - started, 1)
