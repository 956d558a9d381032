"""The llama.cpp adapter: the only module that imports ``llama_cpp``.

Registers llama.cpp's CPU backend once (``backends`` picks the variant), loads
GGUF files, renders chat templates, tokenizes long texts in pieces that give the
whole text's tokens (``pieces`` says where a cut may fall), and runs the token
loop with cancellation (between tokens, and during prompt processing and
embedding through llama.cpp's abort callback).
llama.cpp's own log lines go to the stderr log and its error lines become the
reason of a failed load. It knows nothing of JSON-RPC, request ids, queues or
which thread calls it (the service makes sure one model is used by one thread at
a time).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
import llama_cpp
import orjson
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from ..errors import (
    ContextOverflow,
    GenerationFailed,
    InvalidParams,
    ModelFileNotFound,
    ModelLoadFailed,
    RequestCancelled,
)
from .api import (
    ChatMessage,
    ContextSnapshot,
    CpuBackend,
    FinishReason,
    GenerationOutcome,
    LoadOptions,
    LoadProgress,
    ModelFacts,
    ModelSummary,
    RenderedChat,
    SamplingOptions,
    StopCheck,
    UnbrokenText,
)
from .backends import choose_cpu_backend
from .budget import available_memory, check_memory, context_size_for, kv_cache_bytes
from .gguf_checks import TOKENS_KEY, read_checked_metadata
from .gguf_header import GgufHeaderError, read_header
from .grammar import (
    MAX_GRAMMAR_NESTING,
    MAX_RULE_CHAIN,
    grammar_nesting,
    outside_refs,
    parse_error_reason,
    rule_chain,
    stderr_captured,
)
from .pieces import Cutter
from .text import TextAssembler

__all__ = ["LONGEST_STRETCH", "LONGEST_STRETCH_SPM", "LlamaCppEngine", "default_threads"]

log = logging.getLogger("sidecar.llama")

# The embedding context, opened beside the model's on the first embed: the longest
# input it takes. Capped because it is allocated whole (KV cache and a batch of this
# size): 2048 tokens cover a long passage, and the cost stays a fraction of a model's.
EMBED_CONTEXT_SIZE = 2048

# ggml_log_level as llama.cpp defines it today (llama-cpp-python's own table is older).
_LOG_WARN, _LOG_ERROR, _LOG_CONTINUE = 3, 4, 5

_SHORT_TEXT = 256  # longer metadata strings (chat templates, licences) are left out of inspectModel
# general.file_type values, named as llama.cpp names them (LLAMA_FTYPE_MOSTLY_Q4_1 -> "Q4_1").
_FILE_TYPES = {
    value: name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
    for name, value in vars(llama_cpp).items()
    if name.startswith("LLAMA_FTYPE_") and isinstance(value, int)
}

_recent = threading.local()  # per thread: the llama.cpp error lines of the current load


def _never() -> bool:
    return False


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _on_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace").rstrip()
    if level == _LOG_CONTINUE:
        level = getattr(_recent, "level", 0)
    _recent.level = level
    if not line:
        return
    if level == _LOG_ERROR:
        lines: deque[str] | None = getattr(_recent, "lines", None)
        if lines is not None:
            lines.append(line)
        log.error("%s", line)
    elif level == _LOG_WARN:
        log.warning("%s", line)
    else:
        log.debug("%s", line)


llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))

_loading = threading.local()  # per thread: the progress callback and flash attention of its load
_library_model_params = llama_cpp.llama_model_default_params


def _model_params_with_progress() -> llama_cpp.llama_model_params:
    """llama-cpp-python's default model params, plus this thread's load progress callback.

    ``Llama`` has no parameter for llama.cpp's progress callback, but it builds
    its model params by calling this function of the ``llama_cpp.llama_cpp``
    module; replacing it there (once, below) is the one way to set the raw
    callback, which also lets a load be abandoned midway.
    """
    params: llama_cpp.llama_model_params = _library_model_params()
    callback = getattr(_loading, "progress", None)
    if callback is not None:
        params.progress_callback = callback
    return params


llama_cpp.llama_cpp.llama_model_default_params = _model_params_with_progress

_library_init_from_model = llama_cpp.llama_cpp.llama_init_from_model
_FLASH_ATTENTION = {
    None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def _init_context_with_flash_attention(model: Any, params: Any) -> Any:
    """llama-cpp-python's context creation, with this thread's flash-attention choice.

    ``Llama`` takes only a bool (on or off, off by default); llama.cpp's own default,
    AUTO (on where the backend supports it, as llama-server and node-llama-cpp run it),
    can only be set here, on the params it passes to ``llama_init_from_model``. On 2
    cores SmolLM2 then processes a 1,500-token prompt at 445 tokens/s, against 380 off.
    """
    choice = getattr(_loading, "flash_attention", None)
    if choice is not None:
        params.flash_attn_type = choice
    return _library_init_from_model(model, params)


llama_cpp.llama_cpp.llama_init_from_model = _init_context_with_flash_attention


@functools.cache
def cpu_backend() -> CpuBackend:
    """The process's CPU backend, registered on first call (before any model is made)."""
    try:
        return choose_cpu_backend(llama_cpp)
    except RuntimeError as exc:
        raise ModelLoadFailed(f"llama.cpp cannot start: {exc}.", {"reason": str(exc)}) from exc


