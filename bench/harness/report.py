"""Write the results: ``latest.json`` (everything) and ``latest.md`` (the tables a person reads)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis import session_targets
from .config import SYSTEMS

__all__ = ["markdown", "write_json"]


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean(results), indent=1, ensure_ascii=False) + "\n")


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _spread(summary: dict[str, Any] | None, digits: int = 1) -> str:
    """median (min–max)"""
    if not summary or not summary.get("n"):
        return "–"
    median, low, high = (_num(summary[k], digits) for k in ("median", "min", "max"))
    return median if summary["n"] == 1 else f"{median} ({low}–{high})"


def _signed(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.{digits}f}{unit}"


def _ratio(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _systems_table(figures: dict[str, Any]) -> list[str]:
    systems = figures["systems"]
    keys = [s for s in SYSTEMS if s.key in systems]
    columns = [(systems[s.key], systems[s.key].get("vsInProcess", {})) for s in keys]

    def row(label: str, cell: Callable[[dict[str, Any], dict[str, Any]], str]) -> list[str]:
        return [label] + [cell(f, v) for f, v in columns]

    rows = [
        row("TTFT p50 / p95, short prompts (ms)", lambda f, _: f"{_num(f['ttftMs']['median'], 2)} / "
            f"{_num(f['ttftMs']['p95'], 2)}"),
        row("TTFT overhead vs in-process, paired p50",
            lambda _, v: _signed(v.get("ttftOverheadMs"), 2, " ms")),
        row("TTFT p50, prompt cached (1 decode step) (ms)", lambda f, _: _spread(f["cachedTtftMs"], 2)),
        row("… overhead vs in-process, paired p50",
            lambda _, v: _signed(v.get("cachedTtftOverheadMs"), 2, " ms")),
        row("decode tok/s, short prompts", lambda f, _: _spread(f["decodeTps"])),
        row("decode ÷ in-process (paired)", lambda _, v: _ratio(v.get("decodeRatio"))),
        row("prompt processing tok/s, long prompt", lambda f, _: _spread(f["promptTps"], 0)),
        row("prompt processing ÷ in-process", lambda _, v: _ratio(v.get("promptTpsRatio"))),
        row("TTFT, long prompt (ms)", lambda f, _: _spread(f["longTtftMs"])),
        row("decode tok/s, long prompt", lambda f, _: _spread(f["longDecodeTps"])),
        row("end-to-end, short prompts (ms)", lambda f, _: _spread(f["e2eMs"], 0)),
        row("end-to-end ÷ in-process", lambda _, v: _ratio(v.get("e2eRatio"))),
        row("end-to-end, long prompt (ms)", lambda f, _: _spread(f["longE2eMs"], 0)),
        row("first prompt after load: TTFT (ms)", lambda f, _: _num(f["firstPromptTtftMs"], 2)),
        row("… cold penalty over warm (ms)", lambda f, _: _signed(f["coldPenaltyMs"], 2)),
        row("model load (ms)", lambda f, _: _num(f["loadMs"], 0)),
        row("spawn → initialize answered (ms)", lambda f, _: _num(f["spawnToReadyMs"], 0)),
        row("idle RSS before any model (MiB)", lambda f, _: _num(f["idleRssMb"])),
        row("peak RSS of the model's process (MiB)", lambda f, _: _num(f["peakRssMb"])),
        row("sidecar's own TTFT (ms) / decode tok/s", lambda f, _: f"{_num(f['serverTtftMs'], 2)} / "
            f"{_num(f['serverDecodeTps'])}" if f["serverTtftMs"] else "–"),
        row("same greedy text as in-process", lambda _, v: str(v.get("sameOutputs", "(itself)"))),
    ]  # fmt: skip
    return _table(["", *(s.label for s in keys)], rows)


def _boundary_table(boundary: dict[str, Any]) -> list[str]:
    chunks, tiny, null = (
        boundary["chunksPerSecond"],
        boundary["tinyTokensPerSecond"],
        boundary["nullEngineChunksPerSecond"],
    )
    rows = []
    for key, label in (("sidecar-ts", "TS client (Node)"), ("sidecar-py", "Python client")):
        ping = boundary["pingUs"].get(key)
        rows.append([
            label,
            f"{_num(ping['median'])} / {_num(ping['p95'])} / {_num(ping['p99'])}" if ping else "–",
            _spread(chunks.get(key), 0),
            _spread(tiny.get(key), 0),
            _spread(null.get(key), 0),
            _spread(boundary["spawnToReadyMs"].get(key), 0),
            _spread(boundary["idleRssMb"].get(key)),
        ])  # fmt: skip
    floor, echo = "llama-cpp-python", boundary["pingUs"].get("echo")
    rows.append(["Node → Python echo child (pipe floor)",
                 f"{_num(echo['median'])} / {_num(echo['p95'])} / {_num(echo['p99'])}" if echo else "–",
                 "–", "–", "–", "–", "–"])  # fmt: skip
    rows.append(["in-process llama-cpp-python (floor)", "–", _spread(chunks.get(floor), 0),
                 _spread(tiny.get(floor), 0), "–", "–", "–"])  # fmt: skip
    header = ["", "ping p50 / p95 / p99 (µs)", "streamChunk/s (tiny model)", "tokens/s (tiny model)",
              "streamChunk/s (generation free)", "spawn → ready (ms)", "idle RSS (MiB)"]  # fmt: skip
    return _table(header, rows)


def _concurrency_table(rows: list[dict[str, Any]]) -> list[str]:
    body = [
        [str(r["streams"]), str(r["models"]), str(r["threadsPerModel"]), _num(r["aggregateTps"]),
         _ratio(r["vsInProcessSingleStream"]), _num(r["slowestTtftMs"], 0)]
        for r in rows
    ]  # fmt: skip
    header = [
        "streams",
        "models",
        "threads per model",
        "aggregate tok/s",
        "÷ in-process, one at a time",
        "slowest TTFT (ms)",
    ]
    return _table(header, body)


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    rows = [
        [t["target"], f"{_num(t['measured'], 3 if t['unit'] == '×' else 1)} {t['unit']}",
         f"{'≥' if t['atLeast'] else '≤'} {t['limit']:,} {t['unit']}", verdict[t["met"]]]
        for t in targets
    ]  # fmt: skip
    return _table(["target", "measured", "goal", "verdict"], rows)


def _sessions_section(sessions: dict[str, Any], targets: list[dict[str, Any]]) -> list[str]:
    last, single, alternating, stateless = (
        sessions["turns"],
        sessions["single"],
        sessions["alternating"],
        sessions["stateless"],
    )
    scenarios = (single, alternating, stateless)
    rows = []
    for index in range(last):
        turns = [scenario["byTurn"][index] for scenario in scenarios]
        row = [str(index + 1), _num(turns[0]["promptTokens"]["median"], 0)]
        for turn in turns:
            row += [_spread(turn["ttftMs"]), _num(turn["evaluatedTokens"]["median"], 0)]
        rows.append(row)
    header = ["turn", "prompt tokens", "one session: TTFT (ms)", "evaluated",
              "two alternating sessions: TTFT (ms)", "evaluated", "stateless, whole history: TTFT (ms)",
              "evaluated"]  # fmt: skip
    checks = sessions["checks"]
    client_over_server = " / ".join(
        _num(scenario["clientOverServerMs"]["median"], 2) for scenario in scenarios
    )
    return [
        f"Two conversations of {last} short user messages under one system prompt, greedy, "
        f"maxTokens {sessions['maxTokens']} per reply, through the Python client: one session at a time, "
        "two sessions alternating turn by turn on one model, and the same alternating conversation "
        "without sessions (`messages` with the whole history each turn). TTFT is taken at the client "
        "(call → first text); median (min–max) over rounds and both conversations. *Evaluated*: the "
        "prompt's tokens minus the prefix llama-cpp-python reused (from the sidecar's log).",
        "",
        *_targets_table(targets),
        "",
        *_table(header, rows),
        "",
        f"- turn {last} ÷ turn 1, one session (pairs: same round and conversation): "
        f"{_spread(single['lastOverFirst'], 3)}",
        f"- TTFT turns 2–{last}: one session {_spread(single['laterTtftMs'])} ms, alternating "
        f"{_spread(alternating['laterTtftMs'])} ms; alternating ÷ one session: "
        f"{_spread(alternating['overSingle'], 3)} (pairs: same round and conversation; ratio of the means: "
        f"{_num(alternating['overSingleMeans'], 3)})",
        f"- stateless ÷ alternating sessions at turn {last}: {_spread(stateless['lastOverAlternating'], 2)}",
        f"- client TTFT − the sidecar's own `ttftMs`, median (one / alternating / stateless): "
        f"{client_over_server} ms",
        f"- checks: alternating sessions gave the single sessions' greedy replies "
        f"{checks['sameRepliesAlternatingAsSingle']} (first round); stateless prompts of the same length as "
        f"the sessions' {checks['samePromptTokensStatelessAsSingle']}; history dropped to fit the context: "
        f"{checks['droppedMessages']} messages",
    ]


def _package_lines(package: dict[str, Any] | None) -> list[str]:
    if package is None:
        return ["The packaged sidecar was not built (`make package`): not measured.", ""]
    spawn = package["spawnToReadyMs"]
    model = "with" if package["modelIncluded"] else "without"
    return [
        "## The packaged sidecar",
        "",
        f"`dist/llama-sidecar` ({model} the embedded model): {package['sizeBytes'] / 2**20:,.0f} MiB "
        f"on disk; spawn → `initialize` answered {_spread(spawn, 0)} ms.",
        "",
    ]


def _where(meta: dict[str, Any]) -> str:
    """The CPU's SIMD flags and the llama.cpp CPU variant each system ran on."""
    variants = {
        key: (backend.get("variant") or "linked in") + f" ({backend.get('build')})"
        for key, backend in (meta.get("backends") or {}).items()
        if backend
    }
    ran = "; ".join(f"{key}: {variant}" for key, variant in variants.items()) or "not reported"
    flags = " ".join(meta.get("cpuFlags", []))
    return f"CPU family `{meta.get('cpuFamily')}`, flags {flags}. llama.cpp CPU variant: {ran}."


