"""From raw records to the figures the reports show, and the verdict on each target.

Warm figures come from the measured rounds only. "short" means the probe and
the three short chat prompts; "cached" the probe repeated with the prompt
cache holding it (TTFT = one decode step + overhead: the TTFT-overhead
target); "long" the ~1,500-token prompt. A sidecar
figure's ratio to in-process llama-cpp-python is the median over pairs of
runs of the same prompt in the same round (taken back to back).

Chat sessions (``session_figures``): TTFT by turn per scenario (single session,
two alternating sessions, stateless), and ratios taken within one round and
one conversation, then the median over those pairs: last turn ÷ first turn of
a single session; alternating ÷ single over turns 2..N; stateless ÷
alternating at the last turn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from .config import BASELINE, SYSTEMS
from .stats import Summary, paired, summarize

__all__ = ["analyze", "session_figures"]

_SHORT = ("probe", "short")


def _values(runs: Iterable[dict[str, Any]], field: str) -> list[float]:
    return [float(run[field]) for run in runs if run.get(field) is not None]


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _throughput(runs: list[dict[str, Any]]) -> float | None:
    """Tokens per second of wall time, first token included: Σ completion tokens ÷ Σ end-to-end."""
    wall = sum(run["e2eMs"] for run in runs) / 1000
    return sum(run["completionTokens"] for run in runs) / wall if wall else None


def _prompt_tps(run: dict[str, Any]) -> float | None:
    return run["promptTokens"] / (run["ttftMs"] / 1000) if run.get("ttftMs") else None


def _system(key: str, setup: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    short = [run for run in runs if run["kind"] in _SHORT]
    long = [run for run in runs if run["kind"] == "long"]
    warm_probe = summarize(_values([run for run in runs if run["kind"] == "probe"], "ttftMs"))
    first = setup["firstPrompt"]["ttftMs"]
    return {
        "ttftMs": summarize(_values(short, "ttftMs")),
        "cachedTtftMs": summarize(_values([run for run in runs if run["kind"] == "cached"], "ttftMs")),
        "decodeTps": summarize(_values(short, "decodeTps")),
        "e2eMs": summarize(_values(short, "e2eMs")),
        "longTtftMs": summarize(_values(long, "ttftMs")),
        "promptTps": summarize([tps for tps in map(_prompt_tps, long) if tps is not None]),
        "longDecodeTps": summarize(_values(long, "decodeTps")),
        "longE2eMs": summarize(_values(long, "e2eMs")),
        "completionTokens": summarize(_values(short, "completionTokens")),
        "firstPromptTtftMs": first,
        "coldPenaltyMs": first - warm_probe["median"] if first is not None else None,
        # What counts as no penalty: within the warm runs' own spread (at least 2 ms).
        "coldAllowanceMs": max(2.0, warm_probe["max"] - warm_probe["median"]),
        "loadMs": setup["loadMs"],
        "spawnToReadyMs": setup["spawnToReadyMs"],
        "idleRssMb": setup["idleRssMb"],
        "peakRssMb": setup["peakRssMb"],
        "serverTtftMs": _median(run["server"]["ttftMs"] for run in short if run.get("server")),
        "serverDecodeTps": _median(run["server"]["tokensPerSecond"] for run in short if run.get("server")),
    }


def _versus(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired comparison with the in-process runs of the same prompts and rounds."""
    if [(r["round"], r["prompt"]) for r in runs] != [(r["round"], r["prompt"]) for r in base]:
        raise ValueError("runs are not paired with the baseline's")

    def column(items: list[dict[str, Any]], field: str, kinds: tuple[str, ...]) -> list[float]:
        return [
            float("nan") if r.get(field) is None else float(r[field]) for r in items if r["kind"] in kinds
        ]

    long_tps = [_prompt_tps(r) or float("nan") for r in runs if r["kind"] == "long"]
    base_long_tps = [_prompt_tps(r) or float("nan") for r in base if r["kind"] == "long"]
    same = [r.get("text") == b.get("text") for r, b in zip(runs, base, strict=True) if r["round"] == 0]
    return {
        "decodeRatio": paired(
            column(runs, "decodeTps", _SHORT), column(base, "decodeTps", _SHORT), ratio=True
        ),
        "ttftOverheadMs": paired(column(runs, "ttftMs", _SHORT), column(base, "ttftMs", _SHORT), ratio=False),
        "cachedTtftOverheadMs": paired(
            column(runs, "ttftMs", ("cached",)), column(base, "ttftMs", ("cached",)), ratio=False
        ),
        "ttftRatio": paired(column(runs, "ttftMs", _SHORT), column(base, "ttftMs", _SHORT), ratio=True),
        "e2eRatio": paired(column(runs, "e2eMs", _SHORT), column(base, "e2eMs", _SHORT), ratio=True),
        "promptTpsRatio": paired(long_tps, base_long_tps, ratio=True),
        "longDecodeRatio": paired(
            column(runs, "decodeTps", ("long",)), column(base, "decodeTps", ("long",)), ratio=True
        ),
        "sameOutputs": f"{sum(same)}/{len(same)}",
    }


