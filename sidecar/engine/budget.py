"""Choosing a context size and checking it fits, before llama.cpp allocates anything.

Arithmetic on GGUF metadata: the context defaults to the training context
(capped), is rounded to what llama.cpp really allocates, and is refused when it
exceeds the training context or its KV cache would not fit in the memory the
operating system says is available now (Linux, macOS and Windows each say it
their own way). Knows GGUF metadata keys, not llama.cpp's API.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

from ..errors import InvalidParams

__all__ = ["DEFAULT_CONTEXT_SIZE", "available_memory", "check_memory", "context_size_for", "kv_cache_bytes"]

DEFAULT_CONTEXT_SIZE = 4096
# llama.cpp rounds n_ctx up to a multiple of 256 but llama-cpp-python sizes its
# token buffer from the value passed; passing a multiple keeps the two equal.
_CONTEXT_GRANULE = 256
_F16_BYTES = 2
_GIB = 1024**3
_VM_STAT = "/usr/bin/vm_stat"
_VM_STAT_TIMEOUT_S = 2.0
# vm_stat's "Pages free" leaves out the speculative pages, which are free as well.
_VM_STAT_AVAILABLE = frozenset({"free", "speculative", "inactive"})


def context_size_for(metadata: Mapping[str, object], requested: int | None) -> int:
    """The context size to allocate for a ``loadModel`` asking for ``requested`` tokens."""
    train = _field(metadata, "context_length")
    if requested is not None and train is not None and requested > train:
        message = f"'contextSize' {requested} exceeds the model's training context of {train} tokens"
        raise InvalidParams(f"Invalid params: {message}.", {"field": "contextSize"})
    size = requested or min(train or DEFAULT_CONTEXT_SIZE, DEFAULT_CONTEXT_SIZE)
    return -(-size // _CONTEXT_GRANULE) * _CONTEXT_GRANULE


def kv_cache_bytes(metadata: Mapping[str, object], context_size: int) -> int | None:
    """Bytes of the f16 KV cache for ``context_size`` tokens, or None if the metadata cannot tell.

    Head counts may be given per layer (an array): every layer is then counted
    with the most key-value heads and the widest heads of any, an upper bound.
    """
    layers = _field(metadata, "block_count")
    width = _field(metadata, "embedding_length")
    heads = _per_layer(metadata, "attention.head_count")
    if layers is None or width is None or not heads:
        return None
    kv_heads = max(_per_layer(metadata, "attention.head_count_kv") or heads)
    key = _field(metadata, "attention.key_length") or width // min(heads)
    value = _field(metadata, "attention.value_length") or width // min(heads)
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
    """Bytes of memory a new allocation can get now, without swapping; None where unknown."""
    if sys.platform == "darwin":
        return _macos_available()
    if sys.platform == "win32":
        return _windows_available()
    return _linux_available()


def _linux_available() -> int | None:
    """The kernel's own estimate, ``MemAvailable`` (free memory plus reclaimable caches)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _macos_available() -> int | None:
    """Free (speculative included) and inactive pages, as ``vm_stat`` counts them.

    macOS has no ``/proc`` and no ``MemAvailable``; free pages alone are far too
    few there, since the system keeps inactive pages (reclaimed on demand) filled.
    The tool is run by absolute path with no arguments: nothing in a request
    reaches it.
    """
    try:
        output = subprocess.run(
            [_VM_STAT], capture_output=True, text=True, timeout=_VM_STAT_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return _parse_vm_stat(output)


def _parse_vm_stat(output: str) -> int | None:
    """Available bytes from the text ``vm_stat`` prints; None if it lacks a needed line."""
    page_size = re.search(r"page size of (\d+) bytes", output)
    counts = {
        match[1]: int(match[2]) for match in re.finditer(r"^Pages (\w+):\s+(\d+)\.$", output, re.MULTILINE)
    }
    if page_size is None or not counts.keys() >= _VM_STAT_AVAILABLE:
        return None
    return int(page_size[1]) * sum(counts[name] for name in _VM_STAT_AVAILABLE)


class _MemoryStatusEx(ctypes.Structure):
    """Windows' ``MEMORYSTATUSEX``, as ``GlobalMemoryStatusEx`` fills it."""

    _fields_ = [
        ("dwLength", ctypes.c_uint32),
        ("dwMemoryLoad", ctypes.c_uint32),
        ("ullTotalPhys", ctypes.c_uint64),
        ("ullAvailPhys", ctypes.c_uint64),
        ("ullTotalPageFile", ctypes.c_uint64),
        ("ullAvailPageFile", ctypes.c_uint64),
        ("ullTotalVirtual", ctypes.c_uint64),
        ("ullAvailVirtual", ctypes.c_uint64),
        ("ullAvailExtendedVirtual", ctypes.c_uint64),
    ]


def _windows_available() -> int | None:
    """``ullAvailPhys``: physical memory that can be used without writing to disk first."""
    status = _MemoryStatusEx()
    status.dwLength = ctypes.sizeof(_MemoryStatusEx)
    if sys.platform == "win32" and ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return int(status.ullAvailPhys)
    return None


def _field(metadata: Mapping[str, object], key: str) -> int | None:
    value = metadata.get(f"{metadata.get('general.architecture')}.{key}")
    return value if _positive(value) else None


def _per_layer(metadata: Mapping[str, object], key: str) -> list[int]:
    """A field's positive values: one for all layers, or one per layer (layers without attention have 0)."""
    value = metadata.get(f"{metadata.get('general.architecture')}.{key}")
    return [item for item in (value if isinstance(value, list) else [value]) if _positive(item)]


def _positive(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
