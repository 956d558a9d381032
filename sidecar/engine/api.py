"""The engine contract: what the service needs from an inference backend.

Plain records and ``Protocol`` classes, no imports of ``llama_cpp``. The
llama.cpp adapter (``sidecar.engine.llamacpp``) implements them; tests of the
layers above may use a fake. Nothing here knows JSON-RPC or the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "ChatMessage",
    "ContextSnapshot",
    "CpuBackend",
    "Engine",
    "EngineModel",
    "FinishReason",
    "GenerationOutcome",
    "LeftOut",
    "LoadOptions",
    "LoadProgress",
    "ModelFacts",
    "ModelSummary",
    "RenderedChat",
    "SamplingOptions",
    "StopCheck",
    "UnbrokenText",
]

FinishReason = Literal["stop", "length", "cancelled"]
StopCheck = Callable[[], bool]
LoadProgress = Callable[[float], None]  # 0 to 1, as the engine reads the model's weights


class UnbrokenText(Exception):
    """A text holds a stretch longer than the tokenizer takes in one go, with no place to cut it.

    ``length`` is that stretch's (or the text's) length in characters, ``limit``
    the longest the model's tokenizer takes; ``index`` which of several texts it
    was (an embed input), when the engine knows.
    """

    def __init__(self, length: int, limit: int, index: int | None = None) -> None:
        super().__init__(f"{length} characters with no place to cut; at most {limit}")
        self.length, self.limit, self.index = length, limit, index


@dataclass(slots=True, frozen=True)
class LoadOptions:
    """How to load a model; ``None`` means the engine's default."""

    context_size: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    batch_size: int | None = None
    use_mmap: bool | None = None
    flash_attention: bool | None = None  # None: llama.cpp decides (on where the backend supports it)


@dataclass(slots=True, frozen=True)
class LeftOut:
    """A buffer type the engine kept models out of, and why."""

    buffer_type: str
    reason: str


@dataclass(slots=True, frozen=True)
class CpuBackend:
    """The CPU backend models in this process run on (one per process)."""

    variant: str | None  # "zen4", "haswell", …; None when the build links its CPU backend in
    library: str | None  # the file it was loaded from, where the platform can tell
    features: tuple[str, ...]  # what the backend was compiled for (AVX2, AVX512, AMX_INT8, …)
    buffer_types: tuple[str, ...]  # extra buffer types weights may be placed in (AMX, CPU_REPACK)
    left_out: tuple[LeftOut, ...]
    build: str  # "portable" or "native" (the project's own build), or "other"
    build_id: str | None


@dataclass(slots=True, frozen=True)
class ModelFacts:
    """What a loaded model is, as reported to the host."""

    context_size: int
    train_context_size: int
    vocab_size: int
    size_bytes: int
    architecture: str
    name: str | None
    has_chat_template: bool
    backend: CpuBackend | None = None  # None where the engine cannot tell


