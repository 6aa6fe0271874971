"""Callbacks: sample grids (and faithfulness scores) through the user-facing pipeline."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from ..utils.images import make_grid, save_png

__all__ = ["SampleGrid"]


class SampleGrid(pl.Callback):
    """At each validation, sample fixed prompts with the EMA weights, save a grid, and log the
    dataset's faithfulness score (``val/faithfulness``) when the dataset defines ``score``."""

    def __init__(self, folder: str | Path, prompts: list[str] | None, num_images: int, guidance_scale: float,
                 truncation_rate: float, sampler: str, num_inference_steps: int, sampler_options: dict | None = None,
                 seed: int = 0) -> None:
        self.folder = Path(folder)
        self.prompts, self.num_images = prompts, num_images
        self.kwargs = dict(guidance_scale=guidance_scale, truncation_rate=truncation_rate, sampler=sampler,
                           num_inference_steps=num_inference_steps, sampler_options=sampler_options or {})
        self.seed = seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.train_set
        images, prompts = sample_for_validation(module, dataset, self.prompts, self.num_images, self.seed,
                                                **self.kwargs)
        save_png(make_grid(images, columns=8, scale=2), self.folder / f"step_{trainer.global_step:07d}.png")
        if prompts is not None and hasattr(dataset, "score"):
            score = sum(dataset.score(img, p) for img, p in zip(images, prompts)) / len(images)
            module.log("val/faithfulness", score, rank_zero_only=True)


@torch.no_grad()
def sample_for_validation(module, dataset, prompts, num_images: int, seed: int, **kwargs):
    """(PIL images, their prompts or None) from the module's EMA pipeline."""
    pipe = module.pipeline()
    pipe.progress = False
    generator = torch.Generator(module.device).manual_seed(seed)
    was_training = module.training
    module.eval()
    try:
        if module.kind == "text":
            if prompts is None or isinstance(prompts, str):
                if not hasattr(dataset, "validation_prompts"):
                    raise ValueError("set validation.prompts to a list: the dataset has no validation_prompts()")
                prompts = dataset.validation_prompts(num_images, *([prompts] if prompts else []))
            prompts = [prompts[i % len(prompts)] for i in range(num_images)]  # cycled when short
            images = pipe(prompts, generator=generator, **kwargs).images
        elif module.kind == "class":
            labels = torch.arange(num_images) % module.transformer.config.num_classes
            images = pipe(class_labels=labels, generator=generator, **kwargs).images
            prompts = None
        else:
            images = pipe(batch_size=num_images, generator=generator, **kwargs).images
            prompts = None
    finally:
        module.train(was_training)
    return images, prompts


class StopAfterSteps(pl.Callback):
    """End this job after ``steps`` optimiser steps without changing ``max_steps`` (so the LR
    schedule is unchanged): for time-limited cluster jobs that resume with ``ckpt_path=last``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True
