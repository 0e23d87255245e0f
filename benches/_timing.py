"""Timing and formatting shared by the benchmarks (run as scripts from the repository root,
so this directory is on the import path)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Seconds per call: the best of `repeat` rounds of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def fmt_time(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_rate(size: int, seconds: float) -> str:
    rate = size / seconds / 1e6
    return f"{rate:.0f} MB/s" if rate >= 100 else f"{rate:.1f} MB/s"
