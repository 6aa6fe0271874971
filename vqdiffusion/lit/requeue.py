"""Cluster time limits: when the scheduler warns that a job's time is nearly up, write a
checkpoint at the end of the current step, then let the launcher requeue the job, which resumes
from it (``ckpt_path=auto``). Used by ``cluster=slurm`` (hydra-submitit-launcher)."""

from __future__ import annotations

import logging
import signal
import threading

import pytorch_lightning as pl

from .callbacks import write_step_checkpoint

__all__ = ["CheckpointOnSignal"]

log = logging.getLogger(__name__)


class CheckpointOnSignal(pl.Callback):
    """On ``signal_name`` (submitit asks SLURM for SIGUSR2 ``signal_delay_s`` before the limit),
    finish the step, write its checkpoint and ``last.ckpt``, then pass the signal on to the
    handler installed before (submitit's: requeue this job and exit); with none, stop the run.

    A checkpoint written inside the signal handler could catch an optimiser step half done, so the
    handler only takes note. Under DDP the ranks first agree (any rank's note counts), so that
    every rank writes at the same step.
    """

    def __init__(self, signal_name: str = "SIGUSR2") -> None:
        try:
            self.signum = signal.Signals[signal_name]
        except KeyError:
            raise ValueError(f"unknown signal {signal_name!r}; expected a name such as 'SIGUSR2'") from None
        self.pending = False
        self.previous = None
        self.installed = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: %s will not write a checkpoint", self.signum.name)
            return
        self.previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)
        self.installed = True

    def _note(self, signum, frame) -> None:
        self.pending = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.pending, all=False):
            return
        self.pending = False
        log.warning("%s at step %d: writing a checkpoint before the time limit", self.signum.name, trainer.global_step)
        write_step_checkpoint(trainer)
        trainer.should_stop = True
        previous = self.previous
        self._restore()
        if callable(previous):
            previous(self.signum, None)  # submitit: requeue and exit

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.installed:
            signal.signal(self.signum, self.previous)
            self.installed = False