def _boundary(boundary: dict[str, Any]) -> dict[str, Any]:
    def per_key(streams: dict[str, list[dict[str, Any]]], field: str) -> dict[str, Summary]:
        return {key: summarize(_values(rows, field)) for key, rows in streams.items()}

    tiny, null = boundary["chunkStreams"]["tinyModel"], boundary["chunkStreams"]["nullEngine"]
    startup = boundary["startup"]
    return {
        "pingUs": boundary["pingUs"],
        "chunksPerSecond": per_key(tiny, "chunksPerSecond"),
        "tinyTokensPerSecond": per_key(tiny, "tokensPerSecond"),
        "nullEngineChunksPerSecond": per_key(null, "chunksPerSecond"),
        "spawnToReadyMs": {key: summarize(probe["spawnToReadyMs"]) for key, probe in startup.items()},
        "idleRssMb": {
            key: summarize([v for v in probe["idleRssMb"] if v is not None]) for key, probe in startup.items()
        },
    }


def analyze(
    compare: dict[str, Any],
    boundary: dict[str, Any],
    concurrency: list[dict[str, Any]],
    sessions: dict[str, Any] | None = None,
    package: dict[str, Any] | None = None,
) -> dict[str, Any]:
    runs, setup = compare["runs"], compare["setup"]
    systems = {key: _system(key, setup[key], runs[key]) for key in runs}
    for key in runs:
        if key != BASELINE and BASELINE in runs:
            systems[key]["vsInProcess"] = _versus(runs[key], runs[BASELINE])
    single = _throughput([run for run in runs.get(BASELINE, []) if run["kind"] == "short"])
    for row in concurrency:
        row["vsInProcessSingleStream"] = row["aggregateTps"] / single if single else None
    systems.get(BASELINE, {})["shortThroughputTps"] = single
    figures = {"systems": systems, "boundary": _boundary(boundary), "concurrency": concurrency}
    if sessions is not None:
        figures["sessions"] = session_figures(sessions)
    if package is not None:
        figures["package"] = {**package, "spawnToReadyMs": summarize(package["spawnToReadyMs"])}
    figures["targets"] = _targets(figures)
    return figures


def _target(name: str, measured: float | None, limit: float, unit: str, *, at_least: bool) -> dict[str, Any]:
    if measured is not None and math.isnan(measured):
        measured = None
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {
        "target": name,
        "measured": measured,
        "limit": limit,
        "unit": unit,
        "atLeast": at_least,
        "met": met,
    }


def _client_targets(label: str, figures: dict[str, Any], node: dict[str, Any] | None) -> list[dict[str, Any]]:
    versus = figures.get("vsInProcess", {})
    rows = [
        _target(f"decode tok/s, {label} ÷ in-process", versus.get("decodeRatio"), 0.97, "×", at_least=True),
        _target(
            f"TTFT p50 overhead (warm), {label}",
            versus.get("cachedTtftOverheadMs"),
            2.0,
            "ms",
            at_least=False,
        ),
        _target(
            f"first prompt after load over warm TTFT, {label}",
            figures["coldPenaltyMs"],
            round(figures["coldAllowanceMs"], 1),
            "ms",
            at_least=False,
        ),
    ]
    if node:
        rows += [
            _target(
                f"decode tok/s, {label} ÷ node-llama-cpp",
                _over(figures, node, "decodeTps"),
                1.2,
                "×",
                at_least=True,
            ),
            _target(
                f"prompt processing tok/s, {label} ÷ node-llama-cpp",
                _over(figures, node, "promptTps"),
                1.0,
                "×",
                at_least=True,
            ),
            _target(
                f"TTFT p50 short prompts, {label} ÷ node-llama-cpp",
                _over(figures, node, "ttftMs"),
                1.0,
                "×",
                at_least=False,
            ),
        ]
    return rows


