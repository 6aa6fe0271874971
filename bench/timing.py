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


def matmul_peak() -> float:
    """Measured bf16 TFLOP/s of an 8192^3 product (random data) on this GPU."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / median_seconds(lambda: a @ b, reps=10, warmup=3) / 1e12
