"""Build llama-cpp-python from PyPI's source package as the sidecar ships it, and cache the wheel.

What it builds (``portable``, the default): llama.cpp with ``GGML_NATIVE=OFF``,
``GGML_BACKEND_DL=ON`` and ``GGML_CPU_ALL_VARIANTS=ON``: one ``libggml-cpu-<variant>.so``
per x86-64 CPU family, which llama.cpp's loader scores against the CPU it runs on.
``--native`` builds the same patched source for this CPU only (``-march=native``); the
benchmark compares the two.

Edits made to the source package, each checked to apply exactly once:
- the CPU variants are installed into the wheel next to ``libllama.so``
  (llama-cpp-python installs only a plain ``ggml-cpu``);
- AMX's ``ldtilecfg`` gets the whole 64-byte tile config as its memory operand. GCC's
  ``_tile_loadconfig`` declares 8 bytes, so GCC 12 drops stores that fill the config and
  every AMX matrix multiply crashes (llama.cpp issue 20824). ``tile_config_check`` proves
  the built library right, and the build fails if it is not;
- the version gets a local label naming the build (``0.3.36+portable.<identity>``), and
  ``llama_cpp/sidecar_build.json`` records what was built, which the engine reads at load.

The identity hashes this file, the sdist, the compiler and any extra ``CMAKE_ARGS``, so
changing any of them rebuilds (pip's own wheel cache would hand back the old wheel). The
tile-config check is not part of it: the tests run it again on the installed library.

It knows nothing of the sidecar: it only builds, checks and installs the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from native import tile_config_check  # noqa: E402  (the repo root must be on the path first)

__all__ = ["build", "main", "x86_variants"]

# The CPU variants are llama.cpp's own set for x86-64 (GGML_CPU_ALL_VARIANTS), the one its
# releases and node-llama-cpp ship: x64 and sse42 run anywhere, then sandybridge (AVX) up to
# zen4 (AVX-512 with BF16) and sapphirerapids (AMX). Each adds about 20 s to the build.
AMX_VARIANT = "sapphirerapids"
_X86_VARIANTS = re.compile(
    r'if \(GGML_CPU_ALL_VARIANTS\).*?if \(GGML_SYSTEM_ARCH STREQUAL "x86"\)(.*?)\n    elseif', re.S
)
_VARIANT_CALL = re.compile(r"ggml_add_cpu_backend_variant\((\w+)")
_TILE_SHAPE = re.compile(r"tc\.rows\[(\d+)\] = (\d+);\s+tc\.colsb\[\1\] = (\d+);")
_AMX_SOURCE = "vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp"

_COMMON_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF",)
_MODE_CMAKE_ARGS = {
    "portable": ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"),
    "native": ("-DGGML_NATIVE=ON",),
}

_TILE_LOADCONFIG_CALL = "    _tile_loadconfig(&tc);\n"
_TILE_LOADCONFIG_FIXED = (
    "    // The whole 64-byte config is the operand: GCC's _tile_loadconfig declares 8 bytes,\n"
    "    // which lets GCC 12 drop the stores that fill the rest (llama.cpp issue 20824).\n"
    '    __asm__ volatile("ldtilecfg %0" : : "m"(tc));\n'
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-sidecar"


def pinned_version() -> str:
    """The llama-cpp-python version pyproject.toml pins (one source for the pin)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"llama-cpp-python==([\w.]+)", requirement)
        if match:
            return match.group(1)
    raise SystemExit("pyproject.toml pins no llama-cpp-python==VERSION")


