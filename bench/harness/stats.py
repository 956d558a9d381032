"""Summaries of samples: percentiles, median and min-max, and paired ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TypedDict

__all__ = ["Summary", "paired", "percentile", "summarize"]


class Summary(TypedDict):
    n: int
    median: float
    p95: float
    p99: float
    min: float
    max: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> Summary:
    """Median (= p50), p95, p99 and the range of ``values``; NaN everywhere when empty."""
    if not values:
        return Summary(n=0, median=math.nan, p95=math.nan, p99=math.nan, min=math.nan, max=math.nan)
    return Summary(
        n=len(values),
        median=statistics.median(values),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        min=min(values),
        max=max(values),
    )


def paired(values: Sequence[float], baseline: Sequence[float], *, ratio: bool) -> float:
    """Median of per-pair ratios (or differences) of two runs taken back to back."""
    pairs = [(v, b) for v, b in zip(values, baseline, strict=True) if not math.isnan(v) and not math.isnan(b)]
    if not pairs:
        return math.nan
    return statistics.median(v / b if ratio else v - b for v, b in pairs if not ratio or b)
