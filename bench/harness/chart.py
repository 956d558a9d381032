"""The picture of a run (``latest.png``): speed, latency, memory, concurrency, chat sessions, targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .config import SYSTEMS  # noqa: E402

__all__ = ["draw"]

_COLORS = {
    "llama-cpp-python": "#7f8c8d",
    "llama-cpp-python-native": "#b2babb",
    "sidecar-py": "#2e86de",
    "sidecar-ts": "#8e44ad",
    "node-llama-cpp": "#27ae60",
}
_SHORT_LABELS = {
    "llama-cpp-python": "llama-cpp-python\nin-process",
    "llama-cpp-python-native": "llama-cpp-python\nnative build",
    "sidecar-py": "sidecar\nPython client",
    "sidecar-ts": "sidecar\nTS client",
    "node-llama-cpp": "node-llama-cpp\nin-process",
}


def _ok(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _bars(
    ax: Axes, figures: dict[str, Any], field: str, title: str, notes: dict[str, str], *, upper: str
) -> None:
    """One bar per system: the median; whiskers to the min and ``upper`` (max, or p95); a note above."""
    keys = [s.key for s in SYSTEMS if s.key in figures]
    summaries = [figures[k][field] for k in keys]
    medians = [s["median"] for s in summaries]
    low = [m - s["min"] if upper == "max" else 0.0 for m, s in zip(medians, summaries, strict=True)]
    high = [s[upper] - m for m, s in zip(medians, summaries, strict=True)]
    ax.bar(range(len(keys)), medians, yerr=[low, high], capsize=4, color=[_COLORS[k] for k in keys])
    top = max((m + h for m, h in zip(medians, high, strict=True) if _ok(m + h)), default=1.0)
    for index, key in enumerate(keys):
        if _ok(medians[index]):
            y = medians[index] + (high[index] if _ok(high[index]) else 0) + top * 0.02
            ax.text(index, y, notes[key], ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.set_ylim(0, top * 1.25)
    ax.set_xticks(range(len(keys)), [_SHORT_LABELS[k] for k in keys], fontsize=8)
    ax.set_title(title, fontsize=11)


def _ratio_notes(systems: dict[str, Any], field: str, ratio_key: str, digits: int) -> dict[str, str]:
    notes = {}
    for key, figures in systems.items():
        value = figures[field]["median"]
        ratio = figures.get("vsInProcess", {}).get(ratio_key)
        notes[key] = f"{value:.{digits}f}" + (f"\n{ratio:.2f}×" if _ok(ratio) else "")
    return notes


def _ttft_notes(systems: dict[str, Any], field: str, overhead_key: str) -> dict[str, str]:
    notes = {}
    for key, figures in systems.items():
        overhead = figures.get("vsInProcess", {}).get(overhead_key)
        notes[key] = f"{figures[field]['median']:.1f}" + (f"\n{overhead:+.1f} ms" if _ok(overhead) else "")
    return notes


def _memory(ax: Axes, systems: dict[str, Any]) -> None:
    keys = [s.key for s in SYSTEMS if s.key in systems]
    peaks = [systems[k]["peakRssMb"] for k in keys]
    ax.bar(range(len(keys)), peaks, color=[_COLORS[k] for k in keys])
    for index, key in enumerate(keys):
        idle = systems[key]["idleRssMb"]
        label = f"{peaks[index]:.0f}" + (f"\nidle {idle:.0f}" if _ok(idle) else "")
        ax.text(index, peaks[index] * 1.02, label, ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.set_ylim(0, max(peaks) * 1.3)
    ax.set_xticks(range(len(keys)), [_SHORT_LABELS[k] for k in keys], fontsize=8)
    ax.set_title("Peak RSS of the process holding the model (MiB)", fontsize=11)


def _concurrency(ax: Axes, rows: list[dict[str, Any]], single: float | None) -> None:
    labels = [
        f"{r['streams']} stream(s)\n{r['models']} model(s)\n× {r['threadsPerModel']} thread(s)" for r in rows
    ]
    values = [r["aggregateTps"] for r in rows]
    ax.bar(range(len(rows)), values, color="#8e44ad")
    for index, value in enumerate(values):
        ax.text(index, value * 1.02, f"{value:.0f}", ha="center", va="bottom", fontsize=9, fontweight="bold")
    if single is not None and _ok(single):
        ax.axhline(
            single, color="#7f8c8d", linestyle="--", linewidth=1, label="in-process, one prompt at a time"
        )
        ax.legend(loc="lower left", fontsize=8)
    ax.set_ylim(0, max([*values, single or 0]) * 1.25)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_title("Aggregate tok/s incl. prompts, simultaneous streams (TS client)", fontsize=11)


def _targets(ax: Axes, targets: list[dict[str, Any]]) -> None:
    """The targets in two columns: ✓ met, ✗ missed, ? not measured."""
    ax.axis("off")
    ax.set_title("Targets", fontsize=12, fontweight="bold")
    marks = {True: ("✓", "#1e8449"), False: ("✗", "#c0392b"), None: ("?", "#7f8c8d")}
    per_column = math.ceil(len(targets) / 2)
    for index, target in enumerate(targets):
        mark, color = marks[target["met"]]
        measured, unit = target["measured"], target["unit"]
        value = "–" if measured is None else f"{measured:,.3f}" if unit == "×" else f"{measured:,.1f}"
        goal = f"{'≥' if target['atLeast'] else '≤'} {target['limit']:,}"
        column, row = divmod(index, per_column)
        ax.text(
            0.5 * column,
            1 - (row + 0.5) / per_column,
            f"{mark} {target['target']}: {value} {unit}  (goal {goal})",
            color=color,
            fontsize=10,
            transform=ax.transAxes,
        )


_SESSION_LINES = (
    ("single", "one session", "#2e86de"),
    ("alternating", "two sessions, alternating", "#e67e22"),
    ("stateless", "stateless: whole history each turn", "#7f8c8d"),
)


def _session_lines(ax: Axes, sessions: dict[str, Any], field: str, *, band: bool) -> None:
    """One line per scenario: the median by turn; with ``band``, shaded from min to max."""
    for key, label, color in _SESSION_LINES:
        by_turn = sessions[key]["byTurn"]
        turns = [turn["turn"] for turn in by_turn]
        ax.plot(turns, [t[field]["median"] for t in by_turn], marker="o", color=color, label=label)
        if band:
            low, high = [t[field]["min"] for t in by_turn], [t[field]["max"] for t in by_turn]
            ax.fill_between(turns, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xticks(range(1, sessions["turns"] + 1))
    ax.set_xlabel("turn", fontsize=9)


def _sessions_ttft(ax: Axes, sessions: dict[str, Any]) -> None:
    _session_lines(ax, sessions, "ttftMs", band=True)
    first = sessions["single"]["byTurn"][0]["ttftMs"]["median"]
    if _ok(first):
        ax.axhline(
            1.3 * first, color="#c0392b", linestyle=":", linewidth=1.2, label="1.3 × turn 1, one session"
        )
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _position: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.legend(loc="upper left", fontsize=8)
    ratio, over = (
        sessions["single"]["lastOverFirst"]["median"],
        sessions["alternating"]["overSingle"]["median"],
    )
    ax.set_title(
        f"Chat sessions: TTFT by turn (ms, log scale; median, min–max)\n"
        f"turn {sessions['turns']} ÷ turn 1: {ratio:.2f}×   alternating ÷ one session: {over:.2f}×",
        fontsize=11,
    )


def _sessions_evaluated(ax: Axes, sessions: dict[str, Any]) -> None:
    _session_lines(ax, sessions, "evaluatedTokens", band=False)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Prompt tokens evaluated per turn (the rest reused)", fontsize=11)


def _reference(ax: Axes, value: float | None, label: str) -> None:
    """A dotted line across the panel at ``value``, named in a legend."""
    if value is not None and _ok(value):
        ax.axhline(value, color="#c0392b", linestyle=":", linewidth=1.2, label=label)
        ax.legend(loc="lower left", fontsize=8)


def draw(path: Path, results: dict[str, Any]) -> None:
    figures, meta = results["figures"], results["meta"]
    systems, settings = figures["systems"], meta["settings"]
    single = systems.get("llama-cpp-python", {}).get("decodeTps", {}).get("median")
    throughput = systems.get("llama-cpp-python", {}).get("shortThroughputTps")
    sessions = figures.get("sessions")
    heights = (1.0, 1.0, 0.85, 0.6) if sessions else (1.0, 1.0, 0.55)
    fig = plt.figure(figsize=(18, 14 + (4 if sessions else 0)))
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights)
    panels = [[fig.add_subplot(grid[row, column]) for column in range(3)] for row in range(2)]
    decode_notes = _ratio_notes(systems, "decodeTps", "decodeRatio", 1)
    _bars(
        panels[0][0],
        systems,
        "decodeTps",
        "Decode tok/s, short prompts: median, min–max",
        decode_notes,
        upper="max",
    )
    _reference(panels[0][0], 0.97 * single if single else None, "0.97 × in-process")
    title = "Time to first token, short prompts (ms): p50, whisker p95"
    _bars(
        panels[0][1], systems, "ttftMs", title, _ttft_notes(systems, "ttftMs", "ttftOverheadMs"), upper="p95"
    )
    title = "TTFT, prompt cached: 1 decode step + overhead (ms)"
    notes = _ttft_notes(systems, "cachedTtftMs", "cachedTtftOverheadMs")
    _bars(panels[0][2], systems, "cachedTtftMs", title, notes, upper="p95")
    prompt_notes = _ratio_notes(systems, "promptTps", "promptTpsRatio", 0)
    title = f"Prompt processing tok/s, {meta['prompts'][-1]['tokens']}-token prompt"
    _bars(panels[1][0], systems, "promptTps", title, prompt_notes, upper="max")
    _memory(panels[1][1], systems)
    _concurrency(panels[1][2], figures["concurrency"], throughput)
    if sessions:
        _sessions_ttft(fig.add_subplot(grid[2, :2]), sessions)
        _sessions_evaluated(fig.add_subplot(grid[2, 2]), sessions)
    _targets(fig.add_subplot(grid[len(heights) - 1, :]), figures["targets"])
    mode = " — QUICK MODE (smoke test, not a measurement)" if settings["quick"] else ""
    others = meta["noise"]["otherCoresAverage"]
    mode += (
        f"\nother processes used {others:.2f} cores on average during measurements" if others > 0.05 else ""
    )
    fig.suptitle(
        f"llama sidecar vs in-process · {Path(settings['model_path']).name} · "
        f"{settings['threads']} threads · ctx {settings['context_size']} · greedy, "
        f"{settings['max_tokens']} tokens · {meta['cpu']} · {meta['date'][:10]}{mode}",
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
