"""Context size choice and the memory check that runs before llama.cpp allocates."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.engine.budget import available_memory, check_memory, context_size_for, kv_cache_bytes
from sidecar.engine.gguf_header import GgufHeaderError, read_header, read_metadata
from sidecar.errors import InvalidParams

from .harness import RawSidecar

# SmolLM2-135M's shape: 30 layers, width 576, 9 heads of which 3 for keys and values.
SMOL = {
    "general.architecture": "llama",
    "llama.context_length": 8192,
    "llama.block_count": 30,
    "llama.embedding_length": 576,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
}


def test_default_is_the_training_context_capped_and_rounded() -> None:
    assert context_size_for(SMOL, None) == 4096
    assert context_size_for({**SMOL, "llama.context_length": 1000}, None) == 1024
    assert context_size_for(SMOL, 300) == 512


def test_beyond_the_training_context_is_refused() -> None:
    with pytest.raises(InvalidParams) as raised:
        context_size_for(SMOL, 8193)
    assert raised.value.data == {"field": "contextSize"} and "8192" in raised.value.message


def test_kv_cache_size_follows_the_model_shape() -> None:
    # 8192 tokens x 30 layers x 3 kv heads x (64 + 64) dims x 2 bytes = 180 MiB
    assert kv_cache_bytes(SMOL, 8192) == 8192 * 30 * 3 * 128 * 2
    assert kv_cache_bytes({"general.architecture": "llama"}, 8192) is None


def test_a_context_that_does_not_fit_in_memory_is_refused() -> None:
    check_memory(SMOL, 8192, 10**9)
    with pytest.raises(InvalidParams) as raised:
        check_memory(SMOL, 8192, 10**8)
    assert "GiB" in raised.value.message and raised.value.data == {"field": "contextSize"}


def test_available_memory_is_read_on_linux() -> None:
    available = available_memory()
    assert available is None or available > 10**8


def test_header_reader_reads_metadata_and_rejects_non_gguf(tiny_model: Path, tmp_path: Path) -> None:
    metadata = read_metadata(str(tiny_model))
    assert metadata["general.architecture"] == "llama" and metadata["llama.context_length"] == 2048
    assert "tokenizer.ggml.tokens" not in metadata  # arrays are left out unless asked for
    header = read_header(
        str(tiny_model), read_arrays=frozenset({"tokenizer.ggml.tokens"}), count_parameters=True
    )
    assert (
        header.array_lengths["tokenizer.ggml.tokens"] == 391 == len(header.metadata["tokenizer.ggml.tokens"])
    )  # type: ignore[arg-type]
    assert header.parameter_count == 132_288  # 391x64 x2 + 64 + 2 layers x (4x64x64 + 3x128x64 + 2x64)
    for content in (b"", b"GGUF", b"GGML" + bytes(20), tiny_model.read_bytes()[:300]):
        (tmp_path / "bad.gguf").write_bytes(content)
        with pytest.raises(GgufHeaderError):
            read_metadata(str(tmp_path / "bad.gguf"))


def test_load_beyond_training_context_is_refused_end_to_end(sidecar: RawSidecar, tiny_model: Path) -> None:
    error = sidecar.error("loadModel", {"modelPath": str(tiny_model), "contextSize": 4096})
    assert error["code"] == -32602 and error["data"] == {"field": "contextSize"}
    assert sidecar.request("listModels") == {"models": []}
