"""Callbacks: sample grids (and faithfulness scores) through the user-facing pipeline, the bad
sample report, and stopping a job early for a later resume."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..diffusion.samplers import Sampler
from ..utils.atomic import atomic_write_json
from ..utils.images import make_grid, save_png

__all__ = ["BadSampleReport", "BestValidationCheckpoint", "SampleGrid", "StopAfterSteps", "Throughput", "grid_columns",
           "sample_for_validation", "write_step_checkpoint"]

log = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """At each validation, sample fixed prompts with the EMA weights, save a grid, and log the
    dataset's faithfulness score (``val/faithfulness``) when the dataset defines ``score``.
    Without ``prompts``, the captions come from the ``prompts_from`` split (``train`` or ``val``:
    held-out captions show whether the model generalises)."""

    def __init__(self, folder: str | Path, prompts: list[str] | None, num_images: int, guidance_scale: float,
                 truncation_rate: float, sampler: Sampler | str, num_inference_steps: int, seed: int = 0,
                 prompts_from: str = "train", guidance_schedule: str = "constant") -> None:
        self.folder = Path(folder)
        self.prompts, self.num_images, self.prompts_from = prompts, num_images, prompts_from
        self.kwargs = dict(guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                           truncation_rate=truncation_rate, sampler=sampler, num_inference_steps=num_inference_steps)
        self.seed = seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.split(self.prompts_from)
        images, prompts = sample_for_validation(module, dataset, self.prompts, self.num_images, self.seed,
                                                **self.kwargs)
        grid = make_grid(images, columns=grid_columns(module), scale=2)
        save_png(grid, self.folder / f"step_{trainer.global_step:07d}.png")
        if prompts is not None and hasattr(dataset, "score"):
            score = sum(dataset.score(img, p) for img, p in zip(images, prompts)) / len(images)
            module.log("val/faithfulness", score, rank_zero_only=True)


@torch.no_grad()
def sample_for_validation(module, dataset, prompts, num_images: int, seed: int, **kwargs):
    """(PIL images, their prompts or None) from the module's EMA pipeline."""
    pipe = module.pipeline()
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(module.device).manual_seed(seed)
    was_training = module.training
    module.eval()
    num_classes = module.transformer.config.num_classes
    inputs, prompts = module.condition.validation_call(dataset, prompts, num_images, num_classes)
    try:
        images = pipe(**inputs, generator=generator, **kwargs).images
    finally:
        module.train(was_training)
    return images, prompts


def grid_columns(module) -> int:
    """Columns of the module's sample grids (one per class for a few classes)."""
    return module.condition.grid_columns(module.transformer.config.num_classes)


class BadSampleReport(pl.Callback):
    """Counts the unreadable samples the datasets skipped (``batch["skipped"]``) and reports them
    at the end of every epoch and of training; ``data/skipped`` is logged as a running total."""

    def __init__(self, show: int = 10) -> None:
        self.show, self.total, self.recent = show, 0, []

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int) -> None:
        bad = [s for s in batch.get("skipped", []) if s] if isinstance(batch, dict) else []
        if bad:
            self.total += len(bad)
            self.recent.extend(bad)
            module.log("data/skipped", float(self.total), logger=True, prog_bar=False)

    def _report(self, where: str) -> None:
        if self.recent:
            listed = "\n  ".join(self.recent[:self.show])
            more = f"\n  ... and {len(self.recent) - self.show} more" if len(self.recent) > self.show else ""
            log.warning("%s: skipped %d unreadable sample(s) (%d in this run):\n  %s%s", where, len(self.recent),
                        self.total, listed, more)
            self.recent = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module) -> None:
        self._report(f"epoch {trainer.current_epoch}")

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        self._report("end of training")


