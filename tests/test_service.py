"""The service layer on a stand-in engine: queues, cancellation, loads, unloads, failures.

Real llama.cpp behaviour is covered end to end in test_e2e.py; these tests pin
down the orchestration, which a fake engine makes deterministic. One runs the
real engine on the tiny model, failed from inside its token loop, which no
request can make happen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from sidecar.engine.api import (
    ChatMessage,
    GenerationOutcome,
    LoadOptions,
    LoadProgress,
    ModelFacts,
    SamplingOptions,
    StopCheck,
)
from sidecar.engine.llamacpp import LlamaCppEngine, LlamaCppModel
from sidecar.errors import GenerationFailed
from sidecar.methods import build_method_table
from sidecar.rpc import RequestContext
from sidecar.service import GenerationRequest, GenerationResult, ModelService
from sidecar.settings import Settings

FACTS = ModelFacts(512, 512, 100, 1, "fake", None, False)


def never() -> bool:
    return False


class FakeModel:
    """Emits one piece per 'token' every ``pause`` seconds until stopped or out of tokens.

    With ``fail_after`` set, raises ``GenerationFailed`` after that many pieces, as
    the llama.cpp engine does when decoding fails midway.
    """

    def __init__(self, log: list[str], pause: float, fail_after: int | None = None) -> None:
        self.log = log
        self.pause = pause
        self.fail_after = fail_after
        self.threads: set[str] = set()
        self.closed = False

    @property
    def facts(self) -> ModelFacts:
        return FACTS

    def chat_prompt(
        self, messages: Sequence[ChatMessage], *, should_stop: StopCheck = never, limit: int | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        return [1] * len(messages), ()

    def tokenize(
        self,
        text: str,
        *,
        add_bos: bool = True,
        special: bool = True,
        should_stop: StopCheck = never,
        limit: int | None = None,
    ) -> list[int]:
        return [1] * len(text)

    def detokenize(
        self, tokens: Sequence[int], *, special: bool = False, continuation: bool = False
    ) -> bytes:
        return b"x" * len(tokens)

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingOptions,
        on_text: Callable[[str], None],
        should_stop: StopCheck,
    ) -> GenerationOutcome:
        self.threads.add(threading.current_thread().name)
        self.log.append(f"start {len(prompt_tokens)}")
        produced = 0
        while produced < (sampling.max_tokens or 10):
            if produced == self.fail_after:
                raise GenerationFailed("llama.cpp failed while generating: llama_decode returned -1.")
            if should_stop():
                return GenerationOutcome("cancelled", len(prompt_tokens), produced, 1, 1)
            time.sleep(self.pause)
            on_text("x")
            produced += 1
        return GenerationOutcome("length", len(prompt_tokens), produced, 1_000_000, 2_000_000)

    def embed(
        self, texts: Sequence[str], *, normalize: bool, should_stop: StopCheck = never
    ) -> tuple[list[list[float]], int]:
        return [[1.0]] * len(texts), len(texts)

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    def __init__(
        self, pause: float = 0.001, load_seconds: float = 0.0, fail_after: int | None = None
    ) -> None:
        self.log: list[str] = []
        self.models: list[FakeModel] = []
        self.pause = pause
        self.load_seconds = load_seconds
        self.fail_after = fail_after

    def load(
        self,
        path: str,
        options: LoadOptions,
        *,
        progress: LoadProgress | None = None,
        should_stop: StopCheck | None = None,
    ) -> FakeModel:
        time.sleep(self.load_seconds)
        self.log.append(f"load {path}")
        model = FakeModel(self.log, self.pause, self.fail_after)
        self.models.append(model)
        return model


def prompt(text: str, max_tokens: int = 3, model_id: str | None = None) -> GenerationRequest:
    return GenerationRequest(model_id=model_id, prompt=text, messages=None, max_tokens=max_tokens)


class Collect:
    """A sink that records what the service hands it."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ends: list[GenerationResult | None] = []

    def text(self, piece: str) -> None:
        assert not self.ends, "text after end"
        self.pieces.append(piece)

    def end(self, result: GenerationResult | None) -> None:
        self.ends.append(result)


