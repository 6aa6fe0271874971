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
            times.append(event_seconds(run))
        else:
            begin = time.perf_counter()
            run()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def event_seconds(run: Callable[[], object]) -> float:
    """Seconds of one ``run()`` between two CUDA events (synchronised after)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


class MatmulProbe:
    """Readings of the bf16 matmul peak: TFLOP/s of 8192^3 products on random data (zeros run
    faster than real data on these GPUs)."""

    size = 8192

    def __init__(self) -> None:
        self.a = torch.randn(self.size, self.size, device="cuda", dtype=torch.bfloat16)
        self.b = torch.randn(self.size, self.size, device="cuda", dtype=torch.bfloat16)

    def reading(self, products: int = 10) -> float:
        """Median TFLOP/s of ``products`` products, each timed on its own."""
        seconds = statistics.median(event_seconds(lambda: self.a @ self.b) for _ in range(products))
        return 2 * self.size**3 / seconds / 1e12


def matmul_peak(readings: int = 5) -> float:
    """Measured bf16 TFLOP/s of this GPU: the best of ``readings`` medians of 10 products, after 30
    warm-up products. One median of 10 after 3 read 685-774 TFLOP/s in separate processes on one
    H100, and a low reading flatters every MFU measured against it; the best reading is the
    conservative denominator."""
    probe = MatmulProbe()
    probe.reading(products=30)
    return max(probe.reading() for _ in range(readings))