class LlamaCppEngine:
    """Loads GGUF files with llama-cpp-python."""

    def __init__(self) -> None:
        self._backend = cpu_backend()

    def inspect(self, path: str) -> ModelSummary:
        _check_readable(path)
        try:
            header = read_header(path, count_parameters=True)
        except (GgufHeaderError, OSError) as exc:
            raise ModelLoadFailed(f"Could not read {path}: {exc}.", {"reason": str(exc)}) from exc
        metadata = header.metadata
        architecture = str(metadata.get("general.architecture", "unknown"))
        file_type = metadata.get("general.file_type")
        return ModelSummary(
            size_bytes=os.path.getsize(path),
            architecture=architecture,
            name=_text_field(metadata, "general.name"),
            parameter_count=header.parameter_count or 0,
            quantization=_FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
            train_context_size=_positive(metadata.get(f"{architecture}.context_length")),
            vocab_size=header.array_lengths.get(TOKENS_KEY),
            has_chat_template="tokenizer.chat_template" in metadata,
            metadata={
                key: value
                for key, value in metadata.items()
                # JSON has no NaN or infinity: such a value is left out rather than sent as null.
                if (isinstance(value, int | bool) or (isinstance(value, float) and math.isfinite(value)))
                or (isinstance(value, str) and len(value) <= _SHORT_TEXT)
            },
        )

    def load(
        self,
        path: str,
        options: LoadOptions,
        *,
        progress: LoadProgress | None = None,
        should_stop: StopCheck | None = None,
    ) -> LlamaCppModel:
        progress = progress or _ignore_progress
        should_stop = should_stop or _never
        if should_stop():
            raise RequestCancelled(f"The load of {path} was cancelled.")
        _check_readable(path)
        try:
            header = read_checked_metadata(path)  # refuses what llama.cpp would abort on
        except (GgufHeaderError, OSError) as exc:
            raise ModelLoadFailed(f"Could not load {path}: {exc}.", {"reason": str(exc)}) from exc
        context_size = context_size_for(header, options.context_size)
        check_memory(header, context_size, available_memory())
        common: dict[str, Any] = {
            "model_path": path,
            "n_ctx": context_size,
            "n_threads": options.threads or default_threads(),
            "n_threads_batch": options.threads or default_threads(),
            "n_gpu_layers": options.gpu_layers or 0,
            "use_mmap": True if options.use_mmap is None else options.use_mmap,
        }
        flash_attention = _FLASH_ATTENTION[options.flash_attention]
        llm = _open_llama(common, flash_attention, progress, should_stop, n_batch=options.batch_size or 512)
        try:
            _warm_up(llm)
            if should_stop():  # cancelled after the weights were read: free them all the same
                raise RequestCancelled(f"The load of {path} was cancelled.")
        except BaseException:
            llm.close()
            raise
        # Embeddings need a context made for them: opened on the first embed request.
        pooling = _embedding_pooling(header)
        embed_context = min(context_size, EMBED_CONTEXT_SIZE)

        def open_embedder() -> llama_cpp.Llama:
            if pooling == llama_cpp.LLAMA_POOLING_TYPE_RANK:
                raise InvalidParams(
                    "Invalid params: this model is a reranker (rank pooling); it gives no embeddings.",
                    {"field": "modelId"},
                )
            needed, available = kv_cache_bytes(header, embed_context), available_memory()
            if needed is not None and available is not None and needed > available:
                reason = (
                    f"its {embed_context}-token embedding context needs {needed} bytes; {available} are free"
                )
                raise ModelLoadFailed(f"Could not open {path} for embeddings: {reason}.", {"reason": reason})
            return _open_llama(
                # Mapped even when the model was read into memory (useMmap: false): the
                # pages are then shared with the page cache instead of a second private copy.
                {**common, "n_ctx": embed_context, "use_mmap": True},
                flash_attention,
                _ignore_progress,
                _never,
                embedding=True,
                pooling_type=pooling,
                n_batch=embed_context,  # pooling needs each input whole in one batch
                n_ubatch=embed_context,
            )

        return LlamaCppModel(llm, path, open_embedder, self._backend)


