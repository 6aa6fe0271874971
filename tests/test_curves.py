"""Training curves side by side: what is read from the csv logs, the smoothing and the gap."""

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

from vqdiffusion.eval.curves import compare, read_series, smoothed

ROOT = Path(__file__).resolve().parents[1]


def _log(run: Path, version: int, rows: list[tuple[int, float]], mtime: int, metric: str = "train/loss") -> None:
    path = run / "logs" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"epoch,step,{metric},val/vb"] + [f"0,{step},{value}," for step, value in rows] + ["0,99,,1.5"]
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (mtime, mtime))


def test_a_resumed_job_replaces_the_steps_it_repeats(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _log(first, 0, [(1, 4.0), (2, 3.0), (3, 2.5)], mtime=1000)
    _log(second, 0, [(3, 2.4), (4, 2.0)], mtime=2000)  # resumed at step 2: step 3 ran again
    assert read_series(f"{first}+{second}", "train/loss") == [(1, 4.0), (2, 3.0), (3, 2.4), (4, 2.0)]
    assert read_series(first, "val/vb") == [(99, 1.5)]


def test_missing_logs_and_metrics_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="logger=csv"):
        read_series(tmp_path, "train/loss")
    _log(tmp_path, 0, [(1, 1.0)], mtime=1000)
    listed = r"\['epoch', 'step', 'train/loss', 'val/vb'\]"
    with pytest.raises(ValueError, match=r"logged no 'train/vb'; its metrics: " + listed):
        read_series(tmp_path, "train/vb")


def test_smoothing_averages_the_last_values():
    series = [(1, 4.0), (2, 2.0), (3, 6.0), (4, 0.0)]
    assert smoothed(series, 2) == [(1, 4.0), (2, 3.0), (3, 4.0), (4, 3.0)]
    assert smoothed(series, 1) == series


def test_the_gap_is_relative_to_the_first_run_at_shared_steps():
    base = [(step, 2.0) for step in range(0, 101, 10)]
    other = [(step, 2.0 + (0.1 if step == 50 else 0.0)) for step in range(0, 81, 10)]  # stopped at 80
    steps, table, gap = compare({"bf16": base, "fp8": other}, points=4)
    assert steps == [20, 40, 60, 80]  # up to the last step both reached
    assert table["fp8"] == [2.0, 2.0, 2.0, 2.0]  # step 50's bump is between the table's steps
    steps, table, gap = compare({"bf16": base, "fp8": other}, points=8)
    assert 50 in steps and gap == pytest.approx(0.05)


def test_the_script_prints_the_table_and_writes_the_plot(tmp_path, monkeypatch, capsys):
    _log(tmp_path / "bf16", 0, [(step, 3.0 - step / 100) for step in range(1, 201)], mtime=1000)
    _log(tmp_path / "fp8", 0, [(step, 3.0 - step / 100 + 0.003) for step in range(1, 201)], mtime=1000)
    for name, speed in (("bf16", 100.0), ("fp8", 130.0)):
        (tmp_path / name / "throughput.json").write_text(json.dumps({"samples_per_second": speed}))
    plot = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["compare_runs.py", str(tmp_path / "bf16"), str(tmp_path / "fp8"),
                                      "--window", "10", "--points", "4", "--plot", str(plot)])
    runpy.run_path(str(ROOT / "scripts" / "compare_runs.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "| step | bf16 | fp8 |" in printed and "| 200 | 1.0450 | 1.0480 |" in printed
    assert "largest gap from bf16: 0.29%" in printed
    assert "samples/s: bf16 100.0 (1.00x), fp8 130.0 (1.30x)" in printed
    assert plot.stat().st_size > 1000


def test_the_script_names_a_run_without_logs_in_one_line(tmp_path, monkeypatch, capsys):
    _log(tmp_path / "bf16", 0, [(step, 1.0) for step in range(1, 11)], mtime=1000)
    monkeypatch.setattr(sys, "argv", ["compare_runs.py", str(tmp_path / "bf16"), str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "scripts" / "compare_runs.py"), run_name="__main__")
    assert stopped.value.code == 2
    missing = tmp_path / "missing"
    assert capsys.readouterr().err == f"error: no logs/*/metrics.csv under {missing}: was it trained with logger=csv?\n"
