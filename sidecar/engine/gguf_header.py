"""Read a GGUF file's metadata (key-value header) without loading the model.

Pure Python, bounded reads: it stops before the tensor table, so a multi-GB
file costs only its header. Used to pick a context size before llama.cpp
allocates one, and to reject non-GGUF files with a clear reason. Knows the
GGUF container format, nothing about llama.cpp or the wire.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

__all__ = ["GgufHeaderError", "read_metadata"]

_MAGIC = b"GGUF"
_MAX_KEYS = 100_000
_MAX_STRING = 64 * 1024 * 1024
_MAX_ARRAY = 16 * 1024 * 1024
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

MetadataValue = int | float | bool | str | list["MetadataValue"]


class GgufHeaderError(ValueError):
    """The file is not a readable GGUF header; the message says why."""


def read_metadata(path: str, *, read_arrays: frozenset[str] = frozenset()) -> dict[str, MetadataValue]:
    """Return the header's key-value pairs.

    Array values, such as the vocabulary, are skipped and reported as their
    length (that keeps the read fast), except those named in ``read_arrays``.
    """
    with open(path, "rb") as file:
        if file.read(4) != _MAGIC:
            raise GgufHeaderError("not a GGUF file (bad magic bytes)")
        version = _unpack(file, "<I")
        if version not in (2, 3):
            raise GgufHeaderError(f"unsupported GGUF version {version}")
        _unpack(file, "<Q")  # tensor count
        key_count = _unpack(file, "<Q")
        if key_count > _MAX_KEYS:
            raise GgufHeaderError(f"implausible metadata key count {key_count}")
        metadata: dict[str, MetadataValue] = {}
        for _ in range(key_count):
            key = _read_string(file)
            value_type = _unpack(file, "<I")
            metadata[key] = _read_value(file, value_type, key not in read_arrays)
        return metadata


def _read_value(file: BinaryIO, value_type: int, skip_arrays: bool) -> MetadataValue:
    if value_type in _SCALARS:
        value: MetadataValue = _unpack(file, _SCALARS[value_type])
        return value
    if value_type == _STRING:
        return _read_string(file)
    if value_type == _ARRAY:
        item_type = _unpack(file, "<I")
        count = _unpack(file, "<Q")
        if count > _MAX_ARRAY:
            raise GgufHeaderError(f"implausible array length {count}")
        if skip_arrays and item_type in _SCALARS:
            file.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
            return int(count)
        items = [_read_value(file, item_type, skip_arrays) for _ in range(count)]
        return int(count) if skip_arrays else items
    raise GgufHeaderError(f"unknown metadata value type {value_type}")


def _read_string(file: BinaryIO) -> str:
    size = _unpack(file, "<Q")
    if size > _MAX_STRING:
        raise GgufHeaderError(f"implausible string length {size}")
    data = file.read(size)
    if len(data) != size:
        raise GgufHeaderError("file ends inside the metadata header")
    return data.decode("utf-8", errors="replace")


def _unpack(file: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = file.read(size)
    if len(data) != size:
        raise GgufHeaderError("file ends inside the metadata header")
    value: int = struct.unpack(fmt, data)[0]
    return value
