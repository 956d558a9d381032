"""Phase 1: the four systems side by side, one at a time, on identical prompts.

Each system is started, loaded and given its first prompt (the raw probe, for
the cold-start figure) one after another. Then every prompt runs on every
system back to back (A B C D, the starting system rotating each round), first
the warm-up rounds, which are discarded, then the measured rounds. Only one
system generates at any moment; the others sit idle in their own processes.
A sample that other processes disturbed is retaken (see ``noise``), after
re-running the previous prompt so the prompt cache holds what it held.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

from .config import Settings
from .driver import Driver, progress
from .memory import peak_rss_mb, rss_mb
from .noise import NoiseLedger
from .prompts import Prompt

__all__ = ["run_compare"]

# Re-running a prompt to restore the prompt cache: 2 tokens, so that one generated
# token is evaluated and the cache holds more than the prompt, as after a real run
# (with exactly the prompt cached, llama-cpp-python would skip evaluating it again).
_RESTORE_TOKENS = 2


def run_compare(
    settings: Settings, prompts: list[Prompt], keys: list[str], noise: NoiseLedger
) -> dict[str, Any]:
    """Raw records: ``setup`` (start, load, first prompt, memory) and ``runs`` per system."""
    drivers: dict[str, Driver] = {}
    setup: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    try:
        for key in keys:
            progress(f"compare: starting and loading {key}")
            drivers[key] = Driver(key, settings.tmp / "logs")
            setup[key] = _bring_up(drivers[key], settings, prompts, noise)
        for round_index in range(-settings.warmup_rounds, settings.rounds):
            progress(
                f"compare: round {round_index + 1} of {settings.rounds}"
                if round_index >= 0
                else "compare: warm-up"
            )
            order = keys[round_index % len(keys) :] + keys[: round_index % len(keys)]
            for index, prompt in enumerate(prompts):
                for key in order:
                    result = _generate(drivers[key], settings, prompt, prompts[index - 1], noise)
                    if round_index >= 0:
                        runs[key].append(_record(round_index, prompt, result))
        for key in keys:
            setup[key]["peakRssMb"] = sum(peak_rss_mb(pid) for pid in setup[key]["pids"])
    finally:
        for driver in drivers.values():
            driver.close()
    return {"setup": setup, "runs": runs}


def _bring_up(
    driver: Driver, settings: Settings, prompts: list[Prompt], noise: NoiseLedger
) -> dict[str, Any]:
    """Start, (sidecars: idle memory), load, the first prompt after the load (the probe).

    Then the last prompt of a round, so that the prompt cache holds what a round leaves.
    """
    started = driver.call("start", python=sys.executable)
    is_sidecar = started["spawnToReadyMs"] is not None
    idle = sum(rss_mb(pid) for pid in started["pids"]) if is_sidecar else None
    loaded = driver.call(
        "load",
        modelPath=settings.model_path,
        contextSize=settings.context_size,
        threads=settings.threads,
        batchSize=settings.batch_size,
    )
    first, cores = noise.measure(
        driver.pid, partial(driver.call, "generate", prompt=prompts[0].text, maxTokens=settings.max_tokens)
    )
    driver.call("generate", prompt=prompts[-1].text, maxTokens=_RESTORE_TOKENS)
    return {
        "spawnToReadyMs": started["spawnToReadyMs"],
        "idleRssMb": idle,
        "loadMs": loaded["loadMs"],
        "serverLoadMs": loaded.get("serverLoadMs"),
        "pids": loaded["pids"],
        "backend": loaded.get("backend"),  # the llama.cpp CPU variant it runs on, where the system says
        "firstPrompt": {**first, "otherCores": cores},
    }


def _generate(
    driver: Driver, settings: Settings, prompt: Prompt, previous: Prompt, noise: NoiseLedger
) -> dict[str, Any]:
    result, cores = noise.quiet(
        driver.pid,
        partial(
            driver.call, "generate", prompt=prompt.text, maxTokens=prompt.max_tokens or settings.max_tokens
        ),
        partial(driver.call, "generate", prompt=previous.text, maxTokens=_RESTORE_TOKENS),
    )
    return {**result, "otherCores": cores}


def _record(round_index: int, prompt: Prompt, result: dict[str, Any]) -> dict[str, Any]:
    """One measured generation; the text is kept for the first round only (the output check)."""
    if round_index > 0:
        result.pop("text")
    return {"round": round_index, "prompt": prompt.name, "kind": prompt.kind, **result}