def test_requests_for_one_model_run_one_at_a_time_in_arrival_order() -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        await service.load("a.gguf", None, LoadOptions(), None)
        sinks = [Collect() for _ in range(3)]
        results = await asyncio.gather(
            *(service.generate(prompt("p" * n), sinks[n - 1], never, time.monotonic_ns()) for n in (1, 2, 3))
        )
        assert [sink.ends for sink in sinks] == [[result] for result in results]
        assert [r.text for r in results] == ["xxx"] * 3
        assert engine.log == ["load a.gguf", "start 1", "start 2", "start 3"]
        assert len(engine.models[0].threads) == 1
        assert results[0].timings.tokens_per_second == 1000.0  # 2 tokens after the first in 2 ms

    asyncio.run(scenario())


def test_the_engine_is_made_off_the_event_loop() -> None:
    # Making the real engine imports llama.cpp (~200 ms): on the loop, it would stall pings.
    made_on: list[threading.Thread] = []

    def make_engine() -> FakeEngine:
        made_on.append(threading.current_thread())
        return FakeEngine()

    async def scenario() -> None:
        service = ModelService(make_engine)
        await service.load("a.gguf", None, LoadOptions(), None)

    asyncio.run(scenario())
    assert made_on and threading.main_thread() not in made_on


def test_a_prompt_sent_during_a_load_waits_for_it() -> None:
    engine = FakeEngine(load_seconds=0.05)

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        load = asyncio.ensure_future(service.load("slow.gguf", "slow", LoadOptions(), None))
        await asyncio.sleep(0)
        result = await service.generate(prompt("hi"), Collect(), never, time.monotonic_ns())
        assert result.finish_reason == "length"
        assert (await load).model_id == "slow"

    asyncio.run(scenario())


def test_a_request_cancelled_while_queued_never_reaches_the_engine() -> None:
    engine = FakeEngine(pause=0.01)

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        await service.load("a.gguf", None, LoadOptions(), None)
        cancelled = threading.Event()
        first = service.generate(prompt("one", 5), Collect(), never, time.monotonic_ns())
        second = service.generate(prompt("two", 5), Collect(), cancelled.is_set, time.monotonic_ns())
        cancelled.set()
        results = await asyncio.gather(first, second)
        assert [r.finish_reason for r in results] == ["length", "cancelled"]
        assert engine.log.count("start 3") == 1  # only "one" started

    asyncio.run(scenario())


def test_unload_cancels_running_work_and_closes_the_model() -> None:
    engine = FakeEngine(pause=0.01)

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        await service.load("a.gguf", "a", LoadOptions(), None)
        running = asyncio.ensure_future(
            service.generate(prompt("x", 1000), Collect(), never, time.monotonic_ns())
        )
        await asyncio.sleep(0.05)
        assert await service.unload("a") is True
        assert (await running).finish_reason == "cancelled"
        assert engine.models[0].closed
        assert service.list() == []

    asyncio.run(scenario())


def test_the_latest_load_is_the_default_and_reloading_the_same_file_reuses_it() -> None:
    engine = FakeEngine()

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        first = await service.load("a.gguf", None, LoadOptions(), None)
        second = await service.load("b.gguf", None, LoadOptions(), None)
        assert [m.model_id for m in service.list()] == ["a", "b"]
        again = await service.load("a.gguf", None, LoadOptions(), None)
        assert again is first and [m.model_id for m in service.list()] == ["b", "a"]
        assert engine.log.count("load a.gguf") == 1
        other = await service.load("a.gguf", None, LoadOptions(context_size=1024), None)
        assert other.model_id == "a-2" and other is not first and second.model_id == "b"

    asyncio.run(scenario())


