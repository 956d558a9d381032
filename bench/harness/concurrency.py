"""Phase 3: aggregate throughput of simultaneous streams through the TS client.

One sidecar, the default model loaded with the run's threads: 1, 2 and 4
streams sent at once on that model (the sidecar queues them: one runs at a
time), stream i asking the i-th short chat prompt (cycling), so that each
stream pays for its own prompt as it would for different users. Then a
second copy of the model (its own worker): two streams, one per model,
generating in parallel on the same cores; and, when the run uses more than
one thread, the same with both copies on one thread each, so that the two
models together do not ask for more threads than there are cores.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

from .config import Settings
from .driver import Driver, progress
from .noise import NoiseLedger
from .prompts import Prompt

__all__ = ["run_concurrency"]


def run_concurrency(settings: Settings, prompts: list[Prompt], noise: NoiseLedger) -> list[dict[str, Any]]:
    """One row per case: streams, models, threads per model, aggregate tok/s."""
    progress("concurrency: simultaneous streams")
    texts = [prompt.text for prompt in prompts]
    with Driver("sidecar-ts", settings.tmp / "logs") as driver:
        driver.call("start", python=sys.executable)
        first = _load(driver, settings, settings.threads, None)
        rows = [
            _measure(driver, settings, texts, [first] * streams, settings.threads, noise)
            for streams in settings.streams
        ]
        second = _load(driver, settings, settings.threads, "second-copy")
        rows.append(_measure(driver, settings, texts, [first, second], settings.threads, noise))
        if settings.threads > 1:
            pair = [_load(driver, settings, 1, f"one-thread-{name}") for name in ("a", "b")]
            rows.append(_measure(driver, settings, texts, pair, 1, noise))
    return rows


def _load(driver: Driver, settings: Settings, threads: int, model_id: str | None) -> str:
    """Load a copy of the model and warm it up (its first prompt is discarded)."""
    loaded = driver.call(
        "load",
        modelPath=settings.model_path,
        contextSize=settings.context_size,
        threads=threads,
        batchSize=settings.batch_size,
        modelId=model_id,
    )
    model_id = str(loaded["modelId"])
    driver.call("concurrent", prompts=["Hello"], maxTokens=4, modelIds=[model_id])
    return model_id


def _measure(
    driver: Driver,
    settings: Settings,
    texts: list[str],
    model_ids: list[str],
    threads: int,
    noise: NoiseLedger,
) -> dict[str, Any]:
    prompts = [texts[index % len(texts)] for index in range(len(model_ids))]
    call = partial(
        driver.call, "concurrent", prompts=prompts, maxTokens=settings.max_tokens, modelIds=model_ids
    )
    result, cores = noise.quiet(driver.pid, call)
    tokens = sum(result["completionTokens"])
    return {
        "streams": len(model_ids),
        "models": len(set(model_ids)),
        "threadsPerModel": threads,
        "wallMs": result["wallMs"],
        "completionTokens": tokens,
        "aggregateTps": tokens / (result["wallMs"] / 1000),
        "slowestTtftMs": max(result["ttftMs"]),
        "otherCores": cores,
    }