def _embedding_pooling(header: Mapping[str, object]) -> int:
    """How to pool token vectors into one per input: the model's own way, else their mean.

    A model that declares no pooling (one vector per token) gets the mean too:
    ``embed`` promises one vector per input.
    """
    declared = header.get(f"{header.get('general.architecture')}.pooling_type")
    if declared is None or declared == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        return llama_cpp.LLAMA_POOLING_TYPE_MEAN
    return (
        llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        if declared != llama_cpp.LLAMA_POOLING_TYPE_RANK
        else declared
    )


def _open_llama(
    common: dict[str, Any],
    flash_attention: int,
    progress: LoadProgress,
    should_stop: StopCheck,
    **specific: Any,
) -> llama_cpp.Llama:
    """A ``Llama``, or ``ModelLoadFailed`` with llama.cpp's own reason (``RequestCancelled`` if stopped)."""
    path = common["model_path"]

    def on_progress(value: float, _user_data: ctypes.c_void_p) -> bool:
        progress(value)
        return not should_stop()  # false: llama.cpp abandons the load and frees what it read

    _recent.lines = deque(maxlen=8)
    _loading.progress = llama_cpp.llama_progress_callback(on_progress)
    _loading.flash_attention = flash_attention
    try:
        # verbose=True keeps llama-cpp-python from pointing fds 1 and 2 at
        # /dev/null during loads; our log callback decides what is shown.
        return llama_cpp.Llama(**common, **specific, verbose=True)
    except jinja2.TemplateError as exc:
        reason = f"its chat template does not compile: {exc}"
        raise ModelLoadFailed(f"Could not load {path}: {reason}.", {"reason": reason}) from exc
    except (ValueError, RuntimeError, OSError) as exc:
        if should_stop():
            raise RequestCancelled(f"The load of {path} was cancelled.") from exc
        reason = "; ".join(_recent.lines) or str(exc)
        raise ModelLoadFailed(f"llama.cpp could not load {path}: {reason}", {"reason": reason}) from exc
    finally:
        _recent.lines = None
        _loading.progress = None
        _loading.flash_attention = None


