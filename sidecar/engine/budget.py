"""Choosing a context size and checking it fits, before llama.cpp allocates anything.

Pure arithmetic on GGUF metadata: the context defaults to the training
context (capped), is rounded to what llama.cpp really allocates, and is refused
when it exceeds the training context or its KV cache would not fit in the
memory available now. Knows GGUF metadata keys, not llama.cpp's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import InvalidParams

__all__ = ["DEFAULT_CONTEXT_SIZE", "available_memory", "check_memory", "context_size_for", "kv_cache_bytes"]

DEFAULT_CONTEXT_SIZE = 4096
# llama.cpp rounds n_ctx up to a multiple of 256 but llama-cpp-python sizes its
# token buffer from the value passed; passing a multiple keeps the two equal.
_CONTEXT_GRANULE = 256
_F16_BYTES = 2
_GIB = 1024**3


def context_size_for(metadata: Mapping[str, object], requested: int | None) -> int:
    """The context size to allocate for a ``loadModel`` asking for ``requested`` tokens."""
    train = _field(metadata, "context_length")
    if requested is not None and train is not None and requested > train:
        message = f"'contextSize' {requested} exceeds the model's training context of {train} tokens"
        raise InvalidParams(f"Invalid params: {message}.", {"field": "contextSize"})
    size = requested or min(train or DEFAULT_CONTEXT_SIZE, DEFAULT_CONTEXT_SIZE)
    return -(-size // _CONTEXT_GRANULE) * _CONTEXT_GRANULE


def kv_cache_bytes(metadata: Mapping[str, object], context_size: int) -> int | None:
    """Bytes of the f16 KV cache for ``context_size`` tokens, or None if the metadata cannot tell."""
    layers = _field(metadata, "block_count")
    width = _field(metadata, "embedding_length")
    heads = _field(metadata, "attention.head_count")
    if layers is None or width is None or heads is None:
        return None
    kv_heads = _field(metadata, "attention.head_count_kv") or heads
    key = _field(metadata, "attention.key_length") or width // heads
    value = _field(metadata, "attention.value_length") or width // heads
    return context_size * layers * kv_heads * (key + value) * _F16_BYTES


def check_memory(metadata: Mapping[str, object], context_size: int, available: int | None) -> None:
    """Refuse a context whose KV cache alone would not fit in ``available`` bytes."""
    needed = kv_cache_bytes(metadata, context_size)
    if needed is None or available is None or needed <= available:
        return
    raise InvalidParams(
        f"Invalid params: 'contextSize' {context_size} needs about {needed / _GIB:.1f} GiB for its KV cache; "
        f"{available / _GIB:.1f} GiB of memory are available.",
        {"field": "contextSize"},
    )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _field(metadata: Mapping[str, object], key: str) -> int | None:
    value = metadata.get(f"{metadata.get('general.architecture')}.{key}")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
