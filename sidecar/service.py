"""Service: loaded models, one worker thread each, and generation requests.

Each loaded model owns a single-thread executor: its jobs run one at a time
in arrival order, and a ``Llama`` object never sees two threads. Generation
results carry usage and timings. The service knows models and requests, not
JSON-RPC, request ids or the wire; the engine behind it is injected.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

from .engine.api import (
    ChatMessage,
    Engine,
    EngineModel,
    FinishReason,
    GenerationOutcome,
    LoadOptions,
    ModelFacts,
    ModelSummary,
    SamplingOptions,
    StopCheck,
)
from .errors import NoModelLoaded, UnknownModelId

_T = TypeVar("_T")
Vectors = list[list[float]]  # named here: inside ModelService, "list" is a method

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "GenerationSink",
    "LoadedModel",
    "ModelService",
    "Timings",
]


@dataclass(slots=True, frozen=True)
class Timings:
    ttft_ms: float
    prompt_ms: float
    decode_ms: float
    tokens_per_second: float


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    """One prompt: exactly one of ``prompt`` and ``messages`` is set."""

    model_id: str | None
    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    max_tokens: int | None = None
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: dict[str, object] | None = None


@dataclass(slots=True, frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings


class GenerationSink(Protocol):
    """Where a generation's output goes; called on the model's worker thread."""

    def text(self, piece: str) -> None:
        """A piece of text: whole UTF-8 characters, in order."""

    def end(self, result: GenerationResult | None) -> None:
        """Called once, last: with the result, or None when the generation failed."""


@dataclass(slots=True)
class LoadedModel:
    """A model as the host sees it, with the thread that runs it."""

    model_id: str
    path: str
    options: LoadOptions
    seed: int | None
    facts: ModelFacts
    load_ms: float
    engine_model: EngineModel = field(repr=False)
    worker: ThreadPoolExecutor = field(repr=False)
    closing: bool = False
    # Held by token work running beside the worker (tokenize, countTokens) and by
    # close, so a model is never freed while another thread reads its vocabulary.
    use_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ModelService:
    """Loads, lists, unloads and prompts models."""

    def __init__(self, engine_factory: Callable[[], Engine]) -> None:
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._models: dict[str, LoadedModel] = {}  # insertion order = load order
        self._loads: set[asyncio.Task[LoadedModel]] = set()

    # -- models ----------------------------------------------------------

    async def load(
        self, path: str, model_id: str | None, options: LoadOptions, seed: int | None
    ) -> LoadedModel:
        """Load ``path`` (or return the same file already loaded with the same options).

        Requests that arrive while the load runs wait for it, so a host may send
        ``loadModel`` and ``prompt`` back to back.
        """
        task = asyncio.ensure_future(self._load(set(self._loads), path, model_id, options, seed))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        return await task

    async def _load(
        self,
        earlier_loads: set[asyncio.Task[LoadedModel]],
        path: str,
        model_id: str | None,
        options: LoadOptions,
        seed: int | None,
    ) -> LoadedModel:
        if earlier_loads:  # one load at a time, in arrival order
            await asyncio.wait(earlier_loads)
        for loaded in self._models.values():
            if loaded.path == path and loaded.options == options and model_id in (None, loaded.model_id):
                self._models[loaded.model_id] = self._models.pop(loaded.model_id)  # now the default
                return loaded
        model_id = model_id or self._free_id(Path(path).stem)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model_id}")
        started = time.perf_counter()
        try:
            engine_model = await asyncio.get_running_loop().run_in_executor(
                worker, self._engine_or_create().load, path, options
            )
        except BaseException:
            worker.shutdown(wait=False)
            raise
        load_ms = (time.perf_counter() - started) * 1000
        if model_id in self._models:
            await self.unload(model_id)
        loaded = LoadedModel(model_id, path, options, seed, engine_model.facts, load_ms, engine_model, worker)
        self._models[model_id] = loaded
        return loaded

    async def unload(self, model_id: str | None) -> bool:
        """Free a model (the default one if no id); its running and queued prompts end cancelled."""
        await self._loads_settled()
        if model_id is None:
            if not self._models:
                return False
            model_id = next(reversed(self._models))
        loaded = self._models.pop(model_id, None)
        if loaded is None:
            return False
        await _close(loaded)
        return True

    def list(self) -> list[LoadedModel]:
        return list(self._models.values())

    async def close(self) -> None:
        """Cancel everything and free every model."""
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(_close(model) for model in models))

    # -- generation ------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        sink: GenerationSink,
        cancelled: StopCheck,
        received_ns: int,
    ) -> GenerationResult:
        """Queue ``request`` on its model's worker and wait for the result.

        ``sink`` gets every piece of text on the worker thread, then ``end``
        exactly once, before the next queued request starts and before this
        returns or raises.
        """
        try:
            await self._loads_settled()
            model = self._resolve(request.model_id)
        except BaseException:
            sink.end(None)
            raise
        seed = request.seed if request.seed is not None else model.seed
        sampling = SamplingOptions(
            seed=seed if seed is not None else random.getrandbits(32),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            min_p=request.min_p,
            repeat_penalty=request.repeat_penalty,
            stop=request.stop,
        )

        def should_stop() -> bool:
            return model.closing or cancelled()

        def job() -> GenerationResult:
            try:
                result = _run_generation(
                    model.engine_model, request, sampling, sink.text, should_stop, received_ns
                )
            except BaseException:
                sink.end(None)
                raise
            sink.end(result)
            return result

        return await asyncio.get_running_loop().run_in_executor(model.worker, job)

    async def _loads_settled(self) -> None:
        """Wait for the loads that started before now; their failures are their own requests'."""
        if self._loads:
            await asyncio.wait(set(self._loads))

    async def inspect(self, path: str) -> ModelSummary:
        """Describe a model file without loading it (on a thread: it reads the file's header)."""
        return await asyncio.to_thread(self._engine_or_create().inspect, path)

    async def embed(
        self, model_id: str | None, texts: Sequence[str], *, normalize: bool
    ) -> tuple[Vectors, int]:
        """Embed on the model's worker, in turn with its prompts (it shares their thread and CPU)."""
        await self._loads_settled()
        model = self._resolve(model_id)
        return await asyncio.get_running_loop().run_in_executor(
            model.worker, functools.partial(model.engine_model.embed, texts, normalize=normalize)
        )

    # -- tokens ----------------------------------------------------------

    async def tokenize(
        self, model_id: str | None, text: str, *, add_bos: bool, special: bool
    ) -> Sequence[int]:
        return await self._beside_worker(
            model_id, lambda model: model.tokenize(text, add_bos=add_bos, special=special)
        )

    async def detokenize(self, model_id: str | None, tokens: Sequence[int], *, special: bool) -> str:
        data = await self._beside_worker(model_id, lambda model: model.detokenize(tokens, special=special))
        return data.decode("utf-8", errors="replace")

    async def count_tokens(
        self, model_id: str | None, prompt: str | None, messages: tuple[ChatMessage, ...] | None
    ) -> tuple[int, int]:
        """Prompt tokens exactly as a prompt would see them, and the context size."""

        def count(model: EngineModel) -> tuple[int, int]:
            tokens = model.chat_prompt(messages)[0] if messages is not None else model.tokenize(prompt or "")
            return len(tokens), model.facts.context_size

        return await self._beside_worker(model_id, count)

    async def _beside_worker(self, model_id: str | None, work: Callable[[EngineModel], _T]) -> _T:
        """Run read-only token work on its own thread: it need not queue behind generation.

        llama.cpp's vocabulary is read-only once loaded, so this is safe next to the
        worker; the model's lock keeps it from being freed meanwhile.
        """
        await self._loads_settled()
        model = self._resolve(model_id)

        def guarded() -> _T:
            with model.use_lock:
                if model.closing:
                    raise UnknownModelId(
                        f"The model {model.model_id!r} was unloaded.", {"modelId": model.model_id}
                    )
                return work(model.engine_model)

        return await asyncio.to_thread(guarded)

    def _resolve(self, model_id: str | None) -> LoadedModel:
        if model_id is None:
            if not self._models:
                raise NoModelLoaded("No model is loaded; call loadModel first.")
            return self._models[next(reversed(self._models))]
        model = self._models.get(model_id)
        if model is None:
            raise UnknownModelId(f"No loaded model has the id {model_id!r}.", {"modelId": model_id})
        return model

    def _free_id(self, stem: str) -> str:
        candidate, suffix = stem, 2
        while candidate in self._models:
            candidate, suffix = f"{stem}-{suffix}", suffix + 1
        return candidate

    def _engine_or_create(self) -> Engine:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine


def _run_generation(
    model: EngineModel,
    request: GenerationRequest,
    sampling: SamplingOptions,
    on_text: Callable[[str], None],
    should_stop: StopCheck,
    received_ns: int,
) -> GenerationResult:
    """The worker-thread side of a prompt: tokenize, generate, time."""
    started_ns = time.monotonic_ns()
    pieces: list[str] = []

    def collect(text: str) -> None:
        pieces.append(text)
        on_text(text)

    if request.grammar is not None or request.json_schema is not None:
        sampling = replace(sampling, grammar=model.grammar_for(request.grammar, request.json_schema))
    if request.messages is not None:
        tokens, template_stops = model.chat_prompt(request.messages)
        sampling = replace(sampling, stop=tuple(dict.fromkeys((*sampling.stop, *template_stops))))
    else:
        tokens = model.tokenize(request.prompt or "")
    if should_stop():  # cancelled while queued: do not touch the model
        outcome = GenerationOutcome("cancelled", len(tokens), 0, 0, 0)
    else:
        outcome = model.generate(tokens, sampling, collect, should_stop)
    queued_ms = (started_ns - received_ns) / 1e6
    return GenerationResult(
        text="".join(pieces),
        finish_reason=outcome.finish_reason,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        timings=_timings(outcome, queued_ms),
    )