def _over(figures: dict[str, Any], other: dict[str, Any], field: str) -> float | None:
    """The ratio of two systems' medians of ``field`` (their runs are not paired)."""
    mine, theirs = figures[field]["median"], other[field]["median"]
    return mine / theirs if mine is not None and theirs else None


def _build_targets(native: dict[str, Any]) -> list[dict[str, Any]]:
    """The portable build against the same source built for this CPU (both in-process, paired)."""
    versus = native.get("vsInProcess", {})

    def inverse(ratio: float | None) -> float | None:  # native ÷ portable -> portable ÷ native
        return 1 / ratio if ratio else None

    return [
        _target(
            "decode tok/s, portable build ÷ native build",
            inverse(versus.get("decodeRatio")),
            0.95,
            "×",
            at_least=True,
        ),
        _target(
            "prompt processing tok/s, portable build ÷ native build",
            inverse(versus.get("promptTpsRatio")),
            0.95,
            "×",
            at_least=True,
        ),
    ]


def _targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    systems, boundary = figures["systems"], figures["boundary"]
    node = systems.get("node-llama-cpp")
    rows = []
    for system in SYSTEMS:
        if system.is_sidecar and system.key in systems:
            rows += _client_targets(system.label, systems[system.key], node)
    if "llama-cpp-python-native" in systems:
        rows += _build_targets(systems["llama-cpp-python-native"])

    def ts(table: str) -> float | None:
        value: float | None = boundary[table].get("sidecar-ts", {}).get("median")
        return value

    rows += [
        _target("ping round trip p50 from Node", ts("pingUs"), 150, "µs", at_least=False),
        _target("streamChunk/s to Node, tiny model", ts("chunksPerSecond"), 50_000, "/s", at_least=True),
        _target(
            "streamChunk/s to Node, generation free",
            ts("nullEngineChunksPerSecond"),
            50_000,
            "/s",
            at_least=True,
        ),
        _target("spawn → initialize answered (TS client)", ts("spawnToReadyMs"), 300, "ms", at_least=False),
        _target("idle RSS before any model", ts("idleRssMb"), 60, "MiB", at_least=False),
    ]
    if "package" in figures:
        spawn = figures["package"]["spawnToReadyMs"]["median"]
        rows.append(
            _target("spawn → initialize answered (packaged sidecar)", spawn, 400, "ms", at_least=False)
        )
    if "sessions" in figures:
        rows += session_targets(figures["sessions"])
    return rows


# -- chat sessions -------------------------------------------------------------

SESSION_LAST_OVER_FIRST = 1.3
SESSION_ALTERNATING_OVER_SINGLE = 1.5


def session_targets(sessions: dict[str, Any]) -> list[dict[str, Any]]:
    last = sessions["turns"]
    return [
        _target(
            f"chat session: TTFT of turn {last} ÷ turn 1",
            sessions["single"]["lastOverFirst"]["median"],
            SESSION_LAST_OVER_FIRST,
            "×",
            at_least=False,
        ),
        _target(
            f"two sessions alternating on one model: TTFT turns 2–{last} ÷ one session",
            sessions["alternating"]["overSingle"]["median"],
            SESSION_ALTERNATING_OVER_SINGLE,
            "×",
            at_least=False,
        ),
    ]


def _turn_values(records: list[dict[str, Any]], field: str, turns: range) -> list[float]:
    return _values([r for r in records if r["turn"] in turns], field)


