"""The method table: every protocol method, its params schema, and its handler.

This is the one place that maps wire names and shapes (camelCase params,
``streamChunk`` notifications) onto the service's records. It knows the
protocol's vocabulary and the service's API; framing, ids and error encoding
belong to the rpc layer, models and threads to the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from .downloads import Progress, download_in_thread
from .engine.api import ChatMessage, CpuBackend, LoadOptions, UnbrokenText
from .errors import InvalidParams, RequestCancelled
from .model_paths import ModelPaths
from .rpc import MethodEntry, Params, RequestContext, RequestId
from .schema import method_names, notification_names, params_validator
from .service import (
    GenerationRequest,
    GenerationResult,
    GenerationSink,
    LoadedModel,
    ModelService,
    Session,
    Timings,
)
from .settings import Settings

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_PROTOCOL_VERSIONS", "build_method_table"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.2"
SUPPORTED_PROTOCOL_VERSIONS = ("1.0", "1.1", "1.2")
_VERSION = re.compile(r"[0-9]+\.[0-9]+")  # MAJOR.MINOR
SERVER_NAME = "llama-sidecar"


def build_method_table(
    service: ModelService,
    *,
    cancel_request: Callable[[RequestId], bool],
    request_shutdown: Callable[[], None],
    settings: Settings,
) -> dict[str, MethodEntry]:
    """The explicit table of every method the sidecar answers."""
    handlers = _Handlers(service, cancel_request, request_shutdown, settings)
    table = {
        "initialize": handlers.initialize,
        "loadModel": handlers.load_model,
        "unloadModel": handlers.unload_model,
        "listModels": handlers.list_models,
        "createSession": handlers.create_session,
        "getSession": handlers.get_session,
        "resetSession": handlers.reset_session,
        "setSessionHistory": handlers.set_session_history,
        "closeSession": handlers.close_session,
        "prompt": handlers.prompt,
        "promptStream": handlers.prompt_stream,
        "tokenize": handlers.tokenize,
        "detokenize": handlers.detokenize,
        "countTokens": handlers.count_tokens,
        "inspectModel": handlers.inspect_model,
        "embed": handlers.embed,
        "downloadModel": handlers.download_model,
        "cancel": handlers.cancel,
        "shutdown": handlers.shutdown,
        "ping": handlers.ping,
    }
    accepts_notification = {"cancel"}
    # Token work and embeddings too: a long text is tokenized in pieces, with a check between them.
    cancellable = {
        "loadModel",
        "prompt",
        "promptStream",
        "downloadModel",
        "tokenize",
        "countTokens",
        "embed",
    }
    # Answered on the spot: their handlers never wait (see MethodEntry.immediate).
    immediate = {"ping", "cancel", "listModels", "getSession"}
    return {
        name: MethodEntry(
            params_validator(name),
            handler,
            accepts_notification=name in accepts_notification,
            cancellable=name in cancellable,
            immediate=name in immediate,
        )
        for name, handler in table.items()
    }


class _Handlers:
    def __init__(
        self,
        service: ModelService,
        cancel_request: Callable[[RequestId], bool],
        request_shutdown: Callable[[], None],
        settings: Settings,
    ) -> None:
        self._service = service
        self._cancel_request = cancel_request
        self._request_shutdown = request_shutdown
        self._settings = settings
        self._model_paths = ModelPaths(settings.model_dirs)

    async def initialize(self, _context: RequestContext, params: Params) -> object:
        requested = params["protocolVersion"]
        if not any(_same_major(requested, supported) for supported in SUPPORTED_PROTOCOL_VERSIONS):
            raise InvalidParams(
                f"Invalid params: protocolVersion {requested!r} is not supported.",
                {"supported": list(SUPPORTED_PROTOCOL_VERSIONS), "requested": requested},
            )
        client = params.get("clientInfo", {})
        log.info("initialized by %s %s", client.get("name", "an unnamed client"), client.get("version", ""))
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "serverInfo": {
                "name": SERVER_NAME,
                "version": _version("llama-sidecar"),
                "llamaCppPythonVersion": _version("llama-cpp-python"),
            },
            "capabilities": {
                "methods": sorted(method_names()),
                "notifications": sorted(notification_names()),
                "maxLineBytes": self._settings.max_line_bytes,
            },
        }

    async def load_model(self, context: RequestContext, params: Params) -> object:
        path = self._model_paths.resolve(params["modelPath"])
        options = LoadOptions(
            context_size=params.get("contextSize"),
            threads=params.get("threads"),
            gpu_layers=params.get("gpuLayers"),
            batch_size=params.get("batchSize"),
            use_mmap=params.get("useMmap"),
            flash_attention=params.get("flashAttention"),
        )

        loaded = await self._service.load(
            path,
            params.get("modelId"),
            options,
            params.get("seed"),
            _LoadProgress(context),
            _cancel_check(context),
        )
        return self._model_info(loaded)

    async def unload_model(self, _context: RequestContext, params: Params) -> object:
        return {"unloaded": await self._service.unload(params.get("modelId"))}

    async def list_models(self, _context: RequestContext, _params: Params) -> object:
        return {"models": [self._model_info(model) for model in self._service.list()]}

    def _model_info(self, model: LoadedModel) -> dict[str, object]:
        facts = model.facts
        info: dict[str, object] = {
            "modelId": model.model_id,
            "modelPath": model.path,
            "contextSize": facts.context_size,
            "trainContextSize": facts.train_context_size,
            "vocabSize": facts.vocab_size,
            "sizeBytes": facts.size_bytes,
            "architecture": facts.architecture,
            "chatTemplate": facts.has_chat_template,
            "loadMs": round(model.load_ms, 3),
            "lastUsedAt": int(model.last_used * 1000),
            "sessions": [session.session_id for session in self._service.sessions_of(model.model_id)],
        }
        if facts.name is not None:
            info["name"] = facts.name
        if facts.backend is not None:
            info["backend"] = _backend_info(facts.backend)
        return info

    async def create_session(self, _context: RequestContext, params: Params) -> object:
        session = await self._service.create_session(
            params.get("modelId"), params.get("systemPrompt"), params.get("contextSize")
        )
        return _session_info(session)

    async def get_session(self, _context: RequestContext, params: Params) -> object:
        return _session_info(self._service.session(params["sessionId"]))

    async def reset_session(self, _context: RequestContext, params: Params) -> object:
        return _session_info(await self._service.set_session_history(params["sessionId"], ()))

    async def set_session_history(self, _context: RequestContext, params: Params) -> object:
        messages = tuple(ChatMessage(m["role"], m["content"]) for m in params["messages"])
        return _session_info(await self._service.set_session_history(params["sessionId"], messages))

    async def close_session(self, _context: RequestContext, params: Params) -> object:
        return {"closed": await self._service.close_session(params["sessionId"])}

    async def prompt(self, context: RequestContext, params: Params) -> object:
        return await self._generate(context, params, _WholeReply())

    async def prompt_stream(self, context: RequestContext, params: Params) -> object:
        return await self._generate(context, params, _ChunkStream(context))

    async def _generate(self, context: RequestContext, params: Params, sink: _Sink) -> object:
        request = _generation_request(params)
        try:
            result = await self._service.generate(
                request,
                sink,
                _cancel_check(context),
                context.received_ns,
                on_cancel=context.cancel_token.on_cancel,
            )
        except asyncio.CancelledError:
            # The stop sequence cuts short a prompt still inside native code that cannot be
            # interrupted (a grammar's set-up, a chat template): it ends here, as cancelled.
            result = sink.cut_short(context.received_ns)
        except UnbrokenText as refused:
            field = "prompt" if request.prompt is not None else "messages" if request.messages else "text"
            raise _unbroken(refused, field) from None
        log.info(
            "request %r: %d prompt tokens, %d generated, %s, %.1f tokens/s",
            context.request_id,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason,
            result.timings.tokens_per_second,
        )
        if self._settings.log_text:
            text_in = next(t for t in (request.prompt, request.messages, request.text) if t is not None)
            log.info("request %r text: %r -> %r", context.request_id, text_in, result.text)
        reply = _result(result)
        if (
            request.json_schema is not None
            and result.finish_reason == "stop"
            and not result.cut_by_stop_string
        ):
            # The grammar lets generation end only on complete JSON; what a stop string cut
            # short may still parse ("12" of "123"), so it is not offered as the reply's JSON.
            with contextlib.suppress(orjson.JSONDecodeError):
                reply["json"] = orjson.loads(result.text)
        return reply

    async def tokenize(self, context: RequestContext, params: Params) -> object:
        try:
            tokens = await self._service.tokenize(
                params.get("modelId"),
                params["text"],
                add_bos=params.get("addBos", True),
                special=params.get("special", True),
                cancelled=_cancel_check(context),
            )
        except UnbrokenText as refused:
            raise _unbroken(refused, "text") from None
        return {"tokens": list(tokens)}

    async def detokenize(self, _context: RequestContext, params: Params) -> object:
        text = await self._service.detokenize(
            params.get("modelId"), params["tokens"], special=params.get("special", False)
        )
        return {"text": text}

    async def count_tokens(self, context: RequestContext, params: Params) -> object:
        request = _generation_request(params)
        try:
            count, context_size = await self._service.count_tokens(
                request.model_id, request.prompt, request.messages, cancelled=_cancel_check(context)
            )
        except UnbrokenText as refused:
            raise _unbroken(refused, "prompt" if request.prompt is not None else "messages") from None
        return {"promptTokens": count, "contextSize": context_size}

    async def embed(self, context: RequestContext, params: Params) -> object:
        texts = params["input"] if isinstance(params["input"], list) else [params["input"]]
        try:
            vectors, tokens = await self._service.embed(
                params.get("modelId"),
                texts,
                normalize=params.get("normalize", True),
                cancelled=_cancel_check(context),
            )
        except UnbrokenText as refused:
            raise _unbroken(refused, "input" if refused.index is None else f"input/{refused.index}") from None
        return {"embeddings": vectors, "promptTokens": tokens}

    async def download_model(self, context: RequestContext, params: Params) -> object:
        url = params["url"]
        destination = self._model_paths.download_destination(params.get("destination"), url)

        def report(progress: Progress) -> None:
            update: dict[str, object] = {
                "requestId": context.request_id,
                "bytes": progress.received,
                "bytesPerSecond": round(progress.bytes_per_second, 1),
            }
            if progress.total is not None:
                update["total"] = progress.total
            context.notify("downloadProgress", update)

        # A thread of its own, not asyncio's shared pool: see download_in_thread.
        outcome = await download_in_thread(
            url, destination, params.get("sha256"), report, _cancel_check(context)
        )
        return {
            "modelPath": outcome.path,
            "sizeBytes": outcome.size_bytes,
            "sha256": outcome.sha256,
            "resumedFrom": outcome.resumed_from,
            "complete": outcome.complete,
        }

    async def inspect_model(self, _context: RequestContext, params: Params) -> object:
        path = self._model_paths.resolve(params["modelPath"])
        summary = await self._service.inspect(path)
        info: dict[str, object] = {
            "modelPath": path,
            "sizeBytes": summary.size_bytes,
            "architecture": summary.architecture,
            "parameterCount": summary.parameter_count,
            "chatTemplate": summary.has_chat_template,
            "metadata": summary.metadata,
        }
        optional = {
            "name": summary.name,
            "quantization": summary.quantization,
            "trainContextSize": summary.train_context_size,
            "vocabSize": summary.vocab_size,
        }
        info.update({key: value for key, value in optional.items() if value is not None})
        return info

    async def cancel(self, _context: RequestContext, params: Params) -> object:
        return {"cancelled": self._cancel_request(params["requestId"])}

    async def shutdown(self, _context: RequestContext, _params: Params) -> object:
        self._request_shutdown()
        return None

    async def ping(self, _context: RequestContext, _params: Params) -> object:
        return {}


class _Sink(GenerationSink, Protocol):
    """A generation's output, which the stop sequence can also end early."""

    def cut_short(self, received_ns: int) -> GenerationResult:
        """End now, as cancelled, whatever the worker still does; the result to answer with."""


