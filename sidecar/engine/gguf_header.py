"""Read a GGUF file's header (metadata, and optionally the tensor table) without loading it.

Pure Python over a memory map, bounded: it never reads tensor data, so a
multi-GB file costs only its header, and every length it trusts is checked
against the file size and sane limits. Used to pick a context size before
llama.cpp allocates one, to refuse files llama.cpp would abort on, and to
inspect models. Knows the GGUF container format, nothing about llama.cpp or
the wire.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

__all__ = ["GgufHeader", "GgufHeaderError", "read_header", "read_metadata"]

_MAGIC = b"GGUF"
_MAX_KEYS = 100_000
_MAX_DIMENSIONS = 8
_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_STRING, _ARRAY = 8, 9

MetadataValue = int | float | bool | str | list["MetadataValue"]


class GgufHeaderError(ValueError):
    """The file is not a readable GGUF header; the message says why."""


@dataclass(slots=True, frozen=True)
class GgufHeader:
    metadata: dict[str, MetadataValue]  # arrays only where asked for
    array_lengths: dict[str, int]  # every array, read or not
    parameter_count: int | None  # None unless asked for


def read_header(
    path: str, *, read_arrays: frozenset[str] = frozenset(), count_parameters: bool = False
) -> GgufHeader:
    """Read the key-value header, and with ``count_parameters`` the tensor table too.

    Array values, such as the vocabulary, are skipped and reported as their
    length in ``array_lengths`` (that keeps the read fast), except those named
    in ``read_arrays``, which are in ``metadata`` too.
    """
    with open(path, "rb") as file:
        try:
            view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GgufHeaderError("not a GGUF file (empty)") from None
    with view:
        return _Cursor(view).header(read_arrays, count_parameters)


def read_metadata(path: str, *, read_arrays: frozenset[str] = frozenset()) -> dict[str, MetadataValue]:
    """The header's key-value pairs (see ``read_header``)."""
    return read_header(path, read_arrays=read_arrays).metadata


class _Cursor:
    """Reads little-endian GGUF values from a buffer, checking every length against its end."""

    def __init__(self, data: mmap.mmap) -> None:
        self._data = data
        self._position = 0

    def header(self, read_arrays: frozenset[str], count_parameters: bool) -> GgufHeader:
        if self._take(4) != _MAGIC:
            raise GgufHeaderError("not a GGUF file (bad magic bytes)")
        version = self._scalar(_U32)
        if version not in (2, 3):
            raise GgufHeaderError(f"unsupported GGUF version {version}")
        tensor_count, key_count = self._scalar(_U64), self._scalar(_U64)
        if key_count > _MAX_KEYS or tensor_count > _MAX_KEYS:
            raise GgufHeaderError(f"implausible key or tensor count ({key_count}, {tensor_count})")
        metadata: dict[str, MetadataValue] = {}
        array_lengths: dict[str, int] = {}
        for _ in range(key_count):
            key = self._string()
            value_type = self._scalar(_U32)
            if value_type == _ARRAY:
                array_lengths[key], items = self._array(key in read_arrays)
                if items is not None:
                    metadata[key] = items
            else:
                metadata[key] = self._value(value_type)
        parameters = sum(self._tensor_elements() for _ in range(tensor_count)) if count_parameters else None
        # Even 1.5-bit quantizations store more than a bit per weight: more weights than
        # the file has bits is a forged table (and a count beyond 64 bits, unsendable).
        if parameters is not None and parameters > len(self._data) * 8:
            raise GgufHeaderError(
                f"implausible tensor sizes ({parameters} weights in {len(self._data)} bytes)"
            )
        return GgufHeader(metadata, array_lengths, parameters)

    def _value(self, value_type: int) -> MetadataValue:
        if value_type in _SCALARS:
            value: MetadataValue = self._scalar(_SCALARS[value_type])
            return value
        if value_type == _STRING:
            return self._string()
        raise GgufHeaderError(f"unknown metadata value type {value_type}")

    def _array(self, read: bool) -> tuple[int, list[MetadataValue] | None]:
        """An array's length, and with ``read`` its items (otherwise it is stepped over)."""
        item_type, count = self._scalar(_U32), self._scalar(_U64)
        if item_type == _STRING:
            strings = self._strings(self._bounded(count, 8), keep=read)
            return count, [item.decode("utf-8", errors="replace") for item in strings] if read else None
        if item_type not in _SCALARS:
            raise GgufHeaderError(f"unsupported array item type {item_type}")
        if read:
            return count, [self._value(item_type) for _ in range(self._bounded(count, 1))]
        self._take(_SCALARS[item_type].size * self._bounded(count, 1))
        return count, None

    def _strings(self, count: int, *, keep: bool) -> list[bytes]:
        """Read (or, without ``keep``, step over) ``count`` strings.

        The tight loop matters: a vocabulary and its merges are 100,000 strings.
        """
        data, position, end, unpack = self._data, self._position, len(self._data), _U64.unpack_from
        kept: list[bytes] = []
        for _ in range(count):
            if position + 8 > end:
                raise GgufHeaderError("file ends inside the header")
            start = position + 8
            position = start + unpack(data, position)[0]
            if keep:
                kept.append(data[start:position])
        if position > end:
            raise GgufHeaderError("file ends inside the header")
        self._position = position
        return kept

    def _tensor_elements(self) -> int:
        """One tensor-table entry (name, dimensions, type, offset): its element count."""
        self._take(self._scalar(_U64))
        dimensions = self._scalar(_U32)
        if dimensions > _MAX_DIMENSIONS:
            raise GgufHeaderError(f"implausible tensor dimension count {dimensions}")
        elements = 1
        for _ in range(dimensions):
            elements *= self._scalar(_U64)
        self._take(12)  # element type (u32) and data offset (u64)
        return elements

    def _string(self) -> str:
        return self._take(self._scalar(_U64)).decode("utf-8", errors="replace")

    def _scalar(self, layout: struct.Struct) -> int:
        value: int = layout.unpack_from(self._take(layout.size))[0]
        return value

    def _take(self, size: int) -> bytes:
        end = self._position + size
        if end > len(self._data):
            raise GgufHeaderError("file ends inside the header")
        data = self._data[self._position : end]
        self._position = end
        return data

    def _bounded(self, count: int, item_bytes: int) -> int:
        """``count`` if that many items of at least ``item_bytes`` each can fit in the rest of the file."""
        if count * item_bytes > len(self._data) - self._position:
            raise GgufHeaderError(f"implausible array length {count}")
        return count