def _median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def session_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """TTFT by turn for each scenario, the ratios the targets use, and consistency checks."""
    last = raw["turns"]
    rounds = raw["rounds"]
    names = list(raw["conversations"])
    later = range(2, last + 1)

    def turns(round_: dict[str, Any], scenario: str, name: str) -> list[dict[str, Any]]:
        return [r for r in round_[scenario]["turns"] if r["conversation"] == name]

    def ttft(records: list[dict[str, Any]], turn: int) -> float:
        return _median_or_nan(_turn_values(records, "ttftMs", range(turn, turn + 1)))

    pairs = [(round_, name) for round_ in rounds for name in names]
    last_over_first = [ttft(turns(r, "single", n), last) / ttft(turns(r, "single", n), 1) for r, n in pairs]
    over_single = [
        _median_or_nan(_turn_values(turns(r, "alternating", n), "ttftMs", later))
        / _median_or_nan(_turn_values(turns(r, "single", n), "ttftMs", later))
        for r, n in pairs
    ]
    stateless_over = [
        ttft(turns(r, "stateless", n), last) / ttft(turns(r, "alternating", n), last) for r, n in pairs
    ]
    figures: dict[str, Any] = {"turns": last, "maxTokens": raw["maxTokens"]}
    for scenario in ("single", "alternating", "stateless"):
        records = [record for round_ in rounds for record in round_[scenario]["turns"]]
        figures[scenario] = {
            "byTurn": [_session_turn(records, turn) for turn in range(1, last + 1)],
            "laterTtftMs": summarize(_turn_values(records, "ttftMs", later)),
            "clientOverServerMs": summarize(
                [r["ttftMs"] - r["serverTtftMs"] for r in records if r["ttftMs"] and r["serverTtftMs"]]
            ),
            "otherCores": max(round_[scenario]["otherCores"] for round_ in rounds),
        }
    figures["single"]["lastOverFirst"] = summarize(_finite(last_over_first))
    figures["alternating"]["overSingle"] = summarize(_finite(over_single))
    # The same with means, pooled over rounds and conversations (a slow outlier counts fully).
    alternating_later, single_later = (
        _values([r for round_ in rounds for r in round_[scenario]["turns"] if r["turn"] in later], "ttftMs")
        for scenario in ("alternating", "single")
    )
    figures["alternating"]["overSingleMeans"] = (
        statistics.fmean(alternating_later) / statistics.fmean(single_later)
        if alternating_later and single_later
        else None
    )
    figures["stateless"]["lastOverAlternating"] = summarize(_finite(stateless_over))
    figures["checks"] = _session_checks(rounds)
    return figures


def _finite(values: list[float]) -> list[float]:
    return [value for value in values if not math.isnan(value)]


def _session_turn(records: list[dict[str, Any]], turn: int) -> dict[str, Any]:
    at = [r for r in records if r["turn"] == turn]
    return {
        "turn": turn,
        "ttftMs": summarize(_values(at, "ttftMs")),
        "serverTtftMs": summarize(_values(at, "serverTtftMs")),
        "promptMs": summarize(_values(at, "promptMs")),
        "promptTokens": summarize(_values(at, "promptTokens")),
        "evaluatedTokens": summarize(_values(at, "evaluatedTokens")),
    }


def _session_checks(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Alternating sessions give the single sessions' greedy replies (first round: texts kept);
    the stateless prompts are the single sessions' prompts (same token counts); no history dropped."""

    def keyed(round_: dict[str, Any], scenario: str) -> dict[tuple[str, int], dict[str, Any]]:
        return {(r["conversation"], r["turn"]): r for r in round_[scenario]["turns"]}

    first_single, first_alternating = keyed(rounds[0], "single"), keyed(rounds[0], "alternating")
    same = [first_alternating[key]["text"] == record["text"] for key, record in first_single.items()]
    prompts = [
        keyed(round_, "stateless")[key]["promptTokens"] == record["promptTokens"]
        for round_ in rounds
        for key, record in keyed(round_, "single").items()
    ]
    dropped = sum(
        held["droppedMessages"]
        for round_ in rounds
        for scenario in ("single", "alternating")
        for held in round_[scenario]["sessions"].values()
    )
    return {
        "sameRepliesAlternatingAsSingle": f"{sum(same)}/{len(same)}",
        "samePromptTokensStatelessAsSingle": f"{sum(prompts)}/{len(prompts)}",
        "droppedMessages": dropped,
    }