async def stream_through_methods(
    service: ModelService, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], GenerationFailed]:
    """Run a promptStream that must fail through the method table: (its streamChunk params, the error)."""
    chunks: list[dict[str, Any]] = []

    def notify(method: str, message: dict[str, Any]) -> None:
        assert method == "streamChunk"
        chunks.append(message)

    table = build_method_table(
        service, cancel_request=lambda _id: False, request_shutdown=lambda: None, settings=Settings()
    )
    entry = table["promptStream"]
    with pytest.raises(GenerationFailed) as raised:
        await entry.handler(
            RequestContext(7, False, time.monotonic_ns(), notify), entry.validate_params(params)
        )
    return chunks, raised.value


def assert_ends_with_one_error_chunk(chunks: list[dict[str, Any]]) -> None:
    assert [chunk["index"] for chunk in chunks] == list(range(len(chunks)))
    assert [chunk["isFinal"] for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1] == {**chunks[-1], "content": "", "finishReason": "error"}
    assert "usage" not in chunks[-1] and "timings" not in chunks[-1]


def test_a_generation_failing_midway_ends_its_stream_with_one_error_chunk() -> None:
    engine = FakeEngine(fail_after=2)

    async def scenario() -> None:
        service = ModelService(lambda: engine)
        await service.load("a.gguf", None, LoadOptions(), None)
        chunks, error = await stream_through_methods(service, {"prompt": "hi", "maxTokens": 5})
        assert [chunk["content"] for chunk in chunks] == ["x", "x", ""]
        assert_ends_with_one_error_chunk(chunks)
        assert error.code == -32008
        engine.models[0].fail_after = None  # the model and its worker go on serving
        result = await service.generate(prompt("hi"), Collect(), never, time.monotonic_ns())
        assert result.finish_reason == "length"

    asyncio.run(scenario())


def test_llama_cpp_failing_mid_decode_is_generation_failed(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        service = ModelService(LlamaCppEngine)
        loaded = await service.load(str(tiny_model), None, LoadOptions(), None)
        llm = cast(LlamaCppModel, loaded.engine_model)._llm
        decode = llm.generate

        def failing(*args: Any, **kwargs: Any) -> Iterator[int]:
            tokens = decode(*args, **kwargs)
            try:
                for _ in range(3):
                    yield next(tokens)
                raise RuntimeError("llama_decode returned -1")  # what llama-cpp-python raises
            finally:
                tokens.close()

        monkeypatch.setattr(llm, "generate", failing)
        greedy = {"prompt": "hello", "maxTokens": 20, "temperature": 0}
        chunks, error = await stream_through_methods(service, greedy)
        assert_ends_with_one_error_chunk(chunks)
        assert "llama_decode returned -1" in error.message
        monkeypatch.undo()
        result = await service.generate(prompt("hello", 5), Collect(), never, time.monotonic_ns())
        assert result.completion_tokens == 5
        await service.close()

    asyncio.run(scenario())


def test_a_prompt_cancelled_while_it_is_tokenized_counts_nothing(default_model: str) -> None:
    async def scenario() -> None:
        service = ModelService(LlamaCppEngine)
        # SmolLM2's context holds several pieces of prose (about 1,800 tokens each).
        await service.load(default_model, None, LoadOptions(context_size=8192, threads=1), None)
        checks = 0

        def cancelled_after_two_pieces() -> bool:
            nonlocal checks
            checks += 1
            return checks > 2

        # 1.1 tokenized such a prompt whole, then reported its 300,000 tokens as cancelled.
        long_prompt = GenerationRequest(model_id=None, prompt="hello world " * 100_000, messages=None)
        sink = Collect()
        result = await service.generate(long_prompt, sink, cancelled_after_two_pieces, time.monotonic_ns())
        assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("cancelled", 0, 0)
        assert sink.ends == [result] and checks == 3
        await service.close()

    asyncio.run(scenario())
