"""Latency measurement shared by `zoo bench` (export/bench.py) and the scripts in benchmarks/.

Method: every variant is loaded side by side, warmed up, then run **interleaved** — one call of each per round,
the starting variant rotating from round to round (A B, B A for two: ABBA) — so a load spike from another process
hits every variant alike. Report percentiles of each variant's own times and the ratio of p50s against a baseline
measured in the same rounds, plus the spread of the per-round ratios (a wide interquartile range means a noisy
machine, and a ratio inside it is not a difference).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

PERCENTILES = (10, 25, 50, 75, 90, 99)


def time_interleaved(calls: Mapping[str, Callable[[], Any]], *, runs: int, warmup: int) -> dict[str, list[float]]:
    """{name: [ms per call]}: `warmup` untimed rounds, then `runs` timed rounds of one call each, rotating order."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        start_at = i % len(names)
        for name in names[start_at:] + names[:start_at]:
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarize(values: list[float]) -> dict[str, float]:
    """Percentiles (p10 … p99), min, mean and the count of a list of timings."""
    q = np.percentile(values, PERCENTILES)
    return {**{f"p{p}": float(v) for p, v in zip(PERCENTILES, q)}, "min": float(min(values)),
            "mean": float(statistics.fmean(values)), "runs": len(values)}


def paired_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """{name: summary of time / baseline time, round by round} for every variant but the baseline."""
    base = times[baseline]
    return {name: summarize([t / b for t, b in zip(values, base)]) for name, values in times.items() if name != baseline}