def markdown(results: dict[str, Any]) -> str:
    meta, figures, settings = results["meta"], results["figures"], results["meta"]["settings"]
    noise = meta["noise"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} · commit `{meta['commit']}` · {meta['cpu']}, {meta['cores']} cores · "
        f"Python {meta['python']}, llama-cpp-python {meta['llamaCppPython']}, Node {meta['node']}, "
        f"node-llama-cpp {meta['nodeLlamaCpp']}",
        "",
        _where(meta),
        "",
        f"Model `{Path(settings['model_path']).name}`, {settings['threads']} threads, context "
        f"{settings['context_size']}, batch {settings['batch_size']}, greedy, "
        f"maxTokens {settings['max_tokens']}; "
        f"{settings['rounds']} measured rounds after {settings['warmup_rounds']} warm-up"
        f"{' (**quick mode**: a smoke test, not a measurement)' if settings['quick'] else ''}. "
        f"Figures are medians (min–max). Other processes used {noise['otherCoresAverage']:.2f} cores "
        f"on average during measured calls; {noise['samplesRetaken']} samples were retaken because of them, "
        f"{noise['samplesStillNoisy']} stayed noisy.",
        "",
        "## Targets",
        "",
        *_targets_table(figures["targets"]),
        "",
        "## Systems",
        "",
        *_systems_table(figures),
        "",
        "## The boundary",
        "",
        *_boundary_table(figures["boundary"]),
        "",
        *_package_lines(figures.get("package")),
        "## Concurrent streams (TS client, one sidecar)",
        "",
        *_concurrency_table(figures["concurrency"]),
        "",
    ]
    if "sessions" in figures:
        lines += [
            "## Chat sessions (Python client, one sidecar)",
            "",
            *_sessions_section(figures["sessions"], session_targets(figures["sessions"])),
            "",
        ]
    return "\n".join(lines)
