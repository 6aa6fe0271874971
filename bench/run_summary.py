"""One training run's result as a table row, appended to a JSON summary of several runs.

    python bench/run_summary.py RUN_FOLDER SUMMARY.json [label=value ...]

Reads RUN_FOLDER/metrics.json (the end-of-training scores) and the csv logger's
RUN_FOLDER/logs/*/metrics.csv (validation faithfulness and VB, training loss by step); prints
``| labels... | final faithfulness | validation faithfulness @ step | validation VB @ step |``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

SERIES = ("val/faithfulness", "val/vb", "train/loss", "train/vb")


def summarise(run: Path) -> dict:
    try:
        final = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        final = {}  # the run did not finish: its series still say how far it got
    final = final.get("diffusion", final)  # train.py nests each stage's scores under its name
    rows = [row for path in sorted(run.glob("logs/*/metrics.csv")) for row in csv.DictReader(path.open())]
    series = {key: [(int(row["step"]), float(row[key])) for row in rows if row.get(key)] for key in SERIES}
    return {"final": final, **series}


def main() -> None:
    run, summary_path, *labels = sys.argv[1:]
    labels = dict(label.split("=", 1) for label in labels)
    result = {**labels, **summarise(Path(run))}
    summary_file = Path(summary_path)
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"runs": []}
    summary["runs"].append(result)
    summary_file.write_text(json.dumps(summary, indent=1))

    def at_steps(key: str) -> str:
        return " ".join(f"{value:.3f}@{step}" for step, value in result[key])

    cells = [*labels.values(), str(result["final"].get("faithfulness")), at_steps("val/faithfulness"),
             at_steps("val/vb")]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
