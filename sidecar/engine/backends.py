"""Which llama.cpp CPU backend this process runs: chosen once, before the first model.

The project's build (``native/build_wheel.py``) ships one ``libggml-cpu-<variant>.so``
per CPU family and links none of them in, so ggml's loader must be pointed at them:
``ggml_backend_load_all_from_path`` scores each against the CPU and registers the best.
llama-cpp-python 0.3.36 has no binding for it (its issue 2069), so it is called here
through ctypes, on the ``libggml`` that ``libllama`` links. A build with its
CPU backend linked in (PyPI's, built natively) has it registered already; then nothing
is loaded.

Then it reads back what was chosen (the variant, its features, the extra buffer types
that weights may be placed in) and applies one guard: llama.cpp's AMX code compiled by
GCC without the project's tile-config fix crashes every AMX multiply (llama.cpp issue
20824), so outside the project's own build the AMX buffer type is left out of the list
llama.cpp reads, while CPU_REPACK stays.

It knows ggml's backend-registry C API and the build record the build writes; nothing of
models, requests or the wire. The caller hands it the imported ``llama_cpp``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .api import CpuBackend, LeftOut

__all__ = ["BUILD_RECORD", "amx_left_out_reason", "choose_cpu_backend"]

log = logging.getLogger("sidecar.llama")

BUILD_RECORD = "sidecar_build.json"  # beside llama_cpp/__init__.py, written by native/build_wheel.py
AMX = "AMX"
_CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
_VARIANT_PREFIX = "libggml-cpu-"


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


_GetFeatures = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)
_GetExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


def _declare(libggml: ctypes.CDLL) -> None:
    """Type the ggml functions used here, as seen through ``libggml``'s lookup scope."""
    signatures: dict[str, tuple[list[type], type | None]] = {
        "ggml_backend_load_all_from_path": ([ctypes.c_char_p], None),
        "ggml_backend_dev_by_type": ([ctypes.c_int], ctypes.c_void_p),
        "ggml_backend_dev_backend_reg": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(libggml, name)
        function.argtypes = argtypes
        function.restype = restype


def choose_cpu_backend(llama_cpp: ModuleType, leave_out: Mapping[str, str] | None = None) -> CpuBackend:
    """Register the best CPU backend of ``llama_cpp``'s build unless one is linked in; report it.

    ``llama_cpp`` is the imported package (passed in: this module imports no llama.cpp).
    ``leave_out`` names buffer types to keep models out of, with the reason, beside the
    AMX guard's. Call once, before the first model is loaded. Raises ``RuntimeError``
    when no CPU backend could be registered (no variant this CPU can run).
    """
    # libllama's handle: symbols looked up through it come from the libggml it links,
    # not the second copy (with a registry of its own) that llama_cpp._ggml opens beside it.
    libggml: ctypes.CDLL = llama_cpp.llama_cpp._lib
    lib_dir = Path(llama_cpp.llama_cpp._base_path)
    package_dir = Path(str(llama_cpp.__file__)).parent
    _declare(libggml)
    device = _cpu_device(libggml, lib_dir)
    registry = libggml.ggml_backend_dev_backend_reg(device)
    library = _library_of(registry)
    record = _build_record(package_dir)
    left_out = _leave_out(libggml, registry, device, record, leave_out or {})
    in_use = _extra_buffer_types(libggml, registry, device)  # read back: what llama.cpp will see
    backend = CpuBackend(
        variant=_variant(library),
        library=library,
        features=_features(libggml, registry),
        buffer_types=tuple(in_use.names) if in_use else (),
        left_out=left_out,
        build=str(record.get("mode", "other")) if record else "other",
        build_id=str(record["identity"]) if record and "identity" in record else None,
    )
    log.info(
        "llama.cpp CPU backend: %s (%s build), buffer types %s",
        backend.variant or "linked in",
        backend.build,
        ", ".join(backend.buffer_types) or "none",
    )
    return backend


def _cpu_device(libggml: ctypes.CDLL, lib_dir: Path) -> int:
    """The CPU device, after registering the best variant in ``lib_dir`` if none is linked in."""
    device: int | None = libggml.ggml_backend_dev_by_type(_CPU_DEVICE)
    if not device:
        libggml.ggml_backend_load_all_from_path(os.fsencode(lib_dir))
        device = libggml.ggml_backend_dev_by_type(_CPU_DEVICE)
    if not device:
        raise RuntimeError(f"no llama.cpp CPU backend in {lib_dir} runs on this CPU")
    return device


def _leave_out(
    libggml: ctypes.CDLL,
    registry: int,
    device: int,
    record: dict[str, object] | None,
    asked: Mapping[str, str],
) -> tuple[LeftOut, ...]:
    """Take the buffer types ``asked`` for, and AMX where unsafe, out of llama.cpp's list."""
    extra = _extra_buffer_types(libggml, registry, device)
    if extra is None:
        return ()
    refused = dict(asked)
    amx_reason = amx_left_out_reason(extra.names, record)
    if amx_reason is not None:
        refused[AMX] = amx_reason
    left_out = tuple(LeftOut(name, reason) for name, reason in refused.items() if name in extra.names)
    leave_out_buffer_types(extra, {item.buffer_type for item in left_out})
    for item in left_out:
        log.warning("buffer type %s left out: %s", item.buffer_type, item.reason)
    return left_out


def amx_left_out_reason(buffer_types: list[str], record: dict[str, object] | None) -> str | None:
    """Why the AMX buffer type must not be used, or None when it is absent or known right."""
    if AMX not in buffer_types:
        return None
    # The project's build records the tile config it proved every ldtilecfg loads.
    if record is not None and isinstance(record.get("amxTileConfig"), dict):
        return None
    return (
        "this llama.cpp build is not the sidecar's own (native/build_wheel.py), whose AMX tile "
        "config is checked; GCC builds load an unwritten one and crash (llama.cpp issue 20824)"
    )


def leave_out_buffer_types(extra: _ExtraBufferTypes, names: set[str]) -> None:
    """Remove ``names`` from the CPU device's extra buffer types, where llama.cpp reads them.

    The list is the NULL-terminated array the CPU backend hands out for every model load
    (``ggml_backend_dev_get_extra_bufts``); the others move up and the end stays NULL.
    """
    kept = [pointer for buffer_name, pointer in extra.entries if buffer_name not in names]
    for index in range(len(extra.entries)):
        extra.array[index] = kept[index] if index < len(kept) else None


@dataclass(slots=True)
class _ExtraBufferTypes:
    array: ctypes._Pointer[ctypes.c_void_p]  # NULL-terminated, owned by the CPU backend
    entries: list[tuple[str, int]]  # (name, buffer type), in llama.cpp's order of preference

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.entries]


