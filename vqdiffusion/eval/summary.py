"""One table and a few plots for a sweep: every ``metrics.json`` under a folder becomes a row.

Written into the sweep folder: ``summary.csv``, ``summary.md`` and, where the swept settings and
the metrics allow, ``<metric>_vs_steps.png`` for every quality metric, ``fid_vs_clip_score.png``
or ``fid_vs_class_accuracy.png`` (across guidance scales) and ``speed_vs_quality.png``. A Hydra
multirun of ``sample.py`` calls it at the end (the ``SweepSummary`` callback);
``python scripts/summarize.py DIR`` rebuilds it from any folder.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
SETTINGS = ("sampler", "sampler_options", "num_inference_steps", "guidance_scale", "guidance_schedule",
            "truncation_rate", "batch_size", "dtype", "speed")
QUALITY = ("fid", "kid", "is", "shapes_faithfulness", "clip_score", "class_accuracy", "classifier_is")
# metrics that guidance trades against FID: plotted against it across guidance scales
FIDELITY = ("clip_score", "class_accuracy", "shapes_faithfulness")


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
    for row in rows:  # the plots' lines: a sampler with its options where those differ between runs ...
        row["variant"] = _variant(row, rows)
        # ... and, across guidance scales, each step count of it on a line of its own
        steps = row.get("num_inference_steps")
        row["setting"] = row["variant"] if steps is None else f"{row['variant']}, {steps} steps"
    columns = ["run"] + [c for c in SETTINGS if any(c in r for r in rows)]
    columns += [c for c in QUALITY + ("kid_std", "is_std", "images_per_second", "images_per_second_steady",
                                      "num_images", "device")
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


def _variant(row: dict, rows: list[dict]) -> str:
    """The sampler's name, with those of its options that another run of the same sampler set
    otherwise, and the guidance schedule when the runs used several."""
    name = str(row.get("sampler", ""))

    def options(r: dict) -> list[str]:
        return str(r.get("sampler_options") or "").split()

    shared = set(options(row)).intersection(*[options(r) for r in rows if r.get("sampler") == row.get("sampler")])
    differing = [o for o in options(row) if o not in shared]
    if differing:
        name = f"{name} {' '.join(differing)}"

    def schedule(r: dict) -> str:
        return r.get("guidance_schedule") or "constant"  # runs record it only when not constant

    if len({schedule(r) for r in rows}) > 1:
        name = f"{name} guidance {schedule(row)}"
    return name


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

    def plot(x: str, y: str, name: str, group: str | None, along: str | None = None) -> None:
        """y against x, one line per value of ``group``; with ``along`` the points are joined in
        the order of that setting (e.g. the guidance scale) and labelled with it."""
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        keys = sorted({r.get(group) for r in rows}, key=str) if group else [None]
        drawn = 0
        for key in keys:
            chosen = [r for r in rows if x in r and y in r and (group is None or r.get(group) == key)]
            chosen.sort(key=lambda r: (r.get(along, 0), r[x]) if along else (r[x], r[y]))
            if along and len({r.get(along) for r in chosen}) < 2:
                continue  # a line along a setting needs two values of it
            if chosen:
                drawn += 1
                ax.plot([r[x] for r in chosen], [r[y] for r in chosen], marker="o",
                        label=str(key) if group else None)
            for r in chosen if along else []:
                ax.annotate(f"{r.get(along):g}", (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        if x == "num_inference_steps":
            ax.set_xscale("log")
        if group and drawn > 1:  # beside the axes: long sampler names would hide the points
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        ax.grid(alpha=0.3)
        if drawn:
            fig.savefig(folder / name, bbox_inches="tight")
            written.append(folder / name)
        plt.close(fig)

    if len({r.get("num_inference_steps") for r in rows}) > 1:
        for metric in (m for m in QUALITY if all(m in r for r in rows)):
            plot("num_inference_steps", metric, f"{metric}_vs_steps.png", "variant")
    for fidelity in (m for m in FIDELITY if m != quality and all(m in r for r in rows)):
        plot(fidelity, quality, f"{quality}_vs_{fidelity}.png", "setting", along="guidance_scale")
    # the steady rate where every run has one: a sweep's first job also compiles, the others reuse it
    speed = next((c for c in ("images_per_second_steady", "images_per_second") if all(c in r for r in rows)), None)
    if speed:
        plot(speed, quality, "speed_vs_quality.png", "variant")
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
