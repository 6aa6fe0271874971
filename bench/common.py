"""What every benchmark shares: timing (CUDA events after warm-up, medians), the matmul peak that
MFU is measured against, FLOPs counted from the shapes, and the results file each run appends to.

Each benchmark appends its rows to ``bench/results/<benchmark>.csv``, every row stamped with the
date, the device, the torch version and the command that produced it; ``bench/README.md`` holds
the current table of each.
"""

from __future__ import annotations

import csv
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# The paper sizes (SPEC §7): (layers, heads, head dim, codes, text width, text length).
SIZES = {
    "ithq": (36, 16, 88, 4096, 512, 77),
    "coco": (19, 16, 64, 8192, 512, 77),
}


def forward_flops(size: str, batch: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one transformer forward over ``batch`` sequences of
    1024 tokens at a paper size: the numerator of every MFU, for sampling and training alike."""
    layers, heads, head_dim, codes, ctx_dim, ctx_len = SIZES[size]
    n, d = 1024, heads * head_dim
    per_layer = (2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # self-attention
                 + 2 * n * d * d + 2 * 2 * ctx_len * ctx_dim * d + 2 * 2 * n * ctx_len * d + 2 * n * d * d  # cross
                 + 2 * 2 * n * d * 4 * d)  # MLP
    return batch * (layers * per_layer + 2 * n * d * codes)


def event_seconds(run: Callable[[], object]) -> float:
    """Seconds of one ``run()`` between two CUDA events (synchronised after)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


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
    warm-up products. Single readings move by over 10% between processes on one GPU, and a low
    reading flatters every MFU measured against it: the best reading is the conservative
    denominator."""
    probe = MatmulProbe()
    probe.reading(products=30)
    return max(probe.reading() for _ in range(readings))


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


class Results:
    """Rows of one benchmark, appended to ``bench/results/<name>.csv`` as they are measured (a
    later row's time-out loses none of the earlier ones).

    Every row carries ``date``, ``device``, ``torch`` and ``command`` first. A row with columns the
    file does not have yet rewrites the file with the union of the columns, older rows left blank
    there, so one file keeps a benchmark's whole history.
    """

    stamp_columns = ("date", "device", "torch", "command")

    def __init__(self, name: str, folder: Path | None = None) -> None:
        self.path = (folder or Path(os.environ.get("VQDIFFUSION_BENCH_RESULTS", RESULTS))) / f"{name}.csv"
        self.stamp = {
            "date": time.strftime("%Y-%m-%d"),
            "device": device_name(),
            "torch": torch.__version__,
            "command": shlex.join(["python", *sys.argv]),
        }

    def append(self, row: dict) -> None:
        row = {**self.stamp, **{k: _cell(v) for k, v in row.items()}}
        rows, columns = [], list(self.stamp_columns)
        if self.path.exists():
            with open(self.path, newline="") as f:
                columns = list(csv.DictReader(f).fieldnames or columns)
        new = [k for k in row if k not in columns]
        if not new and self.path.exists():
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, columns).writerow(row)
            return
        if self.path.exists():  # the rows are read only when the header changes
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns += new
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows([*rows, row])
        os.replace(temporary, self.path)


def _cell(value: object) -> object:
    """Floats with 6 significant digits; lists joined by spaces."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(_cell(v)) for v in value)
    return value
