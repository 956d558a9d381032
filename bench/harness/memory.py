"""Resident memory of the processes that hold a model, read with psutil and /proc."""

from __future__ import annotations

from pathlib import Path

import psutil

__all__ = ["peak_rss_mb", "rss_mb"]

_MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    """Resident set size now, in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / _MIB


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (Linux VmHWM), in MiB; elsewhere its RSS now."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return rss_mb(pid)
