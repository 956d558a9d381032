"""Prove from a library's machine code what every AMX ``ldtilecfg`` in it loads.

An AMX tile config is 64 bytes in memory: palette, start row, then 16 column widths
(``colsb``, 2 bytes each) and 16 row counts. GCC 12 compiled llama.cpp's config set-up so
that the zeroing store stayed but the stores of rows and columns were dropped (its
``_tile_loadconfig`` tells the compiler that only 8 bytes are read), and every AMX
multiply then faulted. A byte count alone cannot see that: the config *is* written, with
zeros. So this module replays, for each ``ldtilecfg``, the stores made to its operand
since the function last moved that base register, with the values they store (immediates,
zeroed registers, constants read from the library's own read-only data), and returns the
64 bytes as they are when ``ldtilecfg`` runs. A byte it cannot account for is ``None``.

It reads ``objdump -d`` output (binutils, present wherever gcc is) and the ELF sections;
it knows nothing of llama.cpp beyond the config layout.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TileConfig", "TileConfigSite", "check_library", "loads_tile_config", "tile_config_sites"]

CONFIG_BYTES = 64
_INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*?)\s*$")
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_MEMORY = re.compile(r"^(-?0x[0-9a-f]+|-?\d+)?\((%\w+)\)$")
_RIP_TARGET = re.compile(r"#\s*([0-9a-f]+)")
_VECTOR_BYTES = {"x": 16, "y": 32, "z": 64}


@dataclass(slots=True, frozen=True)
class _Register:
    name: str  # the full register: "rdx" for %dl/%dx/%edx/%rdx, "vec3" for %xmm3/%ymm3/%zmm3
    width: int
    vector: bool


_GPR_NAMES = {
    "rax": ("eax", "ax", "al"),
    "rbx": ("ebx", "bx", "bl"),
    "rcx": ("ecx", "cx", "cl"),
    "rdx": ("edx", "dx", "dl"),
    "rsi": ("esi", "si", "sil"),
    "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"),
    "rsp": ("esp", "sp", "spl"),
    **{f"r{n}": (f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)},
}
_GPRS = {
    alias: _Register(full, width, False)
    for full, aliases in _GPR_NAMES.items()
    for alias, width in zip((full, *aliases), (8, 4, 2, 1), strict=True)
}
_SUFFIX_BYTES = {"b": 1, "w": 2, "l": 4, "q": 8}
_VECTOR_MOVES = ("vmovdq", "vmovap", "vmovup", "movdq", "movap", "movup")
_VECTOR_SCALAR_MOVES = {"vmovq": 8, "vmovd": 4, "movq": 8, "movd": 4}
_STORE_WIDTH = {"vmovq": 8, "vmovd": 4, "movq": 8, "movd": 4}
_ZEROING = {"vpxor", "vpxord", "vpxorq", "vxorps", "vxorpd", "pxor", "xorps", "xorpd"}
# Instructions whose last operand is read, not written.
_READ_ONLY = (
    "cmp",
    "test",
    "bt",
    "prefetch",
    "ucomis",
    "comis",
    "vucomis",
    "vcomis",
    "vptest",
    "ptest",
    "jmp",
    "j",
)
_IMPLICIT_STACK = ("push", "pop", "leave", "enter", "ret")


@dataclass(slots=True, frozen=True)
class TileConfig:
    """The 64 bytes an ``ldtilecfg`` loads, decoded; ``None`` where a byte is unknown."""

    raw: tuple[int | None, ...]

    @property
    def palette(self) -> int | None:
        return self.raw[0]

    def tile(self, index: int) -> tuple[int | None, int | None]:
        """(rows, colsb) of tile ``index``."""
        low, high = self.raw[16 + 2 * index], self.raw[17 + 2 * index]
        colsb = None if low is None or high is None else low | high << 8
        return self.raw[48 + index], colsb

    def problems(self, expected: Mapping[str, Sequence[int]] | None = None) -> list[str]:
        """Why this config is not one a multiply can run with, or not ``expected`` (empty when right).

        ``expected`` holds the ``rows`` and ``colsb`` of tiles 0, 1, … as the source assigns
        them; the tiles after those must be unconfigured.
        """
        if None in self.raw:
            unknown = [i for i, b in enumerate(self.raw) if b is None]
            return [f"bytes {unknown} are not written by the code before ldtilecfg"]
        if self.palette != 1:
            return [f"palette {self.palette}, not 1"]
        tiles = [self.tile(i) for i in range(8)]
        if not any(rows for rows, _ in tiles):
            return ["no tile has rows: the config is all zeros"]
        if expected is not None:
            wanted = list(zip(expected["rows"], expected["colsb"], strict=True))
            wanted += [(0, 0)] * (len(tiles) - len(wanted))
            return [
                f"tile {i} is {got}, not {want} (rows, colsb)"
                for i, (got, want) in enumerate(zip(tiles, wanted, strict=True))
                if got != want
            ]
        return [
            f"tile {i} has rows {r} but colsb {c}" for i, (r, c) in enumerate(tiles) if bool(r) != bool(c)
        ]


@dataclass(slots=True, frozen=True)
class TileConfigSite:
    function: str
    address: int
    config: TileConfig


class _Rodata:
    """Bytes at virtual addresses of an ELF64 library, from its allocated sections."""

    def __init__(self, path: Path) -> None:
        self._data = path.read_bytes()
        self._sections: list[tuple[int, int, int]] = []
        (shoff,) = struct.unpack_from("<Q", self._data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", self._data, 0x3A)
        for index in range(shnum):
            base = shoff + index * shentsize
            (sh_type,) = struct.unpack_from("<I", self._data, base + 4)
            addr, offset, size = struct.unpack_from("<QQQ", self._data, base + 0x10)
            if addr and sh_type != 8:  # SHT_NOBITS has no bytes in the file
                self._sections.append((addr, offset, size))

    def read(self, address: int, size: int) -> bytes | None:
        for addr, offset, length in self._sections:
            if addr <= address and address + size <= addr + length:
                start = offset + address - addr
                return self._data[start : start + size]
        return None


class _Replay:
    """Known register and memory contents while walking one function's instructions.

    Registers hold little-endian bytes, as many as are known from the low end. Only the
    moves a compiler uses to build a constant struct are modelled; anything else that
    writes a register or memory makes it unknown.
    """

    def __init__(self, rodata: _Rodata | None) -> None:
        self._rodata = rodata
        self._registers: dict[str, bytes] = {}
        self._memory: dict[str, dict[int, int | None]] = {}

    def step(self, mnemonic: str, operands: str, comment: str) -> None:
        if mnemonic.startswith(_IMPLICIT_STACK):
            self._memory.pop("rsp", None)
        if mnemonic.startswith("call"):
            # A callee may write any memory and clobbers registers.
            self._memory.clear()
            self._registers.clear()
            return
        parts = _split_operands(operands)
        if not parts or mnemonic.startswith(_READ_ONLY):
            return
        destination = parts[-1]
        memory = _MEMORY.match(destination)
        if memory:
            base = _register(memory.group(2)).name
            if mnemonic.startswith(("mov", "vmov")):
                self._store(mnemonic, parts[0], base, _offset(memory.group(1)))
            else:
                self._memory.pop(base, None)
            return
        target = _register(destination)
        self._memory.pop(target.name, None)  # a base register that moves loses its region
        value = self._load(mnemonic, parts, target, comment)
        if value is None:
            self._registers.pop(target.name, None)
        else:
            self._registers[target.name] = value

    def config_at(self, operand: str) -> TileConfig | None:
        memory = _MEMORY.match(operand)
        if not memory:
            return None
        offset, base = _offset(memory.group(1)), _register(memory.group(2)).name
        region = self._memory.get(base, {})
        return TileConfig(tuple(region.get(offset + i) for i in range(CONFIG_BYTES)))

    def _load(self, mnemonic: str, parts: list[str], target: _Register, comment: str) -> bytes | None:
        """The bytes ``mnemonic parts…`` leaves in ``target``, or None if not modelled."""
        if target.vector and mnemonic in _ZEROING and len(set(parts)) == 1:
            # A VEX or EVEX xor of a register with itself zeroes all 64 bytes; SSE's only 16.
            return bytes(64 if mnemonic.startswith("v") else 16)
        width, extend = _load_width(mnemonic, target)
        if width is None or len(parts) != 2:
            return None
        source = parts[0]
        if source.startswith("$"):
            value: bytes | None = _immediate(source, width)
        elif source.endswith("(%rip)"):
            address = _RIP_TARGET.search(comment)
            value = self._rodata.read(int(address.group(1), 16), width) if address and self._rodata else None
        elif source.startswith("%"):
            known = self._registers.get(_register(source).name, b"")
            value = known[:width] if len(known) >= width else None
        else:
            value = None
        if value is None:
            return None
        # A write of 4 bytes to a general register, or any VEX/EVEX write to a vector one,
        # zeroes what lies above it; zero extension (movz) too.
        zero_upper = (
            extend
            or (target.vector and mnemonic.startswith("v"))
            or (not target.vector and target.width == 4)
        )
        return value + bytes(8 if not target.vector else 64)[len(value) :] if zero_upper else value

    def _store(self, mnemonic: str, source: str, base: str, offset: int) -> None:
        region = self._memory.setdefault(base, {})
        width: int | None
        value: bytes | None
        if source.startswith("$"):
            width = _SUFFIX_BYTES.get(mnemonic[-1])
            value = _immediate(source, width) if width else None
        else:
            register = _register(source)
            width = _STORE_WIDTH.get(mnemonic, register.width)
            known = self._registers.get(register.name, b"")
            value = known[:width] if width and len(known) >= width else None
        if width is None:
            # A store of unknown size to this base: nothing near it can be trusted.
            self._memory[base] = {}
            return
        for i in range(width):
            region[offset + i] = value[i] if value is not None else None


def _register(operand: str) -> _Register:
    text = operand.removeprefix("%")
    vector = re.fullmatch(r"([xyz])mm(\d+)", text)
    if vector:
        return _Register(f"vec{vector.group(2)}", _VECTOR_BYTES[vector.group(1)], True)
    return _GPRS.get(text, _Register(text, 8, False))


def _load_width(mnemonic: str, target: _Register) -> tuple[int | None, bool]:
    """(bytes read, zero-extended) for a modelled load into ``target``; (None, False) otherwise."""
    if mnemonic.startswith("movz") and len(mnemonic) == 6:  # movzbl, movzwl, movzbq, …
        return _SUFFIX_BYTES.get(mnemonic[4]), True
    if mnemonic in _VECTOR_SCALAR_MOVES:
        return _VECTOR_SCALAR_MOVES[mnemonic], True
    if mnemonic in {"mov", "movl", "movq", "movw", "movb", "movabs"} and not target.vector:
        return target.width, False
    if target.vector and mnemonic.startswith(_VECTOR_MOVES):
        return target.width, False
    return None, False


def _immediate(text: str, width: int) -> bytes:
    number = int(text[1:], 0)
    return (number & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _split_operands(operands: str) -> list[str]:
    text = operands.split("#", 1)[0].strip()
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _offset(text: str | None) -> int:
    return int(text, 0) if text else 0


def tile_config_sites(library: Path) -> list[TileConfigSite]:
    """Every ``ldtilecfg`` in ``library`` with the config it loads, replayed from the code."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-M", "att", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sites_in_listing(listing, _Rodata(library))


def sites_in_listing(listing: str, rodata: _Rodata | None = None) -> list[TileConfigSite]:
    sites: list[TileConfigSite] = []
    function, replay = "", _Replay(rodata)
    for line in listing.splitlines():
        header = _FUNCTION.match(line)
        if header:
            function, replay = header.group(1), _Replay(rodata)
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        address, mnemonic, rest = instruction.groups()
        operands, _, comment = rest.partition("#")
        if mnemonic == "ldtilecfg":
            config = replay.config_at(operands.strip())
            raw = config or TileConfig((None,) * CONFIG_BYTES)
            sites.append(TileConfigSite(function, int(address, 16), raw))
            continue
        replay.step(mnemonic, operands, "#" + comment)
    return sites


def loads_tile_config(library: Path) -> bool:
    return bool(tile_config_sites(library))


def check_library(library: Path, expected: Mapping[str, Sequence[int]] | None = None) -> list[str]:
    """One line per ``ldtilecfg`` whose config is unknown, unusable or not ``expected``; empty when right."""
    return [
        f"{site.function} at {site.address:#x}: {problem}"
        for site in tile_config_sites(library)
        for problem in site.config.problems(expected)
    ]
