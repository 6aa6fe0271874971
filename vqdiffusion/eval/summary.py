"""One table and a few plots for a sweep: every ``metrics.json`` under a folder becomes a row.

Written into the sweep folder: ``summary.csv``, ``summary.md`` and, where the swept settings and
the metrics allow, ``fid_vs_steps.png``, ``fid_vs_clip.png`` (across guidance scales) and
``speed_vs_quality.png``. A Hydra multirun of ``sample.py`` calls it at the end (the
``SweepSummary`` callback); ``python scripts/summarize.py DIR`` rebuilds it from any folder.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
SETTINGS = ("sampler", "num_inference_steps", "guidance_scale", "truncation_rate", "batch_size", "dtype")
QUALITY = ("fid", "kid", "shapes_faithfulness", "clip_score")


def collect(folder: Path) -> list[dict]:
    """Rows of scalar settings and metrics, one per ``metrics.json`` below ``folder``."""
    rows = []
    for path in sorted(Path(folder).rglob("metrics.json"), key=lambda p: (len(p.parts), str(p))):
        data = json.loads(path.read_text())
        row = {"run": str(path.parent.relative_to(folder)) or "."}
        row.update({k: v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
        rows.append(row)
    return rows


def summarize(folder: str | Path) -> list[Path]:
    """Write the table and plots for ``folder``; returns the files written."""
    folder = Path(folder)
    rows = collect(folder)
    if not rows:
        raise FileNotFoundError(f"no metrics.json under {folder}: run sample.py with eval.metrics=[...] first")
    columns = ["run"] + [c for c in SETTINGS if any(c in r for r in rows)]
    columns += [c for c in QUALITY + ("kid_std", "images_per_second", "num_images", "device")
                if any(c in r for r in rows)]
    written = [folder / "summary.csv", folder / "summary.md"]
    with open(written[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    written[1].write_text("\n".join(lines) + "\n")
    written += _plots(folder, rows)
    return written


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _quality(rows: list[dict]) -> str | None:
    return next((m for m in QUALITY if all(m in r for r in rows)), None)


def _plots(folder: Path, rows: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = _quality(rows)
    if quality is None:
        return []
    written = []

    def plot(x: str, y: str, name: str, group: str | None) -> None:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        keys = sorted({r.get(group) for r in rows}, key=str) if group else [None]
        for key in keys:
            points = sorted((r[x], r[y]) for r in rows if x in r and y in r and (group is None or r.get(group) == key))
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{group}={key}" if group else None)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        if x == "num_inference_steps":
            ax.set_xscale("log")
        if group and len(keys) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        written.append(folder / name)

    if len({r.get("num_inference_steps") for r in rows}) > 1:
        plot("num_inference_steps", quality, f"{quality}_vs_steps.png", "sampler")
    if "clip_score" in rows[0] and quality != "clip_score" and len({r.get("guidance_scale") for r in rows}) > 1:
        plot("clip_score", quality, f"{quality}_vs_clip.png", None)
    if all("images_per_second" in r for r in rows):
        plot("images_per_second", quality, "speed_vs_quality.png", "sampler")
    return written


class SweepSummary(Callback):
    """Hydra callback: summarise a ``sample.py -m`` sweep when it ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            files = summarize(config.hydra.sweep.dir)
        except FileNotFoundError as error:  # a sweep without eval.metrics has nothing to tabulate
            log.warning("%s", error)
            return
        log.info("sweep summary: %s", ", ".join(str(f) for f in files))
