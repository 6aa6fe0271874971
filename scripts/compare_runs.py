"""Training curves of runs side by side: ``python scripts/compare_runs.py RUN_A RUN_B [...]``.

Reads a metric (``--metric``, default ``train/loss``) from each run's csv logger
(``logger=csv``), smooths it over ``--window`` logged values, prints a table at shared steps with
the largest relative gap from the first run and each run's samples/s (from its
``throughput.json``), and writes the curves to ``--plot``. A run that resumed into another folder
is given as ``FIRST+SECOND``; ``--labels`` names the runs.
"""

import argparse
from pathlib import Path

from vqdiffusion.eval.curves import compare, plot_curves, read_series, read_throughput, smoothed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (FIRST+SECOND for a run resumed into another folder)")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: the folder names)")
    parser.add_argument("--metric", default="train/loss")
    parser.add_argument("--window", type=int, default=50, help="logged values averaged per point")
    parser.add_argument("--points", type=int, default=8, help="rows of the table")
    parser.add_argument("--plot", type=Path, default=Path("curves.png"))
    args = parser.parse_args()
    labels = args.labels or [Path(run.split("+")[0]).name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels names {len(labels)} runs, {len(args.runs)} were given")
    try:
        curves = {label: smoothed(read_series(run, args.metric), args.window) for label, run in zip(labels, args.runs)}
        steps, table, gap = compare(curves, args.points)
    except (FileNotFoundError, ValueError) as mistake:  # a wrong folder or metric: the user's to fix
        parser.exit(2, f"error: {mistake}\n")
    print(f"{args.metric}, mean of the last {args.window} logged values")
    print("| step | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for index, step in enumerate(steps):
        print(f"| {step} | " + " | ".join(f"{table[label][index]:.4f}" for label in labels) + " |")
    print(f"largest gap from {labels[0]}: {100 * gap:.2f}%")
    speeds = {label: read_throughput(run) for label, run in zip(labels, args.runs)}
    if all(speeds.values()):  # every run timed its steps (the Throughput callback's throughput.json)
        base = speeds[labels[0]]
        print("samples/s: " + ", ".join(f"{label} {speed:.1f} ({speed / base:.2f}x)"
                                         for label, speed in speeds.items()))
    print(plot_curves(curves, args.metric, args.plot))


if __name__ == "__main__":
    main()
