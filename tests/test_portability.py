"""The llama.cpp build runs on every x86-64 CPU: its variants, its AMX code, and older CPUs under qemu.

The installed llama-cpp-python must be the project's portable build (``native/build_wheel.py``,
which ``make install`` uses). Its AMX variant is proven right from its machine code; the
check itself is shown to catch GCC's dropped tile-config stores; and the real sidecar
streams from the embedded model on emulated Nehalem (SSE4.2) and Haswell (AVX2) CPUs,
loading the variant each of them should get.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from native import tile_config_check
from native.build_wheel import AMX_VARIANT
from sidecar.engine.backends import BUILD_RECORD, amx_left_out_reason

from .harness import RawSidecar

_SPEC = importlib.util.find_spec("llama_cpp")
assert _SPEC is not None and _SPEC.origin is not None
PACKAGE = Path(_SPEC.origin).parent
LIB = PACKAGE / "lib"
# How fast an emulated CPU is: minutes where the host takes a second. Only a handful of
# tokens are asked for; the budget is for Python's start-up and the first decode.
EMULATED_WAIT = 100.0


@pytest.fixture(scope="module")
def build_record() -> dict[str, Any]:
    path = PACKAGE / BUILD_RECORD
    assert path.exists(), f"{PACKAGE} is not the project's build (no {BUILD_RECORD}): run `make install`"
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def test_the_installed_build_is_portable_with_every_variant(build_record: dict[str, Any]) -> None:
    assert build_record["mode"] == "portable"
    assert "-DGGML_NATIVE=OFF" in build_record["cmakeArgs"]
    variants = build_record["variants"]
    assert {"x64", "sse42", "haswell", "skylakex", "zen4", AMX_VARIANT} <= set(variants)
    assert sorted(p.name for p in LIB.glob("libggml-cpu-*.so")) == sorted(
        f"libggml-cpu-{v}.so" for v in variants
    )
    assert not (LIB / "libggml-cpu.so").exists(), "a CPU backend built for one CPU is linked in"


def test_every_ldtilecfg_of_the_amx_variant_loads_the_config_the_source_writes(
    build_record: dict[str, Any],
) -> None:
    library = LIB / f"libggml-cpu-{AMX_VARIANT}.so"
    sites = tile_config_check.tile_config_sites(library)
    assert sites, "the AMX variant has no ldtilecfg: its AMX code was not built"
    expected = build_record["amxTileConfig"]
    for site in sites:
        assert site.config.problems(expected) == [], site


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to compile the GCC case")
@pytest.mark.parametrize("fixed", [False, True], ids=["_tile_loadconfig", "full-operand"])
def test_the_tile_config_check_catches_gcc_dropping_the_config_stores(tmp_path: Path, fixed: bool) -> None:
    # llama.cpp's ggml_tile_config_init as it is, and with the build's fix.
    load = '__asm__ volatile("ldtilecfg %0" : : "m"(tc));' if fixed else "_tile_loadconfig(&tc);"
    source = tmp_path / "config.cpp"
    source.write_text(
        textwrap.dedent(
            """
            #include <immintrin.h>
            #include <cstdint>
            struct tile_config_t {
                uint8_t palette_id = 0; uint8_t start_row = 0; uint8_t reserved_0[14] = {0};
                uint16_t colsb[16] = {0}; uint8_t rows[16] = {0};
            };
            void ggml_tile_config_init() {
                static thread_local bool done = false;
                if (done) return;
                alignas(64) tile_config_t tc = {};
                tc.palette_id = 1;
                tc.rows[0] = 8;   tc.colsb[0] = 64;
                tc.rows[1] = 16;  tc.colsb[1] = 32;
                LOAD
                done = true;
            }
            """
        ).replace("LOAD", load)
    )
    library = tmp_path / "config.so"
    flags = ["-O3", "-mavx512f", "-mavx512vnni", "-mamx-tile", "-mamx-int8", "-fPIC", "-shared"]
    subprocess.run(["g++", *flags, str(source), "-o", str(library)], check=True)
    problems = tile_config_check.check_library(library, {"rows": [8, 16], "colsb": [64, 32]})
    compiler = subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True).stdout.strip()
    if fixed:
        assert problems == []
    elif int(compiler.split(".")[0]) <= 12:
        assert problems and "no tile has rows" in problems[0], problems
    else:
        # A GCC that keeps the stores compiles it right; the check must then agree.
        assert problems == [] or "no tile has rows" in problems[0], problems


def test_amx_is_left_out_only_outside_the_projects_checked_build() -> None:
    checked = {"amxTileConfig": {"rows": [8], "colsb": [64]}}
    assert amx_left_out_reason(["AMX", "CPU_REPACK"], checked) is None
    assert amx_left_out_reason(["CPU_REPACK"], None) is None
    reason = amx_left_out_reason(["AMX", "CPU_REPACK"], None)
    assert reason is not None and "20824" in reason
    assert amx_left_out_reason(["AMX"], {"mode": "portable"}) is not None


def _load_with_buffer_types_left_out(model: str, leave_out: dict[str, str]) -> dict[str, Any]:
    """In a fresh process (the choice is made once per process): choose, load ``model``, report."""
    script = textwrap.dedent(
        f"""
        import json
        import llama_cpp
        from sidecar.engine import backends

        lines = []
        @llama_cpp.llama_log_callback
        def keep(level, text, data):
            lines.append(text.decode(errors="replace"))
        llama_cpp.llama_log_set(keep, None)
        chosen = backends.choose_cpu_backend(llama_cpp, leave_out={leave_out!r})
        llm = llama_cpp.Llama({model!r}, n_ctx=256, verbose=True)
        left_out = [item.buffer_type for item in chosen.left_out]
        print(json.dumps({{"bufferTypes": chosen.buffer_types, "leftOut": left_out, "log": "".join(lines)}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_buffer_types_left_out_are_gone_from_the_list_llama_cpp_reads(default_model: str) -> None:
    # The guard's mechanism on the real library, whatever this CPU offers (CPU_REPACK here;
    # AMX first on Intel CPUs with AMX). llama.cpp names the buffer type it prefers for a
    # weight that cannot go there (the token embeddings: only matrix products can).
    offered = _load_with_buffer_types_left_out(default_model, {})
    assert offered["bufferTypes"] and offered["leftOut"] == []
    preferred = re.findall(r"preferred buffer type (\S+),", offered["log"])
    assert preferred and set(preferred) <= set(offered["bufferTypes"]), offered["log"][-3000:]
    leave_out = dict.fromkeys(offered["bufferTypes"], "left out by the test")
    left_out = _load_with_buffer_types_left_out(default_model, leave_out)
    assert left_out["bufferTypes"] == [] and left_out["leftOut"] == list(leave_out)
    assert "preferred buffer type" not in left_out["log"]
    assert "CPU_Mapped model buffer size" in left_out["log"]


def _qemu_or_skip() -> str:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-user is not installed (make test installs it where it may: as root)")
    return qemu


@pytest.mark.parametrize(("cpu", "variant"), [("Nehalem", "sse42"), ("Haswell", "haswell")])
def test_the_sidecar_streams_on_an_older_cpu(default_model: str, cpu: str, variant: str) -> None:
    # OPENBLAS_CORETYPE, where the host sets it, names the host's CPU; numpy's OpenBLAS
    # would run that CPU's kernels on the emulated one. Name the emulated CPU instead.
    sidecar = RawSidecar(emulator=[_qemu_or_skip(), "-cpu", cpu], env={"OPENBLAS_CORETYPE": cpu})
    try:
        sidecar.request("initialize", {"protocolVersion": "1.1"}, timeout=EMULATED_WAIT)
        model = sidecar.request(
            "loadModel", {"modelPath": default_model, "contextSize": 256}, timeout=EMULATED_WAIT
        )
        assert model["backend"]["variant"] == variant, model["backend"]
        chunks, response = sidecar.stream(
            {"prompt": "Hi", "maxTokens": 3, "temperature": 0}, timeout=EMULATED_WAIT
        )
        result = response["result"]
        assert [c["isFinal"] for c in chunks].count(True) == 1 and chunks[-1]["isFinal"]
        assert 1 <= result["usage"]["completionTokens"] <= 3 and result["finishReason"] in ("length", "stop")
        assert "".join(c["content"] for c in chunks) == result["text"]
        sidecar.request("shutdown", timeout=EMULATED_WAIT)
        assert sidecar.wait_exit(EMULATED_WAIT) == 0
    finally:
        sidecar.stop()


def test_a_changed_recipe_or_flag_is_another_build(monkeypatch: pytest.MonkeyPatch) -> None:
    # pip's wheel cache would hand back the first wheel whatever the flags: the build's own
    # identity must change with them, so that a flag change always rebuilds.
    from native import build_wheel

    sdist = next((build_wheel.cache_dir() / "sdist").glob("llama_cpp_python-*.tar.gz"), None)
    if sdist is None:
        pytest.skip("no cached source package (make install downloads it)")
    installed = json.loads((PACKAGE / BUILD_RECORD).read_text())
    portable = build_wheel.identity("portable", sdist)  # with this environment's CMAKE_ARGS, as installed
    assert installed["identity"] == portable, "the installed build is not this recipe's: run make install"
    assert portable == build_wheel.identity("portable", sdist)
    assert portable != build_wheel.identity("native", sdist)
    monkeypatch.setenv("CMAKE_ARGS", os.environ.get("CMAKE_ARGS", "") + " -DGGML_OPENMP=OFF")
    assert build_wheel.identity("portable", sdist) != portable
