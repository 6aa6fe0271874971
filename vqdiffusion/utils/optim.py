"""Gradient clipping folded into a fused Adam/AdamW step."""

from __future__ import annotations

import torch

__all__ = ["clip_grad_norm_in_step", "folds_clipping"]


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
