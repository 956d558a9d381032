"""Phase 5: the frozen sidecar (``make package``): its size on disk and spawn → ``initialize`` answered.

Measured from this process with the Python client, the same way the boundary phase
measures ``python -m sidecar``; skipped (``None``) when no package was built.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from sidecar.client import SidecarClient

from .config import REPO, Settings
from .driver import progress
from .noise import NoiseLedger

__all__ = ["PACKAGED_SIDECAR", "run_package"]

PACKAGED_SIDECAR = REPO / "dist" / "llama-sidecar" / "llama-sidecar"


def run_package(settings: Settings, noise: NoiseLedger) -> dict[str, Any] | None:
    if not PACKAGED_SIDECAR.exists():
        return None
    progress("package: spawn to ready of the frozen sidecar")
    spawns = []
    for _ in range(settings.spawns):
        spawn_ms, _cores = noise.quiet(os.getpid(), _spawn_to_ready)
        spawns.append(spawn_ms)
    folder = PACKAGED_SIDECAR.parent
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {
        "spawnToReadyMs": spawns,
        "sizeBytes": sum(path.stat().st_size for path in files),
        "modelIncluded": any(path.suffix == ".gguf" for path in files),
    }


def _spawn_to_ready() -> float:
    started = time.perf_counter()
    with SidecarClient([str(PACKAGED_SIDECAR)], stderr=subprocess.DEVNULL) as client:
        client.initialize("bench")
        return (time.perf_counter() - started) * 1000