def fetch_sdist(version: str) -> Path:
    """The source package, downloaded once into the cache (pip checks the index's hash)."""
    directory = cache_dir() / "sdist"
    found = sorted(directory.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={version}", "-d", str(directory)], check=True)
    return next(directory.glob(f"llama_cpp_python-{version}.tar.gz"))


def compiler_version() -> str:
    compiler = os.environ.get("CXX", "c++")
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout


def cmake_args(mode: str) -> list[str]:
    extra = os.environ.get("CMAKE_ARGS", "").split()
    return [*_COMMON_CMAKE_ARGS, *_MODE_CMAKE_ARGS[mode], *extra]


def identity(mode: str, sdist: Path) -> str:
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(hashlib.sha256(sdist.read_bytes()).digest())
    digest.update(compiler_version().encode())
    digest.update(" ".join(cmake_args(mode)).encode())
    return digest.hexdigest()[:12]


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{path}: expected one {old.strip()!r}; the source package changed")
    path.write_text(text.replace(old, new))


def x86_variants(source: Path) -> list[str]:
    """The CPU variants llama.cpp's CMake defines for x86-64, in its order."""
    text = (source / "vendor/llama.cpp/ggml/src/CMakeLists.txt").read_text()
    block = _X86_VARIANTS.search(text)
    if block is None or AMX_VARIANT not in block.group(1):
        raise SystemExit(
            "ggml's CMakeLists.txt has no x86 variant list with sapphirerapids; the source package changed"
        )
    return _VARIANT_CALL.findall(block.group(1))


def tile_shapes(source: Path) -> dict[str, list[int]]:
    """The rows and column widths ``ggml_tile_config_init`` assigns, read from its source."""
    shapes = _TILE_SHAPE.findall((source / _AMX_SOURCE).read_text())
    if not shapes or [int(tile) for tile, _, _ in shapes] != list(range(len(shapes))):
        raise SystemExit(f"{_AMX_SOURCE}: no tile shapes found; the source package changed")
    return {"rows": [int(rows) for _, rows, _ in shapes], "colsb": [int(colsb) for _, _, colsb in shapes]}


def patch_source(
    source: Path, mode: str, version: str, build_id: str, tile_config: dict[str, list[int]]
) -> None:
    """Apply the edits the module docstring lists and write the build record."""
    local_version = f"{version}+{mode}.{build_id}"
    _replace_once(
        source / "llama_cpp/__init__.py", f'__version__ = "{version}"', f'__version__ = "{local_version}"'
    )
    _replace_once(source / _AMX_SOURCE, _TILE_LOADCONFIG_CALL, _TILE_LOADCONFIG_FIXED)
    variants: list[str] = []
    if mode == "portable":
        variants = x86_variants(source)
        install = "llama_cpp_python_install_target(ggml-cpu)\n"
        installs = "".join(f"    llama_cpp_python_install_target(ggml-cpu-{v})\n" for v in variants)
        _replace_once(source / "CMakeLists.txt", install, install + installs)
    record: dict[str, object] = {
        "identity": build_id,
        "version": local_version,
        "mode": mode,
        "variants": variants,
        "cmakeArgs": cmake_args(mode),
        "compiler": compiler_version().splitlines()[0],
        # What every ldtilecfg must load; _check_amx proves it of the built library.
        "amxTileConfig": tile_config,
    }
    (source / "llama_cpp/sidecar_build.json").write_text(json.dumps(record, indent=2) + "\n")


def _check_amx(wheel: Path, mode: str, expected: dict[str, list[int]]) -> None:
    """Fail the build unless every ldtilecfg in the wheel's AMX code loads the config the source writes."""
    name = f"libggml-cpu-{AMX_VARIANT}.so" if mode == "portable" else "libggml-cpu.so"
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        member = f"llama_cpp/lib/{name}"
        if member not in archive.namelist():
            raise SystemExit(f"{wheel.name} has no {member}")
        library = Path(archive.extract(member, scratch))
        problems = tile_config_check.check_library(library, expected)
        if problems:
            raise SystemExit(
                f"{name}: tile configs not fully written before ldtilecfg:\n" + "\n".join(problems)
            )
        if mode == "portable" and not tile_config_check.loads_tile_config(library):
            raise SystemExit(f"{name} has no ldtilecfg: the AMX code was not built")


def build(mode: str) -> Path:
    """The cached wheel for ``mode``, built first if this identity has none."""
    version = pinned_version()
    sdist = fetch_sdist(version)
    build_id = identity(mode, sdist)
    target = cache_dir() / "wheels" / f"{mode}-{build_id}"
    existing = sorted(target.glob("*.whl"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(prefix="llama-build-") as scratch:
        shutil.unpack_archive(sdist, scratch)
        source = Path(scratch) / f"llama_cpp_python-{version}"
        tile_config = tile_shapes(source)
        patch_source(source, mode, version, build_id, tile_config)
        env = {**os.environ, "CMAKE_ARGS": " ".join(cmake_args(mode))}
        out = Path(scratch) / "wheel"
        print(
            f"building llama-cpp-python {version} ({mode}, {build_id}); this takes minutes", file=sys.stderr
        )
        # A local directory is never served from pip's wheel cache: the identity above is the cache.
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out)]
        subprocess.run([*pip, str(source)], env=env, check=True)
        wheel = next(out.glob("*.whl"))
        try:
            _check_amx(wheel, mode, tile_config)
        except SystemExit:
            rejected = cache_dir() / "rejected" / f"{mode}-{build_id}"
            rejected.mkdir(parents=True, exist_ok=True)
            shutil.move(str(wheel), rejected / wheel.name)
            print(f"the rejected wheel is kept for inspection in {rejected}", file=sys.stderr)
            raise
        target.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheel), target / wheel.name))


def install(wheel: Path, python: str) -> None:
    """Install ``wheel`` into ``python``'s environment unless that exact build is there already."""
    wanted = wheel.name.split("-")[1]
    probe = "import importlib.metadata as m; print(m.version('llama-cpp-python'))"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
    if found == wanted:
        return
    pip = [python, "-m", "pip", "install", "--quiet"]
    # The same version number may be installed as another build: replace only the package,
    # then let pip add whatever of its dependencies is missing.
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(wheel)], check=True)
    subprocess.run([*pip, str(wheel)], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", action="store_const", const="native", default="portable", dest="mode")
    parser.add_argument(
        "--install", metavar="PYTHON", help="install the wheel into this interpreter's environment"
    )
    args = parser.parse_args(argv)
    wheel = build(args.mode)
    if args.install:
        install(wheel, args.install)
    print(wheel)


if __name__ == "__main__":
    main()
