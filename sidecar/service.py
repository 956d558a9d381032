"""Service: loaded models, one worker thread each, chat sessions, and generation requests.

Each loaded model owns a single-thread executor: its jobs run one at a time
in arrival order, and a ``Llama`` object never sees two threads. A limit on
the number (and bytes) of loaded models unloads the least recently used.
Sessions keep a history; the model's context holds the tokens of the session
that used it last, and the others wait as snapshots, so a turn evaluates only
its new tokens. Generation results carry usage and timings. The service knows
models, sessions and requests, not JSON-RPC, request ids or the wire; the
engine behind it is injected.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

from .engine.api import (
    ChatMessage,
    Engine,
    EngineModel,
    FinishReason,
    GenerationOutcome,
    LoadOptions,
    LoadProgress,
    ModelFacts,
    ModelSummary,
    SamplingOptions,
    StopCheck,
)
from .errors import InvalidParams, NoModelLoaded, RequestCancelled, UnknownModelId, UnknownSessionId
from .sessions import Session, TurnPrompt, reply_reserve, turn_prompt

_T = TypeVar("_T")
# Registers a callback to run (on the event loop) when the request is cancelled.
OnCancel: TypeAlias = Callable[[Callable[[], None]], None]
Vectors = list[list[float]]  # named here: inside ModelService, "list" is a method
Tokens = list[int]

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "GenerationSink",
    "LoadedModel",
    "ModelLimits",
    "ModelService",
    "Session",
    "Timings",
]

log = logging.getLogger(__name__)

_WEIGHTS_READ = 0.99  # load progress once the weights are read and before the model is ready


def _never() -> bool:
    return False


@dataclass(slots=True, frozen=True)
class ModelLimits:
    """How much the service keeps loaded; past it, the least recently used model goes."""

    max_models: int | None = 3  # the old WorkerService kept 3; None: no limit
    max_bytes: int | None = None  # sum of the loaded model files' sizes
    # Snapshots of the sessions that are not in their model's context, per model.
    session_cache_bytes: int = 512 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class Timings:
    ttft_ms: float
    prompt_ms: float
    decode_ms: float
    tokens_per_second: float


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    """One prompt: exactly one of ``prompt``, ``messages`` and ``session_id`` (with ``text``) is set."""

    model_id: str | None
    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    session_id: str | None = None
    text: str | None = None  # the user's turn in the session
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
    cut_by_stop_string: bool = False


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
    last_used: float = 0.0  # time.time() of the last request that used it
    running_jobs: int = 0  # queued or running on the worker; a busy model is evicted last
    # The session whose tokens the model's context holds (None: a one-off prompt's).
    # Read and written on the worker thread only.
    context_owner: Session | None = field(default=None, repr=False)
    # Held by token work running beside the worker (tokenize, countTokens) and by
    # close, so a model is never freed while another thread reads its vocabulary.
    use_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ModelService:
    """Loads, lists, unloads and prompts models; keeps chat sessions."""

    def __init__(self, engine_factory: Callable[[], Engine], limits: ModelLimits | None = None) -> None:
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()  # created on a worker: loads and inspects race for it
        self._limits = limits or ModelLimits()
        self._models: dict[str, LoadedModel] = {}  # insertion order = load order
        self._loads: set[asyncio.Task[LoadedModel]] = set()
        self._sessions: dict[str, Session] = {}
        self._session_numbers = itertools.count(1)

    # -- models ----------------------------------------------------------

    async def load(
        self,
        path: str,
        model_id: str | None,
        options: LoadOptions,
        seed: int | None,
        progress: LoadProgress = lambda _value: None,
        should_stop: StopCheck = lambda: False,
    ) -> LoadedModel:
        """Load ``path`` (or return the same file already loaded with the same options).

        Requests that arrive while the load runs wait for it, so a host may send
        ``loadModel`` and ``prompt`` back to back. ``should_stop`` abandons the
        load (``RequestCancelled``); past the model limit, the least recently
        used other model is unloaded once this one is in.
        """
        task = asyncio.ensure_future(
            self._load(set(self._loads), path, model_id, options, seed, progress, should_stop)
        )
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
        progress: LoadProgress,
        should_stop: StopCheck,
    ) -> LoadedModel:
        if earlier_loads:  # one load at a time, in arrival order
            await asyncio.wait(earlier_loads)
        for loaded in self._models.values():
            if loaded.path == path and loaded.options == options and model_id in (None, loaded.model_id):
                self._models[loaded.model_id] = self._models.pop(loaded.model_id)  # now the default
                loaded.last_used = time.time()
                loaded.seed = seed  # the latest load says how its prompts are seeded
                progress(1.0)
                return loaded
        model_id = model_id or self._free_id(Path(path).stem)

        def reading(value: float) -> None:
            # 1 means ready; the context is still to be made when the weights are all read.
            progress(min(value, _WEIGHTS_READ))

        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model_id}")
        started = time.perf_counter()
        try:
            engine_model = await asyncio.get_running_loop().run_in_executor(
                worker,
                lambda: self._engine_or_create().load(
                    path, options, progress=reading, should_stop=should_stop
                ),
            )
        except BaseException:
            worker.shutdown(wait=False)
            raise
        if should_stop():  # cancelled as the engine finished: free the model all the same
            await asyncio.get_running_loop().run_in_executor(worker, engine_model.close)
            worker.shutdown(wait=False)
            raise RequestCancelled(f"The load of {path} was cancelled.")
        load_ms = (time.perf_counter() - started) * 1000
        progress(1.0)
        if model_id in self._models:
            await self._drop(model_id)
        loaded = LoadedModel(model_id, path, options, seed, engine_model.facts, load_ms, engine_model, worker)
        loaded.last_used = time.time()
        self._models[model_id] = loaded
        await self._keep_within_limits(loaded)
        return loaded

    async def _keep_within_limits(self, keep: LoadedModel) -> None:
        """Unload the least recently used models (idle ones first) until within the limits."""
        while len(self._models) > 1 and self._over_limits():
            victim = min(
                (model for model in self._models.values() if model is not keep),
                key=lambda model: (model.running_jobs > 0, model.last_used),
            )
            log.info(
                "unloading %r, the least recently used model, to stay within the limits", victim.model_id
            )
            await self._drop(victim.model_id)

    def _over_limits(self) -> bool:
        limits = self._limits
        loaded_bytes = sum(model.facts.size_bytes for model in self._models.values())
        return (limits.max_models is not None and len(self._models) > limits.max_models) or (
            limits.max_bytes is not None and loaded_bytes > limits.max_bytes
        )

    async def unload(self, model_id: str | None) -> bool:
        """Free a model (the default one if no id); its running and queued prompts end cancelled.

        Its sessions stay open without their cached context: loading a model
        under the same id lets them go on.
        """
        await self._loads_settled()
        if model_id is None:
            if not self._models:
                return False
            model_id = next(reversed(self._models))
        return await self._drop(model_id)

    async def _drop(self, model_id: str) -> bool:
        loaded = self._models.pop(model_id, None)
        if loaded is None:
            return False
        await _close(loaded)
        for session in self.sessions_of(model_id):
            session.snapshot = None  # a snapshot only fits the context it came from
        return True

    def list(self) -> list[LoadedModel]:
        return list(self._models.values())

    async def close(self) -> None:
        """Cancel everything and free every model."""
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(_close(model) for model in models))

    # -- sessions --------------------------------------------------------

    async def create_session(
        self, model_id: str | None, system_prompt: str | None, context_size: int | None
    ) -> Session:
        await self._loads_settled()
        model = self._resolve(model_id)
        if not model.facts.has_chat_template:
            raise InvalidParams(
                f"Invalid params: the model {model.model_id!r} has no chat template, which sessions need.",
                {"field": "modelId"},
            )
        model_context = model.facts.context_size
        if context_size is not None and context_size > model_context:
            raise InvalidParams(
                f"Invalid params: 'contextSize' is {context_size}; "
                f"the model's context holds {model_context} tokens.",
                {"field": "contextSize"},
            )
        session = Session(
            session_id=f"session-{next(self._session_numbers)}",
            model_id=model.model_id,
            system_prompt=system_prompt,
            context_size=context_size or model_context,
        )
        self._sessions[session.session_id] = session
        return session

    def session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSessionId(f"No open session has the id {session_id!r}.", {"sessionId": session_id})
        return session

    def sessions_of(self, model_id: str) -> tuple[Session, ...]:
        """The open sessions on a model, oldest first (callable from any thread)."""
        # tuple() copies the dict's values in one step, safe beside the loop thread's changes.
        return tuple(session for session in tuple(self._sessions.values()) if session.model_id == model_id)

    async def set_session_history(self, session_id: str, messages: tuple[ChatMessage, ...]) -> Session:
        """Replace the history, after the session's prompts already queued (order is kept)."""
        session = self.session(session_id)

        def replace_history() -> None:
            session.messages, session.dropped_messages, session.snapshot = messages, 0, None
            session.prefix_text, session.prefix_tokens = "", ()

        await self._after_queued_work(session, replace_history)
        return session

    async def close_session(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False

        def forget() -> None:
            session.closed, session.snapshot = True, None
            model = self._models.get(session.model_id)
            if model is not None and model.context_owner is session:
                model.context_owner = None

        await self._after_queued_work(session, forget)
        return True

    async def _after_queued_work(self, session: Session, change: Callable[[], None]) -> None:
        """Apply ``change`` on the session's model worker, after its queued prompts."""
        model = self._models.get(session.model_id)
        if model is None or model.closing:
            change()
            return
        await asyncio.get_running_loop().run_in_executor(model.worker, change)

    # -- generation ------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        sink: GenerationSink,
        cancelled: StopCheck,
        received_ns: int,
        on_cancel: OnCancel | None = None,
    ) -> GenerationResult:
        """Queue ``request`` on its model's worker and wait for the result.

        ``sink`` gets every piece of text on the worker thread, then ``end``
        exactly once, before the next queued request starts and before this
        returns or raises. With ``on_cancel``, a cancel that comes while the
        request waits behind others answers it at once, and it never starts.
        """
        try:
            await self._loads_settled()
            session = self.session(request.session_id) if request.session_id is not None else None
            model = self._session_model(session) if session is not None else self._resolve(request.model_id)
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

        claim = threading.Lock()  # the job and a cancel while queued race for it; the winner answers

        def job() -> GenerationResult | None:
            if not claim.acquire(blocking=False):
                return None  # answered as cancelled while it waited
            try:
                result = self._run_generation(
                    model, session, request, sampling, sink.text, should_stop, received_ns
                )
            except BaseException:
                sink.end(None)
                raise
            sink.end(result)
            return result

        queued = self._queue_on_worker(model, job)
        if on_cancel is not None:
            await _until_done_or_cancelled(queued, on_cancel)
            if not queued.done() and claim.acquire(blocking=False):
                queued.add_done_callback(_ignore_outcome)  # the worker will skip it
                answered = _cancelled_before_start(received_ns)
                sink.end(answered)
                return answered
        outcome = await queued
        assert outcome is not None  # only a job that lost its claim returns None
        return outcome

    def _run_generation(
        self,
        model: LoadedModel,
        session: Session | None,
        request: GenerationRequest,
        sampling: SamplingOptions,
        on_text: Callable[[str], None],
        should_stop: StopCheck,
        received_ns: int,
    ) -> GenerationResult:
        """The worker-thread side of a prompt: build its tokens, take the context, generate, time."""
        engine_model = model.engine_model
        pieces: list[str] = []

        def collect(text: str) -> None:
            pieces.append(text)
            on_text(text)

        try:
            tokens, sampling, turn = self._prompt_tokens(model, session, request, sampling, should_stop)
        except RequestCancelled:  # cancelled while its prompt was prepared: nothing was evaluated
            return _cancelled_before_start(received_ns)
        if should_stop():  # the same, just after: neither the model nor the history is touched
            return _cancelled_before_start(received_ns)
        self._hand_context_to(model, session)
        # Everything before generation (queue, template, tokens, a session's context switch)
        # counts in the time to first token.
        ready_ns = time.monotonic_ns()
        outcome = engine_model.generate(tokens, sampling, collect, should_stop)
        if session is not None and turn is not None:
            _append_turn(engine_model, session, turn, request.text or "", outcome, "".join(pieces))
        return GenerationResult(
            text="".join(pieces),
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            timings=_timings(outcome, (ready_ns - received_ns) / 1e6),
            cut_by_stop_string=outcome.cut_by_stop_string,
        )

    def _prompt_tokens(
        self,
        model: LoadedModel,
        session: Session | None,
        request: GenerationRequest,
        sampling: SamplingOptions,
        should_stop: StopCheck,
    ) -> tuple[Tokens, SamplingOptions, TurnPrompt | None]:
        """A prompt's tokens and its final sampling options (grammar, stops, room), on the worker.

        Tokenizing stops once the prompt is known not to fit its context (the
        engine then refuses it, counting no further), and at a cancel
        (``RequestCancelled``).
        """
        engine_model = model.engine_model
        if request.grammar is not None or request.json_schema is not None:
            sampling = replace(
                sampling, grammar=engine_model.grammar_for(request.grammar, request.json_schema)
            )
        turn: TurnPrompt | None = None
        context = model.facts.context_size
        if session is not None:
            reserve = reply_reserve(session.context_size, request.max_tokens)
            turn = turn_prompt(engine_model, session, request.text or "", reserve, should_stop)
            tokens, template_stops = turn.tokens, turn.stops
            room = session.context_size - len(tokens)
            sampling = replace(sampling, max_tokens=min(sampling.max_tokens or room, room))
        elif request.messages is not None:
            tokens, template_stops = engine_model.chat_prompt(
                request.messages, should_stop=should_stop, limit=context
            )
        else:
            tokens = engine_model.tokenize(request.prompt or "", should_stop=should_stop, limit=context)
            template_stops = ()
        if template_stops:
            sampling = replace(sampling, stop=tuple(dict.fromkeys((*sampling.stop, *template_stops))))
        return tokens, sampling, turn

    async def _loads_settled(self) -> None:
        """Wait for the loads that started before now; their failures are their own requests'."""
        if self._loads:
            await asyncio.wait(set(self._loads))

    async def inspect(self, path: str) -> ModelSummary:
        """Describe a model file without loading it (on a thread: it reads the file's header)."""
        return await asyncio.to_thread(lambda: self._engine_or_create().inspect(path))

    async def embed(
        self, model_id: str | None, texts: Sequence[str], *, normalize: bool, cancelled: StopCheck = _never
    ) -> tuple[Vectors, int]:
        """Embed on the model's worker, in turn with its prompts (it shares their thread and CPU).

        ``cancelled`` (or an unload) stops it between inputs and inside llama.cpp's
        decode: ``RequestCancelled``.
        """
        await self._loads_settled()
        model = self._resolve(model_id)

        def should_stop() -> bool:
            return model.closing or cancelled()

        return await self._on_worker(
            model,
            functools.partial(model.engine_model.embed, texts, normalize=normalize, should_stop=should_stop),
        )

    # -- tokens ----------------------------------------------------------

    async def tokenize(
        self, model_id: str | None, text: str, *, add_bos: bool, special: bool, cancelled: StopCheck = _never
    ) -> Sequence[int]:
        return await self._beside_worker(
            model_id,
            lambda model, stop: model.tokenize(text, add_bos=add_bos, special=special, should_stop=stop),
            cancelled,
        )

    async def detokenize(self, model_id: str | None, tokens: Sequence[int], *, special: bool) -> str:
        data = await self._beside_worker(
            model_id, lambda model, _stop: model.detokenize(tokens, special=special), _never
        )
        return data.decode("utf-8", errors="replace")

    async def count_tokens(
        self,
        model_id: str | None,
        prompt: str | None,
        messages: tuple[ChatMessage, ...] | None,
        *,
        cancelled: StopCheck = _never,
    ) -> tuple[int, int]:
        """Prompt tokens exactly as a prompt would see them, and the context size."""

        def count(model: EngineModel, stop: StopCheck) -> tuple[int, int]:
            if messages is not None:
                tokens = model.chat_prompt(messages, should_stop=stop)[0]
            else:
                tokens = model.tokenize(prompt or "", should_stop=stop)
            return len(tokens), model.facts.context_size

        return await self._beside_worker(model_id, count, cancelled)

    async def _beside_worker(
        self, model_id: str | None, work: Callable[[EngineModel, StopCheck], _T], cancelled: StopCheck
    ) -> _T:
        """Run read-only token work on its own thread: it need not queue behind generation.

        llama.cpp's vocabulary is read-only once loaded, so this is safe next to the
        worker; the model's lock keeps it from being freed meanwhile, and an unload
        stops the work at its next check instead of waiting for it.
        """
        await self._loads_settled()
        model = self._resolve(model_id)

        def unloaded() -> UnknownModelId:
            return UnknownModelId(f"The model {model.model_id!r} was unloaded.", {"modelId": model.model_id})

        def should_stop() -> bool:
            return model.closing or cancelled()

        def guarded() -> _T:
            with model.use_lock:
                if model.closing:
                    raise unloaded()
                try:
                    return work(model.engine_model, should_stop)
                except RequestCancelled:
                    if cancelled():
                        raise
                    raise unloaded() from None

        return await asyncio.to_thread(guarded)

    def _resolve(self, model_id: str | None) -> LoadedModel:
        """The model a request names (the default one if none), marked as used now."""
        if model_id is None:
            if not self._models:
                raise NoModelLoaded("No model is loaded; call loadModel first.")
            model = self._models[next(reversed(self._models))]
        else:
            found = self._models.get(model_id)
            if found is None:
                raise UnknownModelId(f"No loaded model has the id {model_id!r}.", {"modelId": model_id})
            model = found
        model.last_used = time.time()
        return model

    def _session_model(self, session: Session) -> LoadedModel:
        if session.model_id not in self._models:
            raise UnknownModelId(
                f"The session's model {session.model_id!r} is not loaded; "
                f"load it again with modelId {session.model_id!r} to go on with the session.",
                {"modelId": session.model_id},
            )
        session.last_used = time.monotonic()
        model = self._resolve(session.model_id)
        # A model loaded again under the id may have a smaller context: the session adapts.
        session.context_size = min(session.context_size, model.facts.context_size)
        return model

    async def _on_worker(self, model: LoadedModel, job: Callable[[], _T]) -> _T:
        """Run ``job`` on the model's worker, after the jobs queued before it."""
        return await self._queue_on_worker(model, job)

    def _queue_on_worker(self, model: LoadedModel, job: Callable[[], _T]) -> asyncio.Future[_T]:
        """Queue ``job`` now (its place in the queue is taken before this returns)."""
        model.running_jobs += 1
        queued = asyncio.get_running_loop().run_in_executor(model.worker, job)

        def finished(_future: asyncio.Future[_T]) -> None:
            model.running_jobs -= 1
            model.last_used = time.time()

        queued.add_done_callback(finished)
        return queued

    def _hand_context_to(self, model: LoadedModel, session: Session | None) -> None:
        """Give the model's context to ``session`` (None: a one-off prompt), on the worker.

        The session that held it is saved as a snapshot first, and the new one's
        snapshot put back, so neither evaluates its history again.
        """
        owner = model.context_owner
        if owner is session:
            return
        engine_model = model.engine_model
        if owner is not None and not owner.closed:
            owner.snapshot = engine_model.save_context()
            self._trim_snapshots(model.model_id)
        if session is not None and session.snapshot is not None:
            engine_model.restore_context(session.snapshot)
            session.snapshot = None  # it lives in the context now
        model.context_owner = session

    def _trim_snapshots(self, model_id: str) -> None:
        """Drop the least recently used snapshots of a model's sessions past the cache budget.

        A session without one evaluates its whole history on its next turn, once.
        """
        saved = sorted(
            (session for session in self.sessions_of(model_id) if session.snapshot is not None),
            key=lambda session: session.last_used,
        )
        total = sum(len(session.snapshot.kv_state) for session in saved if session.snapshot is not None)
        for session in saved:
            if total <= self._limits.session_cache_bytes or session.snapshot is None:
                break
            total -= len(session.snapshot.kv_state)
            session.snapshot = None

    def _free_id(self, stem: str) -> str:
        candidate, suffix = stem, 2
        while candidate in self._models:
            candidate, suffix = f"{stem}-{suffix}", suffix + 1
        return candidate

    def _engine_or_create(self) -> Engine:
        """The engine, made on first use; call it off the event loop (it imports llama.cpp, ~200 ms)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine


def _append_turn(
    model: EngineModel, session: Session, turn: TurnPrompt, text: str, outcome: GenerationOutcome, reply: str
) -> None:
    """Keep a turn that ran: the user's text and the reply as far as it got."""
    if session.closed:
        return
    session.messages = (*turn.history, ChatMessage("user", text), ChatMessage("assistant", reply))
    session.dropped_messages += turn.dropped
    # The reply's tokens stand for its text only when nothing was cut (a stop string) or left
    # out (invalid UTF-8); otherwise the next turn tokenizes the whole prompt again.
    if model.detokenize(outcome.tokens, continuation=True) == reply.encode("utf-8"):
        session.prefix_text, session.prefix_tokens = turn.text + reply, (*turn.tokens, *outcome.tokens)
    else:
        session.prefix_text, session.prefix_tokens = "", ()


async def _until_done_or_cancelled(task: asyncio.Future[Any], on_cancel: OnCancel) -> None:
    cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not cancelled.done():
            cancelled.set_result(None)

    on_cancel(wake)
    await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    cancelled.cancel()


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: nobody waits for a job that was answered already


def _cancelled_before_start(received_ns: int) -> GenerationResult:
    """The answer to a request cancelled while it waited: nothing evaluated, nothing generated."""
    outcome = GenerationOutcome("cancelled", 0, 0, 0, 0)
    return GenerationResult(
        text="",
        finish_reason="cancelled",
        prompt_tokens=0,
        completion_tokens=0,
        timings=_timings(outcome, (time.monotonic_ns() - received_ns) / 1e6),
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
