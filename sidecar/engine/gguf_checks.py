"""Refuse GGUF metadata that llama.cpp would abort on, before it sees the file.

llama.cpp reports most bad files as errors, but checks some fields with
assertions (``GGML_ASSERT``) that abort the whole process: a layer count of 0 or
over 512, more than 1,024 experts, more experts used than there are, an unknown
pooling or RoPE scaling type, a vocabulary that lists a token twice, byte tokens
in a WordPiece vocabulary. Each was seen to kill the sidecar with SIGABRT
(llama-cpp-python 0.3.36); the limits are llama.cpp's ``LLAMA_MAX_LAYERS`` and
``LLAMA_MAX_EXPERTS``. This module reads the header and applies those rules; it
knows GGUF keys, not llama.cpp's API.
"""

from __future__ import annotations

from collections.abc import Mapping

from .gguf_header import GgufHeader, GgufHeaderError, MetadataValue, read_header

__all__ = ["MAX_EXPERTS", "MAX_LAYERS", "TOKENS_KEY", "check_metadata", "read_checked_metadata"]

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: per-layer values live in arrays of this size
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS in the llama.cpp that llama-cpp-python 0.3.36 bundles
# llama_pooling_type: none, mean, cls, last, rank (-1, "unspecified", is not stored in files).
_POOLING_TYPES = range(5)
_ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
TOKENS_KEY = "tokenizer.ggml.tokens"
_TOKEN_TYPES = "tokenizer.ggml.token_type"
_TOKENIZER = "tokenizer.ggml.model"
_WORDPIECE = "bert"
_BYTE_TOKEN = 6  # llama_token_type LLAMA_TOKEN_TYPE_BYTE
# Hyperparameters a model may give per layer, as an array: read for the checks here
# and for the KV cache estimate (budget.py).
_PER_LAYER = ("attention.head_count", "attention.head_count_kv", "expert_used_count")


def read_checked_metadata(path: str) -> dict[str, MetadataValue]:
    """The metadata a load needs (the vocabulary and per-layer arrays too), checked by ``check_metadata``.

    Raises:
        GgufHeaderError: the header is unreadable, or llama.cpp would abort on it; the message says why.
    """
    header = read_header(path, read_arrays=frozenset({TOKENS_KEY}))
    arrays = _arrays_to_check(header)
    if arrays:  # rare: read the header again, with those arrays this time
        header = read_header(path, read_arrays=arrays | {TOKENS_KEY})
    check_metadata(header.metadata)
    return header.metadata


def check_metadata(metadata: Mapping[str, MetadataValue]) -> None:
    """Raise ``GgufHeaderError`` naming the first field llama.cpp would abort on.

    A field of a type llama.cpp does not expect is left alone: llama.cpp refuses
    that with an error of its own.
    """
    prefix = f"{metadata.get('general.architecture')}."
    _check_vocabulary(metadata)
    _check_layers(metadata, prefix)
    _check_experts(metadata, prefix)
    pooling = _integer(metadata, prefix + "pooling_type", None)
    _require(pooling is None or pooling in _POOLING_TYPES, prefix + "pooling_type", pooling, "0 to 4")
    rope = metadata.get(prefix + "rope.scaling.type")
    needed = "one of " + ", ".join(_ROPE_SCALING_TYPES)
    _require(
        not isinstance(rope, str) or rope in _ROPE_SCALING_TYPES, prefix + "rope.scaling.type", rope, needed
    )


def _arrays_to_check(header: GgufHeader) -> frozenset[str]:
    """The arrays the checks read besides the vocabulary: per-layer values, a WordPiece vocabulary's types."""
    wanted = {f"{header.metadata.get('general.architecture')}.{key}" for key in _PER_LAYER}
    if header.metadata.get(_TOKENIZER) == _WORDPIECE:
        wanted.add(_TOKEN_TYPES)
    arrays = frozenset(wanted & header.array_lengths.keys())
    for key in arrays - {_TOKEN_TYPES}:
        if header.array_lengths[key] > MAX_LAYERS:  # llama.cpp refuses it too, after reading it whole
            raise GgufHeaderError(f"{key} lists {header.array_lengths[key]} layers, more than {MAX_LAYERS}")
    return arrays


def _check_vocabulary(metadata: Mapping[str, MetadataValue]) -> None:
    tokens = metadata.get(TOKENS_KEY)
    if isinstance(tokens, list) and len(set(tokens)) != len(tokens):
        raise GgufHeaderError("the vocabulary lists a token twice")
    # llama.cpp decodes byte tokens for SentencePiece vocabularies only; a WordPiece one aborts.
    types = metadata.get(_TOKEN_TYPES)
    if metadata.get(_TOKENIZER) == _WORDPIECE and isinstance(types, list) and _BYTE_TOKEN in types:
        raise GgufHeaderError(
            f"the {_WORDPIECE!r} (WordPiece) vocabulary has byte tokens, which llama.cpp cannot decode"
        )


def _check_layers(metadata: Mapping[str, MetadataValue], prefix: str) -> None:
    layers = _integer(metadata, prefix + "block_count", None)
    if layers is None:  # required: llama.cpp says so itself
        return
    _require(1 <= layers <= MAX_LAYERS, prefix + "block_count", layers, f"1 to {MAX_LAYERS}")
    nextn = _integer(metadata, prefix + "nextn_predict_layers", 0)
    _require(nextn is None or nextn <= layers, prefix + "nextn_predict_layers", nextn, f"at most {layers}")


def _check_experts(metadata: Mapping[str, MetadataValue], prefix: str) -> None:
    """Mixture-of-experts counts: llama.cpp asserts each of these after reading them."""
    experts = _integer(metadata, prefix + "expert_count", 0)
    used = _integer(metadata, prefix + "expert_used_count", 0)  # per layer: the largest
    groups = _integer(metadata, prefix + "expert_group_count", 0)
    groups_used = _integer(metadata, prefix + "expert_group_used_count", 0)
    if experts is None or used is None or groups is None or groups_used is None:
        return
    _require(experts <= MAX_EXPERTS, prefix + "expert_count", experts, f"at most {MAX_EXPERTS}")
    _require(used <= experts, prefix + "expert_used_count", used, f"at most expert_count ({experts})")
    if experts == 0:
        _require(groups == 0, prefix + "expert_group_count", groups, "0 without experts")
        return
    _require(used > 0, prefix + "expert_used_count", used, f"at least 1 with {experts} experts")
    _require(groups < experts, prefix + "expert_group_count", groups, f"fewer than expert_count ({experts})")
    if groups > 1:
        _require(
            experts % groups == 0,
            prefix + "expert_group_count",
            groups,
            f"a divisor of expert_count ({experts})",
        )
        _require(
            0 < groups_used < groups, prefix + "expert_group_used_count", groups_used, f"1 to {groups - 1}"
        )


def _integer(metadata: Mapping[str, MetadataValue], key: str, default: int | None) -> int | None:
    """An integer field (per layer: its largest value), ``default`` if absent, None if not integers."""
    value = metadata.get(key)
    if value is None:
        return default
    values = value if isinstance(value, list) else [value]
    integers = [item for item in values if isinstance(item, int) and not isinstance(item, bool)]
    return max(integers) if integers and len(integers) == len(values) else None


def _require(holds: bool, key: str, value: object, needed: str) -> None:
    if not holds:
        raise GgufHeaderError(f"{key} is {value}; llama.cpp needs {needed}")
