"""A sidecar whose generation costs nothing: the real server, rpc, service and transport.

``python -m harness.drivers.null_sidecar`` is ``python -m sidecar`` with one
change, made through the engine seam (``sidecar.engine.api``, which the
sidecar's own tests fake): a loaded model's ``generate`` emits one ``"a"`` per
token as fast as a Python loop can, without calling llama.cpp. Everything
else (loading, tokenizing, the service's queue and thread, the rpc layer,
the transport) is the real code. The ``streamChunk`` rate a client sees is
then the rate of the boundary itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import sidecar.cli
from sidecar.engine.api import GenerationOutcome, SamplingOptions, StopCheck


class FreeGeneration:
    """A real loaded model, except for ``generate``."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingOptions,
        on_text: Callable[[str], None],
        should_stop: StopCheck,
    ) -> GenerationOutcome:
        started = time.perf_counter_ns()
        budget = sampling.max_tokens or 1
        produced = 0
        while produced < budget and not should_stop():
            produced += 1
            on_text("a")
        return GenerationOutcome(
            finish_reason="length" if produced == budget else "cancelled",
            prompt_tokens=len(prompt_tokens),
            completion_tokens=produced,
            prompt_ns=0,
            decode_ns=time.perf_counter_ns() - started,
        )


class FreeEngine:
    """The real engine, whose models generate for free."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def load(self, path: str, options: Any, **keywords: Any) -> Any:
        """The real load (with whatever keywords the service passes: progress, cancellation)."""
        return FreeGeneration(self._engine.load(path, options, **keywords))


if __name__ == "__main__":
    real_factory: Callable[[], Any] = sidecar.cli._llama_cpp_engine  # fails loudly if the seam moves
    sidecar.cli._llama_cpp_engine = lambda: FreeEngine(real_factory())
    sidecar.cli.main()