class _WholeReply:
    """``prompt`` returns the text whole; nothing is sent while it is generated."""

    __slots__ = ("_pieces", "_result")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._result: GenerationResult | None = None

    def text(self, piece: str) -> None:
        self._pieces.append(piece)

    def end(self, result: GenerationResult | None) -> None:
        self._result = result

    def cut_short(self, received_ns: int) -> GenerationResult:
        return self._result or _cut_short(self._pieces, received_ns)


class _LoadProgress:
    """Sends a loadModel's ``loadProgress``: increasing by a percentage point or more, and 1 once loaded.

    llama.cpp reports after every tensor (thousands in a large model); a host's
    progress bar needs no finer steps than a percent, so a load sends at most 102.
    """

    __slots__ = ("_context", "_last_value")
    STEP = 0.01

    def __init__(self, context: RequestContext) -> None:
        self._context = context
        self._last_value = -1.0

    def __call__(self, value: float) -> None:
        # 1 (the model is ready) is always sent; anything else only a step past the last one
        if value < self._last_value + self.STEP and not (value >= 1.0 > self._last_value):
            return
        self._last_value = value
        self._context.notify("loadProgress", {"requestId": self._context.request_id, "progress": value})


class _ChunkStream:
    """Numbers and sends the ``streamChunk`` notifications of one promptStream.

    The worker thread sends the chunks; the event loop may end the stream early
    (``cut_short``): a lock orders the two, and nothing is sent after the final chunk.
    """

    __slots__ = ("_context", "_ended", "_index", "_lock", "_pieces", "_result")

    def __init__(self, context: RequestContext) -> None:
        self._context = context
        self._index = 0
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._ended = False
        self._result: GenerationResult | None = None

    def text(self, piece: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._pieces.append(piece)
            self._send({"content": piece, "isFinal": False})

    def end(self, result: GenerationResult | None) -> None:
        with self._lock:
            if not self._ended:
                self._end(result)

    def cut_short(self, received_ns: int) -> GenerationResult:
        with self._lock:
            if not self._ended:
                self._end(_cut_short(self._pieces, received_ns))
            if self._result is None:  # it ended with an error, which took its answer along
                raise RequestCancelled("The sidecar stopped before this request could finish.")
            return self._result

    def _end(self, result: GenerationResult | None) -> None:
        self._ended, self._result = True, result
        if result is None:
            self._send({"content": "", "isFinal": True, "finishReason": "error"})
            return
        ending = {"finishReason": result.finish_reason, "usage": _usage(result), "timings": _timings(result)}
        self._send({"content": "", "isFinal": True, **ending})

    def _send(self, fields: dict[str, Any]) -> None:
        self._context.notify(
            "streamChunk",
            {
                "requestId": self._context.request_id,
                "index": self._index,
                "timestamp": time.time_ns() // 1_000_000,
                **fields,
            },
        )
        self._index += 1


def _cut_short(pieces: list[str], received_ns: int) -> GenerationResult:
    """The result of a prompt the stop sequence ended: the text so far, counted as far as known.

    Each piece took at least one generated token; the prompt's tokens are not known here.
    """
    sent = list(pieces)  # the worker may still append
    return GenerationResult(
        text="".join(sent),
        finish_reason="cancelled",
        prompt_tokens=0,
        completion_tokens=len(sent),
        timings=Timings(round((time.monotonic_ns() - received_ns) / 1e6, 3), 0.0, 0.0, 0.0),
    )


def _unbroken(refused: UnbrokenText, field: str) -> InvalidParams:
    """The wire's words for a text the model's tokenizer would take too long over."""
    return InvalidParams(
        f"Invalid params: '{field}' holds {refused.length} characters in a row with no space "
        f"after a non-space character; the model's tokenizer takes at most {refused.limit} so.",
        {"field": field},
    )


def _cancel_check(context: RequestContext) -> Callable[[], bool]:
    """A check of the request's cancel token, for the layers below (callable from any thread)."""
    token = context.cancel_token

    def cancelled() -> bool:
        return token.cancelled

    return cancelled


def _generation_request(params: Params) -> GenerationRequest:
    messages = params.get("messages")
    return GenerationRequest(
        model_id=params.get("modelId"),
        prompt=params.get("prompt"),
        messages=tuple(ChatMessage(m["role"], m["content"]) for m in messages)
        if messages is not None
        else None,
        session_id=params.get("sessionId"),
        text=params.get("text"),
        max_tokens=params.get("maxTokens"),
        temperature=params.get("temperature", 0.8),
        top_k=params.get("topK", 40),
        top_p=params.get("topP", 0.95),
        min_p=params.get("minP", 0.05),
        repeat_penalty=params.get("repeatPenalty", 1.0),
        seed=params.get("seed"),
        stop=tuple(params.get("stop", ())),
        grammar=params.get("grammar"),
        json_schema=params.get("jsonSchema"),
    )


def _session_info(session: Session) -> dict[str, object]:
    info: dict[str, object] = {
        "sessionId": session.session_id,
        "modelId": session.model_id,
        "contextSize": session.context_size,
        "messages": [{"role": m.role, "content": m.content} for m in session.messages],
        "droppedMessages": session.dropped_messages,
    }
    if session.system_prompt is not None:
        info["systemPrompt"] = session.system_prompt
    return info


def _result(result: GenerationResult) -> dict[str, object]:
    return {
        "text": result.text,
        "finishReason": result.finish_reason,
        "usage": _usage(result),
        "timings": _timings(result),
    }


def _usage(result: GenerationResult) -> dict[str, int]:
    return {"promptTokens": result.prompt_tokens, "completionTokens": result.completion_tokens}


def _timings(result: GenerationResult) -> dict[str, float]:
    timings = result.timings
    return {
        "ttftMs": timings.ttft_ms,
        "promptMs": timings.prompt_ms,
        "decodeMs": timings.decode_ms,
        "tokensPerSecond": timings.tokens_per_second,
    }


def _same_major(requested: str, supported: str) -> bool:
    return _VERSION.fullmatch(requested) is not None and requested.split(".")[0] == supported.split(".")[0]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _backend_info(backend: CpuBackend) -> dict[str, object]:
    return {
        "variant": backend.variant,
        "library": backend.library,
        "features": list(backend.features),
        "bufferTypes": list(backend.buffer_types),
        "leftOut": [{"bufferType": item.buffer_type, "reason": item.reason} for item in backend.left_out],
        "build": backend.build,
        "buildId": backend.build_id,
    }
