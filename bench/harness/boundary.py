"""Phase 2: the sidecar boundary on its own.

- start-up: spawn -> ``initialize`` answered, and idle memory before any model,
  through both clients (fresh sidecars, one at a time);
- ``ping`` round trips from each client, and from Node to a Python child that
  only echoes lines (the floor: pipes, wake-ups, JSON on the Node side);
- ``streamChunk`` delivery rate when generation is cheap: a tiny random model
  (never stops before ``maxTokens``) with 1 thread, one long stream, chunks
  counted at the client; the same model in-process gives the rate of the
  generation loop alone, the ceiling any client can reach through it;
- the same with generation free (``drivers/null_sidecar.py``: the real
  sidecar, whose model emits a character per token without llama.cpp): the
  rate of the boundary itself.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from .config import REPO, Settings
from .driver import Driver, progress
from .noise import NoiseLedger
from .stats import summarize

__all__ = ["TINY_CONTEXT", "run_boundary", "write_tiny_model"]

TINY_CONTEXT = 4096
_TINY_PROMPT = "hello world"
_CLIENTS = ("sidecar-ts", "sidecar-py")
_STREAMERS = ("llama-cpp-python", *_CLIENTS)
_NULL_SIDECAR = "harness.drivers.null_sidecar"
_NULL_STREAM_FACTOR = 10  # free generation is fast: longer streams for a steady rate


def write_tiny_model(directory: Path) -> Path:
    """The tests' tiny random llama (tests/tiny_model.py), with room for a 2,000-token stream."""
    spec = importlib.util.spec_from_file_location("tiny_model", REPO / "tests" / "tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory.mkdir(parents=True, exist_ok=True)
    path: Path = module.write_tiny_model(directory / "tiny.gguf", context_length=TINY_CONTEXT)
    return path


def run_boundary(settings: Settings, tiny_model: Path, noise: NoiseLedger) -> dict[str, Any]:
    progress("boundary: spawn to ready and idle memory")
    startup = _startup(settings, noise)
    with ExitStack() as stack:
        real = {key: _started(stack, key, settings, "sidecar") for key in _STREAMERS}
        free = {key: _started(stack, key, settings, _NULL_SIDECAR) for key in _CLIENTS}
        progress("boundary: ping round trips")
        pings = {key: _pings(real[key], settings, noise, "ping") for key in _CLIENTS}
        pings["echo"] = _pings(real["sidecar-ts"], settings, noise, "echoPing")
        progress("boundary: chunk delivery rate (tiny model, then free generation)")
        tiny = _chunk_streams(real, settings, tiny_model, settings.chunk_tokens, noise)
        null = _chunk_streams(free, settings, tiny_model, settings.chunk_tokens * _NULL_STREAM_FACTOR, noise)
    return {"startup": startup, "pingUs": pings, "chunkStreams": {"tinyModel": tiny, "nullEngine": null}}


def _started(stack: ExitStack, key: str, settings: Settings, module: str) -> Driver:
    driver = stack.enter_context(Driver(key, settings.tmp / "logs"))
    driver.call("start", python=sys.executable, module=module)
    return driver


def _startup(settings: Settings, noise: NoiseLedger) -> dict[str, dict[str, list[float]]]:
    probes: dict[str, dict[str, list[float]]] = {
        key: {"spawnToReadyMs": [], "idleRssMb": []} for key in _CLIENTS
    }
    with ExitStack() as stack:
        drivers = {key: stack.enter_context(Driver(key, settings.tmp / "logs")) for key in _CLIENTS}
        for _ in range(settings.spawns):
            for key, driver in drivers.items():
                probe, _cores = noise.quiet(
                    driver.pid, partial(driver.call, "spawnProbe", python=sys.executable, count=1)
                )
                for field, values in probes[key].items():
                    values.extend(probe[field])
    return probes


def _pings(driver: Driver, settings: Settings, noise: NoiseLedger, op: str) -> dict[str, Any]:
    driver.call(op, count=max(settings.pings // 10, 50), python=sys.executable)  # warm-up, discarded
    result, cores = noise.quiet(
        driver.pid, partial(driver.call, op, count=settings.pings, python=sys.executable)
    )
    return {**summarize(result["rttUs"]), "otherCores": cores}


def _chunk_streams(
    drivers: dict[str, Driver], settings: Settings, tiny_model: Path, tokens: int, noise: NoiseLedger
) -> dict[str, list[dict[str, Any]]]:
    for driver in drivers.values():
        driver.call("load", modelPath=str(tiny_model), contextSize=TINY_CONTEXT, threads=1, batchSize=512)
        driver.call("generate", prompt=_TINY_PROMPT, maxTokens=200)  # warm-up, discarded
    streams: dict[str, list[dict[str, Any]]] = {key: [] for key in drivers}
    for _ in range(settings.chunk_repeats):
        for key, driver in drivers.items():
            result, cores = noise.quiet(
                driver.pid,
                partial(driver.call, "generate", prompt=_TINY_PROMPT, maxTokens=tokens),
            )
            span_s = result["chunkSpanMs"] / 1000
            streams[key].append(
                {
                    "chunksPerSecond": (result["chunks"] - 1) / span_s if span_s > 0 else None,
                    "tokensPerSecond": result["decodeTps"],
                    "chunks": result["chunks"],
                    "completionTokens": result["completionTokens"],
                    "otherCores": cores,
                }
            )
    return streams