def default_threads() -> int:
    """Half the logical CPUs (llama-cpp-python's own default; the physical cores on SMT machines).

    llama.cpp's threads wait for each other at every step, so all cores collapse
    when another process is busy (2 cores, one busy: 32 tokens/s with 2 threads,
    78 with 1); a desktop app always has other work.
    """
    return max((os.cpu_count() or 2) // 2, 1)


def _warm_up(llm: llama_cpp.Llama) -> None:
    """Decode once so the first prompt does not pay for faulting in the weights.

    With mmap the weights reach memory on first touch, and llama.cpp sets up
    its compute buffers on the first decode; both would otherwise land on the
    first prompt's time to first token.
    """
    token = max(llm.token_bos(), 0)  # any valid token: the result is thrown away
    llm.eval([token, token])
    llm.reset()  # type: ignore[no-untyped-call]


class LlamaCppModel:
    """One ``llama_cpp.Llama`` and what the service needs of it."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        path: str,
        open_embedder: Callable[[], llama_cpp.Llama],
        backend: CpuBackend,
    ) -> None:
        self._llm = llm
        self._open_embedder = open_embedder
        self._embedder: llama_cpp.Llama | None = None
        self._vocab = llm._model.vocab
        self._tokenizer = _Tokenizer(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self._stop_requested: StopCheck = _never
        # Keep a reference: llama.cpp holds only the C pointer.
        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._stop_requested())
        self._no_abort_callback = llama_cpp.ggml_abort_callback()
        metadata: dict[str, str] = llm.metadata
        template = metadata.get("tokenizer.chat_template")
        # llama-cpp-python compiled the template already while loading (and refused the load if it could not).
        self._chat = _chat_formatter(llm, template) if template else None
        self._facts = ModelFacts(
            context_size=llm.n_ctx(),
            train_context_size=llm._model.n_ctx_train(),
            vocab_size=llm.n_vocab(),
            size_bytes=os.path.getsize(path),
            architecture=metadata.get("general.architecture", "unknown"),
            name=metadata.get("general.name"),
            has_chat_template=self._chat is not None,
            backend=backend,
        )

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def tokenize(
        self,
        text: str,
        *,
        add_bos: bool = True,
        special: bool = True,
        should_stop: StopCheck = _never,
        limit: int | None = None,
    ) -> list[int]:
        # Straight on the vocabulary, which llama.cpp only reads: the service calls this
        # beside a running generation, which the Llama object itself must not see.
        return self._tokenizer.tokenize(text, add_bos, special, should_stop, limit)

    def detokenize(
        self, tokens: Sequence[int], *, special: bool = False, continuation: bool = False
    ) -> bytes:
        vocab_size = self._facts.vocab_size
        for position, token in enumerate(tokens):
            if not 0 <= token < vocab_size:
                problem = f"'tokens/{position}' is {token}, not a token id (0 to {vocab_size - 1})"
                raise InvalidParams(f"Invalid params: {problem}.", {"field": f"tokens/{position}"})
        if continuation:
            return b"".join(_token_bytes(self._vocab, token, special) for token in tokens)
        return _detokenized(self._vocab, tokens, special)

    def chat_prompt(
        self, messages: Sequence[ChatMessage], *, should_stop: StopCheck = _never, limit: int | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        rendered = self.render_chat(messages)
        tokens = self.tokenize(rendered.text, add_bos=rendered.add_bos, should_stop=should_stop, limit=limit)
        return tokens, rendered.stops

    def render_chat(self, messages: Sequence[ChatMessage]) -> RenderedChat:
        if self._chat is None:
            raise InvalidParams(
                "Invalid params: this model has no chat template; send 'prompt' instead of 'messages'.",
                {"field": "messages"},
            )
        as_dicts: Any = [{"role": m.role, "content": m.content} for m in messages]
        try:
            rendered = self._chat(messages=as_dicts)
        # The template is the model file's code: it refuses some conversations with
        # raise_exception (a ValueError), breaks on others (TypeError, OverflowError, the
        # sandbox's SecurityError). Whatever it raised, the messages are what it refused.
        except Exception as exc:
            raise InvalidParams(
                f"Invalid params: the chat template refused 'messages': {exc}.", {"field": "messages"}
            ) from exc
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return RenderedChat(rendered.prompt, tuple(stops), add_bos=not rendered.added_special)

    def grammar_for(self, gbnf: str | None, json_schema: dict[str, object] | None) -> str | None:
        if json_schema is not None:
            if refs := outside_refs(json_schema):
                raise InvalidParams(
                    f"Invalid params: 'jsonSchema' refers outside itself ({refs[0]!r}); only '#' refs work.",
                    {"field": "jsonSchema"},
                )
            try:
                # allow_fetch is off in this converter: a remote $ref is never fetched.
                gbnf = json_schema_to_gbnf(orjson.dumps(json_schema).decode())
            # The converter reports what it cannot handle with assertions and attribute
            # errors as much as with ValueError; any failure here means "unsupported".
            except Exception as exc:
                raise InvalidParams(
                    f"Invalid params: 'jsonSchema' cannot be turned into a grammar: {exc}.",
                    {"field": "jsonSchema"},
                ) from exc
            field = "jsonSchema"
        else:
            field = "grammar"
        if gbnf is not None:
            self._check_grammar(gbnf, field)
        return gbnf

    def _check_grammar(self, gbnf: str, field: str) -> None:
        """Compile ``gbnf`` once here: llama-cpp-python would pass a failed (null) grammar on and crash."""
        if (nesting := grammar_nesting(gbnf)) > MAX_GRAMMAR_NESTING:
            raise InvalidParams(
                f"Invalid params: '{field}' nests groups {nesting} deep; the limit is {MAX_GRAMMAR_NESTING}.",
                {"field": field},
            )
        if (chain := rule_chain(gbnf)) > MAX_RULE_CHAIN:
            raise InvalidParams(
                f"Invalid params: '{field}' chains {chain} rules, each referring to the next; "
                f"the limit is {MAX_RULE_CHAIN}.",
                {"field": field},
            )
        source = gbnf.encode("utf-8")
        _recent.lines = deque(maxlen=8)
        try:
            with stderr_captured(withhold=source) as printed:  # the parser prints its reason there
                sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, source, b"root")
            reason = (
                parse_error_reason(b"".join(printed).decode("utf-8", "replace"))
                or "; ".join(_recent.lines)
                or "llama.cpp could not parse it"
            )
        finally:
            _recent.lines = None
        if not sampler:
            raise InvalidParams(
                f"Invalid params: '{field}' is not a usable grammar: {reason}.", {"field": field}
            )
        llama_cpp.llama_sampler_free(sampler)

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingOptions,
        on_text: Callable[[str], None],
        should_stop: StopCheck,
    ) -> GenerationOutcome:
        context = self._facts.context_size
        if not prompt_tokens:  # llama.cpp cannot decode nothing
            raise InvalidParams(
                "Invalid params: the prompt has no tokens (an empty text, and the model adds no BOS).",
                {"field": "prompt"},
            )
        if len(prompt_tokens) >= context:
            raise ContextOverflow(
                f"The prompt has {len(prompt_tokens)} tokens; the context holds {context}.",
                {"promptTokens": len(prompt_tokens), "contextSize": context},
            )
        budget = context - len(prompt_tokens)
        if sampling.max_tokens is not None:
            budget = min(budget, sampling.max_tokens)
        assembler = TextAssembler(sampling.stop)
        llm = self._llm
        llm.set_seed(sampling.seed)
        self._stop_requested = should_stop
        llama_cpp.llama_set_abort_callback(llm.ctx, self._abort_callback, None)
        started = time.perf_counter_ns()
        first_token_at = last_token_at = 0
        produced: list[int] = []
        finish: FinishReason = "length"
        tokens = llm.generate(
            prompt_tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            grammar=LlamaGrammar.from_string(sampling.grammar) if sampling.grammar else None,
        )
        try:
            for token in tokens:
                last_token_at = time.perf_counter_ns()
                if not first_token_at:
                    first_token_at = last_token_at
                    # Per-token checks cover decoding; the abort callback runs once per
                    # graph node, too costly to keep while decoding.
                    llama_cpp.llama_set_abort_callback(llm.ctx, self._no_abort_callback, None)
                if should_stop():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                produced.append(token)
                if text := assembler.push(self._piece(token)):
                    on_text(text)
                if assembler.stopped:
                    finish = "stop"
                    break
                if len(produced) >= budget:
                    break
        except RuntimeError as exc:
            if not should_stop():
                raise GenerationFailed(f"llama.cpp failed while generating: {exc}.") from exc
            finish = "cancelled"
        finally:
            tokens.close()
            llama_cpp.llama_set_abort_callback(llm.ctx, self._no_abort_callback, None)
            self._stop_requested = _never
        if tail := assembler.finish():
            on_text(tail)
        end = last_token_at or time.perf_counter_ns()
        return GenerationOutcome(
            finish_reason=finish,
            prompt_tokens=len(prompt_tokens),
            completion_tokens=len(produced),
            prompt_ns=(first_token_at or end) - started,
            decode_ns=end - (first_token_at or end),
            tokens=tuple(produced),
            cut_by_stop_string=assembler.stopped,
        )

    def embed(
        self, texts: Sequence[str], *, normalize: bool, should_stop: StopCheck = _never
    ) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            self._embedder = self._open_embedder()
        embedder = self._embedder
        context = embedder.n_ctx()
        for position, text in enumerate(texts):
            # As llama-cpp-python's embed tokenizes it (BOS, no special tokens), but in pieces.
            try:
                count = len(
                    self.tokenize(text, add_bos=True, special=False, should_stop=should_stop, limit=context)
                )
            except UnbrokenText as refused:
                raise UnbrokenText(refused.length, refused.limit, position) from None
            if count == 0:  # llama.cpp cannot decode nothing (and crashed on it beside other inputs)
                raise InvalidParams(
                    f"Invalid params: 'input/{position}' has no tokens (empty, and the model adds no BOS).",
                    {"field": f"input/{position}"},
                )
            if count > context:
                raise ContextOverflow(
                    f"An input has at least {count} tokens; the context holds {context}.",
                    {"promptTokens": count, "contextSize": context},
                )
        # One input a call: llama-cpp-python decodes one sequence a batch here anyway (its
        # context has one sequence), and between calls a cancel is seen; during one, the
        # abort callback stops llama.cpp's decode.
        vectors: list[list[float]] = []
        tokens = 0
        self._stop_requested = should_stop
        llama_cpp.llama_set_abort_callback(embedder.ctx, self._abort_callback, None)
        try:
            for text in texts:
                if should_stop():
                    raise RequestCancelled("The embedding was cancelled.")
                vector, count = embedder.embed([text], normalize=normalize, truncate=False, return_count=True)
                vectors.extend(vector)
                tokens += count
        except RuntimeError as exc:  # "llama_decode returned 2": aborted
            if should_stop():
                raise RequestCancelled("The embedding was cancelled.") from exc
            raise
        finally:
            llama_cpp.llama_set_abort_callback(embedder.ctx, self._no_abort_callback, None)
            self._stop_requested = _never
        return vectors, tokens

    def save_context(self) -> ContextSnapshot:
        # Sequence 0 only: the KV cache without the logits buffer llama_state_get_data adds
        # (and without llama-cpp-python's save_state, which copies a logits row per batch slot).
        ctx = self._llm.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        tokens = tuple(self._llm.input_ids[: self._llm.n_tokens].tolist())
        return ContextSnapshot(tokens, bytes(memoryview(buffer)[:written]))

    def restore_context(self, snapshot: ContextSnapshot) -> None:
        llm = self._llm
        llm.reset()  # type: ignore[no-untyped-call]
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        size = len(snapshot.kv_state)
        buffer = (ctypes.c_uint8 * size).from_buffer_copy(snapshot.kv_state)
        if llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, size, 0) != size:
            log.warning("a saved context did not restore; the next prompt evaluates it all")
            return
        count = len(snapshot.tokens)
        llm.input_ids[:count] = snapshot.tokens
        llm.n_tokens = count
        # Restored state has no fresh logits: the next prompt decodes at least one token.
        llm._requires_eval = True

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        self._llm.close()

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = _token_bytes(self._vocab, token)
        return piece


# A long text is tokenized a piece at a time, each piece one llama.cpp call, with a cancel
# check and a token count between them. Per MiB of prose: 73 ms on the tiny model's
# vocabulary and 185 ms on SmolLM2's in 2,048-character pieces, as fast as in 8,192; text
# dense with special tokens goes faster in small pieces on SentencePiece (223 -> 45 ms), and
# on SmolLM2's BPE about 1 MiB/s whatever the size (llama.cpp sets its pre-tokenizer up
# again for each text between two special tokens).
_PIECE_CHARS = 2048
# The longest stretch without a cut (engine/pieces.py) tokenized in one call; a longer one
# is refused. SentencePiece's byte fallback is quadratic in one call's tokens (llama.cpp
# grows the output one fallback symbol at a time): 30,000 "日" in a row took 52 ms, 100,000
# took 888 ms, and 16,384 take about 18 ms. llama.cpp's BPE is linear at 2 to 6 MB/s:
# 131,072 characters take at most about 80 ms (spaces, the slowest kind measured).
LONGEST_STRETCH_SPM = 16_384
LONGEST_STRETCH = 131_072
# Token attributes that make llama.cpp read a token's text as that token, before anything else.
_PARSED_ALWAYS = llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
_PARSED_IF_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN


class _Tokenizer:
    """Tokenizes a vocabulary's texts, long ones in pieces that give the whole text's tokens.

    Where a cut may fall depends on the vocabulary (its special tokens, and for
    SentencePiece the tokens holding a character then "▁"): found on the first
    long text, by reading every token once (35 ms for SmolLM2's 49,152).
    """

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        kind = llama_cpp.llama_vocab_type(vocab)
        self._spm = kind == llama_cpp.LLAMA_VOCAB_TYPE_SPM
        # Vocabularies cut into pieces: SentencePiece and BPE, whose tokenizers the cuts were
        # checked against, and only when adding specials adds no EOS after the last piece.
        self._cuts = kind in (llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE) and not (
            llama_cpp.llama_vocab_get_add_eos(vocab)
        )
        self.longest_stretch = LONGEST_STRETCH_SPM if self._spm else LONGEST_STRETCH
        self.piece_chars = _PIECE_CHARS  # tests make it tiny, to cut wherever a cut is allowed
        self._cutters: dict[bool, Cutter] = {}  # by ``special``
        self._space_prefix = False
        self._lock = threading.Lock()  # the first long text may come on two threads at once

    def tokenize(
        self, text: str, add_bos: bool, special: bool, should_stop: StopCheck, limit: int | None
    ) -> list[int]:
        if len(text) <= self.piece_chars:
            return self._call(text, add_bos, special)
        if should_stop():
            raise RequestCancelled("Tokenizing was cancelled.")
        if not self._cuts:
            if len(text) > self.longest_stretch:
                raise UnbrokenText(len(text), self.longest_stretch)
            return self._call(text, add_bos, special)
        cutter = self._cutter(special)
        tokens: list[int] = []
        for index, (piece, after_space) in enumerate(cutter.pieces(text, self.piece_chars)):
            if index and should_stop():
                raise RequestCancelled("Tokenizing was cancelled.")
            if (
                len(piece) > self.longest_stretch
                and (stretch := cutter.longest_without_cut(piece)) > self.longest_stretch
            ):
                raise UnbrokenText(stretch, self.longest_stretch)
            # SentencePiece puts "▁" before a call's text (and after a special token): a piece
            # that starts at a space cut starts with the space that "▁" stands for.
            text_of_piece = piece[1:] if after_space and self._space_prefix else piece
            tokens += self._call(text_of_piece, add_bos and not index, special)
            if limit is not None and len(tokens) > limit:
                break
        return tokens

    def _call(self, text: str, add_special: bool, special: bool) -> list[int]:
        source = text.encode("utf-8")
        size = len(source) + 4  # about a token per byte at most; a short count says how many
        while True:
            ids = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(
                self._vocab, source, len(source), ids, size, add_special, special
            )
            if count >= 0:
                return list(ids[:count])
            size = -count

    def _cutter(self, special: bool) -> Cutter:
        with self._lock:
            if not self._cutters:
                self._learn_the_vocabulary()
            return self._cutters[special]

    def _learn_the_vocabulary(self) -> None:
        """Where cuts may fall, for each way of reading special tokens (``special`` or not)."""
        # SentencePiece vocabularies that put "▁" before a call's text (most do): found out.
        self._space_prefix = self._spm and _token_bytes(
            self._vocab, self._call("a", False, False)[0]
        ).startswith(b" ")
        after: dict[bool, set[str]] = {False: set(), True: set()}
        before: dict[bool, set[str]] = {False: set(), True: set()}
        specials: dict[bool, dict[str, int]] = {False: {}, True: {}}  # text -> attributes
        for token in range(llama_cpp.llama_vocab_n_tokens(self._vocab)):
            attributes = llama_cpp.llama_vocab_get_attr(self._vocab, token)
            text = llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")
            if attributes & (_PARSED_ALWAYS | _PARSED_IF_SPECIAL) and text:
                for special in (True, False) if attributes & _PARSED_ALWAYS else (True,):
                    specials[special][text] = attributes
            elif self._spm:
                # A token across "x▁" would span a cut before the space that "▁" stands for.
                joined = {text[i - 1] for i in range(1, len(text)) if text[i] == "▁" and text[i - 1] != "▁"}
                after[True] |= joined
                after[False] |= joined
        for special in (True, False):
            cut_before = []
            for text, attributes in specials[special].items():
                # A space cut never splits a special token, nor takes the whitespace after one
                # that strips it; with the prefix "▁" after a special token, never right after one.
                after[special] |= {text[i - 1] for i in range(1, len(text)) if text[i] == " "}
                if attributes & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP or self._space_prefix:
                    after[special].add(text[-1])
                if self._space_prefix:
                    # " <special>": the space stands alone before it in the whole text.
                    before[special].add(text[0])
                # A cut before a special token, unless it strips the whitespace before it or
                # could be the inside of another one.
                inside_another = any(text in other[1:] for other in specials[special] if other != text)
                if not attributes & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP and not inside_another:
                    cut_before.append(text)
            self._cutters[special] = Cutter(after[special], before[special], cut_before)


def _token_bytes(vocab: Any, token: int, special: bool = False) -> bytes:
    """The bytes of one token, however long (llama-cpp-python's helper caps at 32)."""
    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, special)
        if written >= 0:
            return buffer.raw[:written]
        size = -written


def _detokenized(vocab: Any, tokens: Sequence[int], special: bool) -> bytes:
    """``tokens`` as text the way llama.cpp's own detokenizer (and server) gives it.

    Unlike joining the pieces, it drops the space a SentencePiece vocabulary puts
    before the first word, so tokenize then detokenize gives the text back.
    """
    ids = (llama_cpp.llama_token * len(tokens))(*tokens)
    size = max(64, 8 * len(tokens))
    while True:
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_detokenize(vocab, ids, len(tokens), buffer, size, False, special)
        if written >= 0:
            return buffer.raw[:written]
        size = -written


def _chat_formatter(llm: llama_cpp.Llama, template: str) -> Jinja2ChatFormatter:
    def token_text(token: int) -> str:
        return llm._model.token_get_text(token) if token >= 0 else ""

    return Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
        stop_token_ids=[llm.token_eos()],
    )


def _check_readable(path: str) -> None:
    """Refuse what is not a readable regular file before anything opens it.

    A FIFO or device (``/dev/stdin``, ``/dev/zero``) would block or feed endless
    bytes, and ``/dev/stdin`` would even consume the protocol's own input.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelFileNotFound(f"Model file not found: {path}", {"modelPath": path}) from None
    except OSError as exc:
        raise ModelLoadFailed(
            f"Could not load {path}: {exc.strerror}.", {"reason": str(exc.strerror)}
        ) from exc
    if stat.S_ISDIR(mode):
        raise ModelLoadFailed(f"Could not load {path}: it is a directory.", {"reason": "is a directory"})
    if not stat.S_ISREG(mode):
        raise ModelLoadFailed(f"Could not load {path}: not a regular file.", {"reason": "not a regular file"})
    if not os.access(path, os.R_OK):
        raise ModelLoadFailed(f"Could not load {path}: permission denied.", {"reason": "permission denied"})


def _text_field(metadata: dict[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _ignore_progress(_value: float) -> None:
    pass
