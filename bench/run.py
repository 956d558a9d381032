"""Benchmark the sidecar against in-process llama.cpp; see bench/README.md.

    .venv/bin/python bench/run.py                         # full run (~8 min), writes bench/results/
    .venv/bin/python bench/run.py --quick --out /tmp/b    # smoke test of the harness (< 1 min)

Runs five phases (harness/compare.py, boundary.py, concurrency.py, sessions.py, package.py), then
writes ``latest.json``, ``latest.md`` and ``latest.png`` into ``--out``.
Drivers' logs and the generated tiny model go to ``--out``/tmp/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.config import BENCH, NATIVE_PYTHON, REPO, SYSTEMS, TS_CLIENT, Settings


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round of everything: a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH / "results" / _cpu()["family"],
        help="where results go (bench/results/<CPU family>: amd-avx512, intel-amx, …; one run per family)",
    )
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, the same for every system")
    parser.add_argument("--context-size", type=int, default=2048, help="context size for every system")
    parser.add_argument("--model", help="GGUF file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 5; quick 1)")
    parser.add_argument("--max-tokens", type=int, help="tokens per generation (default 128; quick 16)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait for other processes to go idle first (default 60; quick 0)",
    )
    return parser.parse_args(argv)


def _check_prerequisites() -> None:
    try:
        import matplotlib  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: .venv/bin/pip install -r bench/requirements.txt") from exc
    if not NATIVE_PYTHON.exists():
        raise SystemExit(f"{NATIVE_PYTHON} is missing: `make bench/.native-venv/.installed` builds it")
    if not TS_CLIENT.exists():
        raise SystemExit(
            f"{TS_CLIENT} is missing: build it with `cd electron-example && npm ci && npm run build`"
        )
    if not (BENCH / "node" / "node_modules" / "node-llama-cpp").exists():
        print("[bench] installing bench/node (node-llama-cpp)", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH / "node", check=True)


def _settings(args: argparse.Namespace) -> Settings:
    if args.model is None:
        from sidecar.model_paths import default_model_path

        args.model = str(default_model_path())
    settings = Settings.for_mode(
        quick=args.quick,
        model_path=args.model,
        out=args.out,
        threads=args.threads,
        context_size=args.context_size,
    )
    overrides = {"rounds": args.rounds, "max_tokens": args.max_tokens}
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _command_output(command: list[str], cwd: Path = REPO) -> str:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The CPU flags that decide which llama.cpp variant runs (and so the figures).
_SIMD_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
    "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


def _cpu() -> dict[str, Any]:
    """The CPU's model, vendor and SIMD flags, and the family its results are filed under."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = [flag for flag in _SIMD_FLAGS if flag in fields.get("flags", "").split()]
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(
        fields.get("vendor_id", ""), platform.machine()
    )
    level = next((name for flag, name in _LEVELS if flag in flags), "baseline")
    model = fields.get("model name") or platform.processor() or platform.machine()
    return {"model": model, "vendor": vendor, "flags": flags, "family": f"{vendor}-{level}"}


_LEVELS = (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse42"))


def _meta(
    settings: Settings,
    prompts: list[Any],
    noise: dict[str, Any],
    waited: float,
    seconds: float,
    compare_setup: dict[str, Any],
) -> dict[str, Any]:
    node_package = BENCH / "node" / "node_modules" / "node-llama-cpp" / "package.json"
    dirty = bool(_command_output(["git", "status", "--porcelain", "--", "sidecar"]).strip())
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _command_output(["git", "rev-parse", "--short", "HEAD"])
        + (" + local changes" if dirty else ""),
        "cpu": _cpu()["model"],
        "cpuFlags": _cpu()["flags"],
        "cpuFamily": _cpu()["family"],
        "backends": {key: setup.get("backend") for key, setup in compare_setup.items()},
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "llamaCppPython": importlib.metadata.version("llama-cpp-python"),
        "node": _command_output(["node", "--version"]),
        "nodeLlamaCpp": json.loads(node_package.read_text())["version"],
        "settings": {**dataclasses.asdict(settings), "out": str(settings.out)},
        "prompts": [{"name": p.name, "kind": p.kind, "tokens": p.tokens} for p in prompts],
        "noise": {**noise, "waitedForQuietSeconds": waited},
        "durationSeconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _check_prerequisites()
    settings = _settings(args)
    from harness.analysis import analyze
    from harness.boundary import run_boundary, write_tiny_model
    from harness.chart import draw
    from harness.compare import run_compare
    from harness.concurrency import run_concurrency
    from harness.noise import NoiseLedger, wait_for_quiet
    from harness.package import run_package
    from harness.prompts import build_prompts
    from harness.report import markdown, write_json
    from harness.sessions import run_sessions

    started = time.monotonic()
    waited = wait_for_quiet(args.wait_quiet if args.wait_quiet is not None else 0 if settings.quick else 60)
    noise = NoiseLedger(attempts=settings.attempts)
    prompts = build_prompts(settings.model_path, settings.long_prompt_tokens)
    tiny_model = write_tiny_model(settings.tmp)
    compare = run_compare(settings, prompts, [system.key for system in SYSTEMS], noise)
    boundary = run_boundary(settings, tiny_model, noise)
    concurrency = run_concurrency(settings, [p for p in prompts if p.kind == "short"], noise)
    sessions = run_sessions(settings, noise)
    package = run_package(settings, noise)
    results = {
        "meta": _meta(
            settings, prompts, noise.report(), waited, time.monotonic() - started, compare["setup"]
        ),
        "figures": analyze(compare, boundary, concurrency, sessions, package),
        "raw": {"compare": compare, "boundary": boundary, "sessions": sessions, "package": package},
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    write_json(settings.out / "latest.json", results)
    (settings.out / "latest.md").write_text(markdown(results))
    draw(settings.out / "latest.png", results)
    print(f"[bench] wrote {settings.out}/latest.json, latest.md, latest.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
