"""Learning-rate schedules, all with a linear warm-up, stepped per optimiser step (the tokenizer
stage takes ``cosine`` and ``constant``, the diffusion stage all three).

- ``cosine``: warm-up, then cosine from the peak down to 10% of it at ``max_steps``.
- ``constant``: warm-up, then the peak.
- ``plateau``: the original VQ-Diffusion recipe: warm-up, then halve the LR whenever the
  training loss has not improved by a relative ``threshold`` for ``patience`` steps.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["LR_SCHEDULES", "WarmupPlateau", "lr_scheduler_config"]

LR_SCHEDULES = ("cosine", "constant", "plateau")


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, cosine: bool) -> float:
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau whose first ``warmup_steps`` calls ramp the LR up linearly instead."""

    def __init__(self, optimizer, warmup_steps: int, patience: int, factor: float = 0.5, threshold: float = 0.1,
                 min_lr: float = 1e-6) -> None:
        self.warmup_steps, self.calls = warmup_steps, 0
        self.peak_lrs = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer, mode="min", factor=factor, patience=patience, threshold=threshold,
                         min_lr=min_lr)
        if warmup_steps > 0:
            self._warm_up()

    def _warm_up(self) -> None:
        """LR of the next step: (calls + 1) / warmup_steps of the peak, the peak from then on."""
        share = min(self.calls + 1, self.warmup_steps) / self.warmup_steps
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak * share

    def step(self, metrics, epoch=None) -> None:  # noqa: D102 - one call per optimiser step
        self.calls += 1
        if self.calls <= self.warmup_steps:
            self._warm_up()
        else:
            super().step(metrics)


def lr_scheduler_config(optimizer, schedule: str, warmup_steps: int, max_steps: int,
                        plateau_patience: int = 5000) -> dict:
    """The ``lr_scheduler`` entry of ``configure_optimizers`` for the named schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "plateau":
        scheduler = WarmupPlateau(optimizer, warmup_steps, plateau_patience)
        return {"scheduler": scheduler, "interval": "step", "monitor": "train/loss", "strict": True}
    factor = functools.partial(warmup_cosine_factor, warmup_steps=warmup_steps, max_steps=max_steps,
                               cosine=schedule == "cosine")
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
