"""Learning-rate schedules, all with a linear warm-up, stepped per optimiser step.

Each is a function ``(optimizer, **settings) -> the lr_scheduler entry of configure_optimizers``,
named in the ``lr_scheduler`` config group and handed to a stage's module as a partial
(``_partial_: true``), so the module supplies the optimiser:

- :func:`cosine`: warm-up, then cosine from the peak down to ``final_fraction`` of it at
  ``max_steps``.
- :func:`constant`: warm-up, then the peak.
- :func:`plateau`: the original VQ-Diffusion recipe: warm-up, then halve the LR whenever the
  training loss has not improved by a relative ``threshold`` for ``patience`` steps.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["WarmupPlateau", "constant", "cosine", "plateau", "watches_the_loss"]


def _check_warmup(warmup_steps: int) -> None:
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, cosine: bool,
                         final_fraction: float = 0.1) -> float:
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(optimizer, warmup_steps: int, max_steps: int, final_fraction: float = 0.1) -> dict:
    """Warm-up, then a cosine from the peak to ``final_fraction`` of it at ``max_steps``."""
    _check_warmup(warmup_steps)
    if not 0 <= final_fraction <= 1:
        raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
    factor = functools.partial(warmup_cosine_factor, warmup_steps=warmup_steps, max_steps=max_steps, cosine=True,
                               final_fraction=final_fraction)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def constant(optimizer, warmup_steps: int = 0) -> dict:
    """Warm-up, then the peak."""
    _check_warmup(warmup_steps)
    factor = functools.partial(warmup_cosine_factor, warmup_steps=warmup_steps, max_steps=0, cosine=False)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def plateau(optimizer, warmup_steps: int, patience: int, factor: float = 0.5, threshold: float = 0.1,
            min_lr: float = 1e-6) -> dict:
    """Warm-up, then ``factor`` times the LR whenever ``train/loss`` stalls for ``patience`` steps."""
    _check_warmup(warmup_steps)
    scheduler = WarmupPlateau(optimizer, warmup_steps, patience, factor, threshold, min_lr)
    return {"scheduler": scheduler, "interval": "step", "monitor": "train/loss", "strict": True}


def watches_the_loss(lr_scheduler) -> bool:
    """Whether a schedule (a partial of one of the functions here) reads ``train/loss``."""
    return getattr(lr_scheduler, "func", lr_scheduler) is plateau


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
