"""cluster=slurm / cluster=local: the launcher, the checkpoint on the time-limit signal, requeues
that resume, and sweep jobs that resume only themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vqdiffusion.lit.requeue import CheckpointOnSignal
from vqdiffusion.tasks import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["debug=tiny", "diffusion_training.val_every_n_steps=1000"]


def compose_train(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


class SignalAtStep(pl.Callback):
    """Sends this process ``signal_name`` while step ``step`` runs (as SLURM does before a time limit)."""

    def __init__(self, step: int, signal_name: str = "SIGUSR2") -> None:
        self.step, self.signum = step, signal.Signals[signal_name]

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("option, launcher", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_every_cluster_option_sets_its_launcher_requeues_and_auto_resume(option, launcher):
    cfg = compose_train([f"cluster={option}", "trainer=ddp", "trainer.devices=4"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(launcher)
    assert cfg.ckpt_path == "auto"
    assert isinstance(instantiate(cfg.callbacks.diffusion.checkpoint_on_signal), CheckpointOnSignal)
    if option == "slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.signal_delay_s >= 60
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        CheckpointOnSignal("SIGFOO")


def test_the_time_limit_signal_writes_the_step_checkpoint_then_hands_over(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        base = [*TINY, "cluster=local", "diffusion_training.max_steps=8",
                "diffusion_training.checkpoint_every_n_steps=4"]
        metrics = train(compose_train([*base, f"output_dir={tmp_path / 'job'}",
                                       "+callbacks.diffusion.signal={_target_: test_cluster.SignalAtStep, step: 3}"]))
        assert metrics["diffusion"]["steps"] == 3  # stopped at the end of the step it was warned in
        assert calls == [signal.SIGUSR2]  # then the launcher's handler ran (submitit: requeue and exit)
        checkpoints = tmp_path / "job" / "checkpoints"
        assert torch.load(checkpoints / "step_0000003.ckpt", weights_only=True)["global_step"] == 3
        assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3
        assert signal.getsignal(signal.SIGUSR2) is not None and calls == [signal.SIGUSR2]  # handler given back
        # the requeued job: the same command resumes there and finishes
        resumed = train(compose_train([*base, f"output_dir={tmp_path / 'requeued'}"]))
        assert resumed["diffusion"]["steps"] == 8 and resumed["tokenizer"] == metrics["tokenizer"]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_sweep_job_resumes_its_own_checkpoints_not_a_newer_sibling(tmp_path, monkeypatch):
    import time

    from omegaconf import OmegaConf

    import vqdiffusion.tasks.training as training

    def checkpoint(job: str, name: str) -> Path:
        path = tmp_path / job / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": 1}, path)
        time.sleep(0.01)  # distinct modification times
        return path

    own = checkpoint("0", "step_0000002.ckpt")
    sibling = checkpoint("1", "last.ckpt")  # newer, of another job of the sweep
    resume = lambda job, how="auto": training._resume_path(OmegaConf.create({"ckpt_path": how}),  # noqa: E731
                                                            tmp_path / job)
    assert resume("0") == str(sibling)  # outside a sweep: the newest run of the name
    monkeypatch.setattr(training, "_in_a_sweep", lambda: True)
    assert resume("0") == str(own) and resume("0", "last") == str(own)
    assert resume("2") is None  # a job with nothing of its own starts afresh
    with pytest.raises(FileNotFoundError, match="no complete checkpoint under"):
        resume("2", "last")


@pytest.mark.slow
def test_a_local_sweep_runs_each_job_through_submitit(tmp_path):
    command = [sys.executable, "train.py", "-m", "cluster=local", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "pipeline" / "model_index.json").is_file(), sorted(tmp_path.rglob("*"))[:40]
    assert any((tmp_path / ".submitit").iterdir())