def _timings(outcome: GenerationOutcome, queued_ms: float) -> Timings:
    prompt_ms = outcome.prompt_ns / 1e6
    decode_ms = outcome.decode_ns / 1e6
    decoded_after_first = max(outcome.completion_tokens - 1, 0)
    return Timings(
        ttft_ms=round(queued_ms + prompt_ms, 3),
        prompt_ms=round(prompt_ms, 3),
        decode_ms=round(decode_ms, 3),
        tokens_per_second=round(decoded_after_first / (decode_ms / 1000), 2) if decode_ms > 0 else 0.0,
    )


def _close_when_unused(model: LoadedModel) -> None:
    with model.use_lock:
        model.engine_model.close()


async def _close(model: LoadedModel) -> None:
    model.closing = True
    loop = asyncio.get_running_loop()
    # Runs after the jobs already queued, which see ``closing`` and end at once.
    await loop.run_in_executor(model.worker, _close_when_unused, model)
    model.worker.shutdown(wait=False)
    # llama-cpp-python's objects hold reference cycles (callbacks that point back at
    # their owner); collecting now frees a model's Python-side memory at unload
    # instead of at some later collection (measured: 16-30 KB kept per load/unload
    # cycle of the tiny model without this, under 3 KB with it).
    gc.collect()
    _return_free_heap_to_os()


def _return_free_heap_to_os() -> None:
    """Give the C heap's free pages back, so an unload shows in the process's RSS.

    Each model runs on its own thread, and glibc keeps a heap arena per thread;
    the free pages those arenas keep after an unload made RSS drift upward by
    steps over many load/unload cycles when the CPU was busy. ``malloc_trim``
    trims every arena. Other C libraries lack it, and need nothing here.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's
    except (AttributeError, OSError, TypeError):  # not glibc, or Windows (no such handle)
        return
    malloc_trim(0)
