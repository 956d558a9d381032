"""Context size choice and the memory check that runs before llama.cpp allocates."""

from __future__ import annotations

import ctypes
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from sidecar.engine import budget, llamacpp
from sidecar.engine.api import LoadOptions
from sidecar.engine.budget import available_memory, check_memory, context_size_for, kv_cache_bytes
from sidecar.engine.gguf_header import GgufHeaderError, read_header, read_metadata
from sidecar.errors import InvalidParams

from .harness import RawSidecar
from .tiny_model import write_tiny_model

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


def test_per_layer_head_counts_give_an_upper_bound() -> None:
    # Arrays, one value per layer: the most kv heads (3) and the widest heads (576 / 9) count for all.
    per_layer = {
        **SMOL,
        "llama.attention.head_count": [9, 0, 18] * 10,
        "llama.attention.head_count_kv": [3, 0, 1] * 10,
    }
    assert kv_cache_bytes(per_layer, 8192) == 8192 * 30 * 3 * 128 * 2
    without_kv = {**per_layer, "llama.attention.head_count_kv": [0] * 30}
    assert kv_cache_bytes(without_kv, 8192) == 8192 * 30 * 18 * 128 * 2  # kv heads default to heads


def test_a_context_that_does_not_fit_in_memory_is_refused() -> None:
    check_memory(SMOL, 8192, 10**9)
    with pytest.raises(InvalidParams) as raised:
        check_memory(SMOL, 8192, 10**8)
    assert "GiB" in raised.value.message and raised.value.data == {"field": "contextSize"}


def test_loading_checks_the_kv_cache_against_memory_before_llama_cpp_allocates(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def constructed(**_kwargs: object) -> None:
        raise AssertionError("llama_cpp.Llama was constructed")

    monkeypatch.setattr(llamacpp.llama_cpp, "Llama", constructed)
    monkeypatch.setattr(llamacpp, "available_memory", lambda: 1000)  # the tiny model's cache needs ~1 MB
    with pytest.raises(InvalidParams) as raised:
        llamacpp.LlamaCppEngine().load(str(tiny_model), LoadOptions(context_size=2048))
    assert raised.value.code == -32602 and raised.value.data == {"field": "contextSize"}
    assert "KV cache" in raised.value.message


def test_the_memory_check_reads_per_layer_head_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model could skip the check by giving its head counts per layer (it did: the header
    # was read without those arrays, and the estimate gave up).
    per_layer = {
        "llama.attention.head_count": GGUFValue([4, 4], GGUFValueType.ARRAY, GGUFValueType.UINT32),
        "llama.attention.head_count_kv": GGUFValue([4, 2], GGUFValueType.ARRAY, GGUFValueType.UINT32),
    }
    path = write_tiny_model(tmp_path / "per-layer.gguf", metadata=per_layer)

    def constructed(**_kwargs: object) -> None:
        raise AssertionError("llama_cpp.Llama was constructed")

    monkeypatch.setattr(llamacpp.llama_cpp, "Llama", constructed)
    monkeypatch.setattr(llamacpp, "available_memory", lambda: 1000)
    with pytest.raises(InvalidParams) as raised:
        llamacpp.LlamaCppEngine().load(str(path), LoadOptions(context_size=2048))
    assert "KV cache" in raised.value.message


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/meminfo")
def test_available_memory_is_read_on_linux() -> None:
    available = available_memory()
    assert available is not None and available > 10**8


# What vm_stat prints today (Apple's vm_stat.c: "%-35s %16llu."), with 16 KiB pages as on Apple Silicon.
VM_STAT_ARM = """\
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                     3532.
Pages active:                                 180452.
Pages inactive:                               176896.
Pages speculative:                              2307.
Pages throttled:                                   0.
Pages wired down:                             117049.
Pages purgeable:                                6154.
"Translation faults":                      986553453.
Pages copy-on-write:                        31098437.
Pages zero filled:                         433655245.
Pages reactivated:                          14424306.
Pages purged:                                6466178.
File-backed pages:                            107958.
Anonymous pages:                              251697.
Pages stored in compressor:                   923331.
Pages occupied by compressor:                 303441.
Decompressions:                             20745102.
Compressions:                               28437536.
Pageins:                                    30289637.
Pageouts:                                     231424.
Swapins:                                      597066.
Swapouts:                                     796446.
"""
# Recorded on Mac OS X 10.6.8 with 2 GB (apple.stackexchange.com question 81581): 4 KiB pages.
VM_STAT_INTEL = """\
Mach Virtual Memory Statistics: (page size of 4096 bytes)
Pages free:                     90518.
Pages active:                  205479.
Pages inactive:                 32417.
Pages speculative:             134461.
Pages wired down:               61009.
"Translation faults":        26323651.
Pages copy-on-write:           177180.
Pages zero filled:           15230394.
Pages reactivated:                  3.
Pageins:                       388108.
Pageouts:                           0.
Object cache: 14 hits of 797355 lookups (0% hit rate)
"""


def test_vm_stat_counts_free_speculative_and_inactive_pages() -> None:
    assert budget._parse_vm_stat(VM_STAT_ARM) == (3532 + 2307 + 176896) * 16384
    assert budget._parse_vm_stat(VM_STAT_INTEL) == (90518 + 134461 + 32417) * 4096
    assert budget._parse_vm_stat(VM_STAT_INTEL.replace("Pages inactive", "Pages idle")) is None
    assert budget._parse_vm_stat("vm_stat: command not found") is None


def test_available_memory_on_macos_runs_vm_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(command: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command == ["/usr/bin/vm_stat"]
        return subprocess.CompletedProcess(command, 0, stdout=VM_STAT_INTEL)

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "run", run)
    assert available_memory() == (90518 + 134461 + 32417) * 4096


def test_memorystatusex_has_the_documented_windows_layout() -> None:
    # MEMORYSTATUSEX: two DWORDs, then seven DWORDLONGs (ullAvailPhys at offset 16), 64 bytes.
    recorded = struct.pack("<2I7Q", 64, 41, 17_055_580_160, 10_012_344_320, 0, 0, 0, 0, 0)
    status = budget._MemoryStatusEx.from_buffer_copy(recorded)
    assert ctypes.sizeof(status) == 64 and status.ullAvailPhys == 10_012_344_320


def test_available_memory_on_windows_asks_global_memory_status_ex(monkeypatch: pytest.MonkeyPatch) -> None:
    def global_memory_status_ex(pointer: Any) -> int:
        status = pointer._obj
        assert status.dwLength == 64  # Windows refuses the call unless the size is set
        status.ullAvailPhys = 123_456_789
        return 1

    kernel32 = type("Kernel32", (), {"GlobalMemoryStatusEx": staticmethod(global_memory_status_ex)})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "windll", type("WinDLL", (), {"kernel32": kernel32}), raising=False)
    assert available_memory() == 123_456_789


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
