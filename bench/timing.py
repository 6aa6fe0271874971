"""Timing helpers shared by the bench scripts (METHOD: CUDA events after warm-up, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(run: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``run()`` over ``reps`` calls after ``warmup`` calls: CUDA events on a
    GPU (synchronised after each call), ``perf_counter`` on the CPU."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            run()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def matmul_peak(readings: int = 5) -> float:
    """Measured bf16 TFLOP/s of an 8192^3 product (random data) on this GPU: the best of
    ``readings`` medians of 10 products, after 30 warm-up products. One median of 10 after 3 read
    685-774 TFLOP/s in separate processes on one H100, and a low reading flatters every MFU
    measured against it; the best reading is the conservative denominator."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    median_seconds(lambda: a @ b, reps=30, warmup=0)
    return max(2 * 8192**3 / median_seconds(lambda: a @ b, reps=10, warmup=0) / 1e12 for _ in range(readings))
