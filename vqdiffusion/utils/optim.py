"""Optimisers from config partials, and gradient clipping folded into a fused Adam/AdamW step."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

__all__ = ["built", "clip_grad_norm_in_step", "folds_clipping", "make_optimizer", "partial_record"]


def make_optimizer(factory: Callable, groups: list[dict], **preferred) -> torch.optim.Optimizer:
    """``factory(groups, ...)`` (e.g. a ``functools.partial`` of ``torch.optim.AdamW`` from a
    ``_partial_: true`` config) with each of the ``preferred`` keywords that the optimiser accepts
    and the config does not set: a stage prefers ``fused=True`` where its optimiser has it."""
    func = getattr(factory, "func", factory)
    fixed = getattr(factory, "keywords", {})
    accepted = inspect.signature(func).parameters
    return factory(groups, **{key: value for key, value in preferred.items() if key in accepted and key not in fixed})


def built(factory: Callable | dict | None) -> Callable | None:
    """A factory as is, or built from its recorded config (:func:`partial_record`'s dict)."""
    if isinstance(factory, dict):
        from hydra.utils import instantiate

        return instantiate(factory, _convert_="all")
    return factory


def partial_record(factory: Callable | None) -> dict | None:
    """A ``functools.partial`` as the plain config that built it (``_target_``, ``_partial_`` and
    its keywords): what a checkpoint's hyperparameters record, readable with ``weights_only=True``."""
    if factory is None:
        return None
    func = getattr(factory, "func", factory)
    return {"_target_": f"{func.__module__}.{func.__qualname__}", "_partial_": True,
            **{key: list(value) if isinstance(value, tuple) else value
               for key, value in getattr(factory, "keywords", {}).items()}}


def folds_clipping(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` divides the gradients by a ``grad_scale`` inside its own kernel: fused
    Adam and AdamW (torch's GradScaler uses the same door to unscale)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        group.get("fused") for group in optimizer.param_groups)


def clip_grad_norm_in_step(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over the optimizer's parameters, applied by its next ``step()``.

    Computes the global L2 norm of the gradients and hands ``max(1, norm / max_norm)`` to the fused
    kernel as its ``grad_scale``, which divides every gradient by it (and writes the divided
    gradient back) as it updates the weights: the same update as clipping first, without
    clipping's separate read and write of every gradient. Returns the norm before clipping. Call
    once per optimizer step, after the last backward, on an optimizer for which :func:`folds_clipping` holds.
    """
    if not folds_clipping(optimizer):
        raise ValueError(f"clip_grad_norm_in_step needs a fused Adam/AdamW, got {type(optimizer).__name__} "
                         f"with fused={[group.get('fused') for group in optimizer.param_groups]}")
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        optimizer.grad_scale = None
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads)  # the norm clip_grad_norm_ computes
    # clip_grad_norm_ multiplies by max_norm / (norm + 1e-6) where that is below 1
    optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)
    return norm