def _extra_buffer_types(libggml: ctypes.CDLL, registry: int, device: int) -> _ExtraBufferTypes | None:
    address = libggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    array = _GetExtraBufts(address)(device)
    entries: list[tuple[str, int]] = []
    while array and array[len(entries)]:
        buffer_type = int(array[len(entries)])
        name = libggml.ggml_backend_buft_name(buffer_type)
        entries.append((name.decode() if name else "?", buffer_type))
    return _ExtraBufferTypes(array, entries) if array else None


def _features(libggml: ctypes.CDLL, registry: int) -> tuple[str, ...]:
    address = libggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_get_features")
    if not address:
        return ()
    features = _GetFeatures(address)(registry)
    names: list[str] = []
    index = 0
    while features and features[index].name:
        feature = features[index]
        if feature.value == b"1":
            names.append(feature.name.decode())
        index += 1
    return tuple(names)


def _variant(library: str | None) -> str | None:
    """``libggml-cpu-zen4.so`` -> ``zen4``; None for a library that is no variant."""
    if library is None or not library.startswith(_VARIANT_PREFIX):
        return None
    return library.removeprefix(_VARIANT_PREFIX).split(".")[0]


def _library_of(address: int) -> str | None:
    """The shared library that holds ``address`` (dladdr), or None where there is none to ask."""
    if sys.platform == "win32":
        return None
    info = _DlInfo()
    dladdr = ctypes.CDLL(None).dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.basename(os.fsdecode(info.dli_fname))


def _build_record(package_dir: Path) -> dict[str, object] | None:
    try:
        record = json.loads((package_dir / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