@dataclass(slots=True, frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(slots=True, frozen=True)
class SamplingOptions:
    """How to pick tokens and when to stop; ``max_tokens=None`` fills the context."""

    seed: int
    max_tokens: int | None = None
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF the reply must follow


@dataclass(slots=True, frozen=True)
class GenerationOutcome:
    """How a generation ended and what it cost."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_ns: int  # start of generation -> first token sampled (prompt processing)
    decode_ns: int  # first token -> last token
    tokens: tuple[int, ...] = ()  # the tokens generated, an end-of-generation token not included
    cut_by_stop_string: bool = False  # "stop" because a stop string appeared, not an end-of-generation token


@dataclass(slots=True, frozen=True)
class RenderedChat:
    """Messages rendered with a model's chat template, before tokenization."""

    text: str
    stops: tuple[str, ...]  # the template's own stop strings
    add_bos: bool  # whether tokenizing ``text`` adds the model's BOS (the template may write it)


@dataclass(slots=True, frozen=True)
class ContextSnapshot:
    """A model's evaluated tokens and their KV cache, saved to be restored on the same model."""

    tokens: tuple[int, ...]
    kv_state: bytes


class EngineModel(Protocol):
    """One loaded model. Never called from two threads at once."""

    @property
    def facts(self) -> ModelFacts: ...

    def chat_prompt(
        self, messages: Sequence[ChatMessage], *, should_stop: StopCheck = ..., limit: int | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        """Tokens of ``messages`` rendered with the model's own chat template, and its stop strings.

        ``should_stop`` and ``limit`` as for ``tokenize``.
        """
        ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> RenderedChat:
        """``messages`` rendered with the model's chat template, generation prompt appended."""
        ...

    def tokenize(
        self,
        text: str,
        *,
        add_bos: bool = True,
        special: bool = True,
        should_stop: StopCheck = ...,
        limit: int | None = None,
    ) -> list[int]:
        """Tokens of ``text``, the same as the whole text tokenized at once.

        ``add_bos`` applies the model's beginning-of-sequence rule; ``special``
        reads control-token text (``<|im_start|>``) as the control token. A long
        text is tokenized in pieces: ``should_stop`` is polled between them
        (``RequestCancelled`` when it turns true), and with ``limit`` tokenizing
        ends once more than ``limit`` tokens are made (the list is then longer than
        ``limit``, and not necessarily the whole text's). Text the tokenizer cannot
        take in bounded time is refused with ``TextTooHard``.
        """
        ...

    def detokenize(
        self, tokens: Sequence[int], *, special: bool = False, continuation: bool = False
    ) -> bytes:
        """The bytes of ``tokens``; ``special`` renders control tokens as their text.

        As text on its own, the space a SentencePiece vocabulary puts before the first
        word is dropped; with ``continuation`` (the tokens follow other text, as a reply
        follows its prompt) the bytes are exactly the tokens' pieces joined.
        """
        ...

    def grammar_for(self, gbnf: str | None, json_schema: dict[str, object] | None) -> str | None:
        """The checked GBNF for a request, or ``InvalidParams`` saying why it cannot be used."""
        ...

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingOptions,
        on_text: Callable[[str], None],
        should_stop: StopCheck,
    ) -> GenerationOutcome:
        """Generate, calling ``on_text`` with each complete UTF-8 piece.

        ``should_stop`` is polled between tokens and during prompt processing;
        when it turns true the outcome is ``cancelled``.
        """
        ...

    def embed(
        self, texts: Sequence[str], *, normalize: bool, should_stop: StopCheck = ...
    ) -> tuple[list[list[float]], int]:
        """One vector per text (pooled as the model says, else the mean of its tokens); tokens read.

        ``should_stop`` is polled between inputs and during llama.cpp's decode (``RequestCancelled``).
        """
        ...

    def save_context(self) -> ContextSnapshot:
        """The tokens the model's context holds now, with their KV cache."""
        ...

    def restore_context(self, snapshot: ContextSnapshot) -> None:
        """Put a snapshot back: a prompt that starts with its tokens evaluates only the rest."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class ModelSummary:
    """What a model file is, read from its header without loading it."""

    size_bytes: int
    architecture: str
    name: str | None
    parameter_count: int
    quantization: str | None
    train_context_size: int | None
    vocab_size: int | None
    has_chat_template: bool
    metadata: dict[str, str | int | float | bool]  # scalar header values; arrays and long strings left out


class Engine(Protocol):
    """Loads and inspects models."""

    def load(
        self,
        path: str,
        options: LoadOptions,
        *,
        progress: LoadProgress | None = None,
        should_stop: StopCheck | None = None,
    ) -> EngineModel:
        """Load the file at ``path``; raise ``ModelLoadFailed`` with llama.cpp's reason.

        ``progress`` is called on the loading thread as the weights are read;
        when ``should_stop`` turns true the load is abandoned, what it took is
        freed, and ``RequestCancelled`` is raised.
        """
        ...

    def inspect(self, path: str) -> ModelSummary:
        """Describe the file at ``path`` from its header; fast on multi-GB files."""
        ...
