"""Training curves of several runs side by side: a logged metric read from each run's csv logger,
smoothed, tabled at shared steps and plotted (``scripts/compare_runs.py``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = ["Series", "read_series", "read_throughput", "smoothed", "compare", "plot_curves"]

Series = list[tuple[int, float]]  # (step, value) pairs, by step


def read_series(run: str | Path, metric: str) -> Series:
    """(step, value) of ``metric`` from a run folder's ``logs/*/metrics.csv`` (every stage and
    resumed job), sorted by step; a later file's value replaces an earlier one's at the same step
    (a resumed job repeating a step). ``run`` may join several folders with ``+`` (the jobs of a
    run that resumed into a new folder)."""
    values: dict[int, float] = {}
    folders = [Path(part) for part in str(run).split("+")]
    files = [path for folder in folders for path in sorted(folder.glob("logs/*/metrics.csv"),
                                                          key=lambda p: p.stat().st_mtime)]
    if not files:
        raise FileNotFoundError(f"no logs/*/metrics.csv under {run}: was it trained with logger=csv?")
    logged: set[str] = set()
    for path in files:
        with path.open() as f:
            reader = csv.DictReader(f)
            logged.update(reader.fieldnames or [])
            for row in reader:
                if row.get(metric) not in (None, ""):
                    values[int(row["step"])] = float(row[metric])
    if not values:
        raise ValueError(f"{run} logged no {metric!r}; its metrics: {sorted(logged)}")
    return sorted(values.items())


def read_throughput(run: str | Path) -> float | None:
    """Samples/s of a run's last stage (``throughput.json`` of its last folder), or None."""
    path = Path(str(run).split("+")[-1]) / "throughput.json"
    try:
        return float(json.loads(path.read_text())["samples_per_second"])
    except (OSError, ValueError, KeyError):
        return None


def smoothed(series: Series, window: int) -> Series:
    """Each point replaced by the mean of the last ``window`` logged values up to it (training
    losses are noisy per step: their timesteps are drawn at random)."""
    out, total = [], 0.0
    for index, (step, value) in enumerate(series):
        total += value
        if index >= window:
            total -= series[index - window][1]
        out.append((step, total / min(index + 1, window)))
    return out


def _value_at(series: Series, step: int) -> float:
    """The last value logged at or before ``step`` (nan before the first)."""
    chosen = math.nan
    for at, value in series:
        if at > step:
            break
        chosen = value
    return chosen


def compare(curves: dict[str, Series], points: int = 8) -> tuple[list[int], dict[str, list[float]], float]:
    """The curves' values at ``points`` steps spread evenly up to the last step all runs reached,
    and the largest relative gap of any run from the first one at those steps."""
    last = min(series[-1][0] for series in curves.values())
    first = max(series[0][0] for series in curves.values())
    steps = sorted({round(first + (last - first) * (i + 1) / points) for i in range(points)})
    table = {name: [_value_at(series, step) for step in steps] for name, series in curves.items()}
    reference = next(iter(table.values()))
    gaps = [abs(value - ref) / abs(ref) for values in list(table.values())[1:] for value, ref in zip(values, reference)
            if ref and not math.isnan(value) and not math.isnan(ref)]
    return steps, table, max(gaps, default=0.0)


def plot_curves(curves: dict[str, Series], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, series in curves.items():
        ax.plot([s for s, _ in series], [v for _, v in series], label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