class Throughput(pl.Callback):
    """Training speed: median wall time per optimiser step after ``warmup`` steps, and samples/s
    over all ranks (global batch / step time), written to ``path`` and logged at the end."""

    def __init__(self, path: str | Path | None = None, warmup: int = 50) -> None:
        self.path, self.warmup, self.stamps = Path(path) if path else None, warmup, []
        self.batch_size = 0

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int) -> None:
        self.stamps.append(time.perf_counter())
        key = next((k for k in ("image", "tokens") if isinstance(batch, dict) and k in batch), None)
        if key is not None:  # pre-tokenised shards carry no images
            self.batch_size = len(batch[key])

    def summary(self, world_size: int) -> dict | None:
        steps = [b - a for a, b in zip(self.stamps[self.warmup:], self.stamps[self.warmup + 1:])]
        if len(steps) < 5:
            return None
        seconds = statistics.median(steps)
        return {"step_seconds": seconds, "samples_per_second": self.batch_size * world_size / seconds,
                "world_size": world_size, "steps_timed": len(steps),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        result = self.summary(trainer.world_size)
        if result and trainer.is_global_zero and self.path is not None:
            atomic_write_json(self.path, result)
            log.info("throughput: %.1f samples/s (%.1f ms/step, %d rank(s))", result["samples_per_second"],
                     1e3 * result["step_seconds"], result["world_size"])


class StopAfterSteps(pl.Callback):
    """End this job after ``steps`` more optimiser steps without changing ``max_steps`` (so the LR
    schedule is unchanged): for time-limited cluster jobs that resume with ``ckpt_path=last``.

    The same command can be requeued as is: each job counts from the step it resumed at. A stop
    between two of the checkpoint callback's steps writes that step's checkpoint (and ``last.ckpt``)
    first, so no trained step is lost to the next job."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {steps}")
        self.steps = steps
        self.first_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step - self.first_step < self.steps:
            return
        trainer.should_stop = True
        write_step_checkpoint(trainer, unless_due=True)


class BestValidationCheckpoint(pl.callbacks.ModelCheckpoint):
    """The checkpoint of the validation that scored lowest by ``monitor``, alone in ``dirpath``,
    with ``best.json`` beside it (its path, step and score).

    Resuming must not forget the ranking. Lightning's ModelCheckpoint reloads its scores only into
    the same folder (``ckpt_path=last`` resumes into a new run folder), and a step checkpoint is
    written before that step's validation, so the ranking it holds can lag one validation behind
    (and name a best file that validation already replaced). ``best.json`` is written after each
    new best and wins over the checkpoint's copy, unless it names a step after the one resumed (a
    resume from an earlier checkpoint starts another branch). The best may stay an earlier job's
    file, in that job's folder, which is never deleted from here.
    """

    RECORD = "best.json"

    def __init__(self, dirpath: str | Path, monitor: str) -> None:
        super().__init__(dirpath=dirpath, filename="step_{step:07d}", auto_insert_metric_name=False,
                         monitor=monitor, mode="min", save_top_k=1)
        self._resumed_record: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = self.best_model_path
        super().on_validation_end(trainer, pl_module)
        if self.best_model_path and self.best_model_path != before and trainer.is_global_zero:
            record = {"checkpoint": self.best_model_path, "step": trainer.global_step, "monitor": self.monitor,
                      "score": float(self.best_model_score)}
            atomic_write_json(Path(self.dirpath) / self.RECORD, record)

    def load_best_into(self, module: pl.LightningModule) -> dict:
        """Put the best checkpoint's weights into ``module`` (its EMA weights are what a pipeline
        exports); returns which checkpoint, its step and score. Before any validation, or where that
        file is gone (an earlier job's folder, moved or deleted since), the module keeps its last
        weights, and the returned record says so rather than fail the export at the end of a run."""
        path = self.best_model_path
        if not path:
            return {"weights": "last", "monitor": self.monitor, "score": None}  # no validation ranked yet
        if not Path(path).is_file():
            log.warning("the best validation's checkpoint %s is gone: exporting the last weights", path)
            return {"weights": "last", "best_checkpoint_missing": path, "monitor": self.monitor,
                    "score": float(self.best_model_score)}
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
        best = {"weights": "best", "checkpoint": path, "step": checkpoint["global_step"], "monitor": self.monitor,
                "score": float(self.best_model_score)}
        log.info("the weights of step %d (%s %.4f, the best validation): %s", best["step"], self.monitor,
                 best["score"], path)
        return best

    def load_state_dict(self, state_dict: dict) -> None:
        record = Path(state_dict.get("dirpath") or self.dirpath) / self.RECORD
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})
        self._resumed_record = json.loads(record.read_text()) if record.is_file() else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        best, self._resumed_record = self._resumed_record, None
        if best is not None and best["step"] <= trainer.global_step:  # the step resumed is known only now
            score = torch.tensor(best["score"])
            self.best_k_models = {best["checkpoint"]: score}
            self.best_model_path = self.kth_best_model_path = best["checkpoint"]
            self.best_model_score = self.kth_value = score


def write_step_checkpoint(trainer: pl.Trainer, unless_due: bool = False) -> None:
    """Write this step's checkpoint and ``last.ckpt`` where the checkpoint callback writes them.

    ``unless_due``: not when the checkpoint callback (which runs after the other callbacks) saves
    this step anyway. Nothing without a checkpoint callback (no checkpoints are kept)."""
    # the step checkpoints' callback: not the best validation's, whose folder holds the best alone
    checkpoint = next((callback for callback in trainer.checkpoint_callbacks
                       if not isinstance(callback, BestValidationCheckpoint)), None)
    if checkpoint is None or checkpoint.dirpath is None:
        return
    every = getattr(checkpoint, "_every_n_train_steps", 0)
    if unless_due and every and trainer.global_step % every == 0:
        return
    folder = Path(checkpoint.dirpath)
    name = checkpoint.format_checkpoint_name({"step": torch.tensor(trainer.global_step)})
    trainer.save_checkpoint(str(folder / Path(name).name))
    if checkpoint.save_last:
        trainer.save_checkpoint(str(folder / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"))
