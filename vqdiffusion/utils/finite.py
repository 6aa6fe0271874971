"""Finding NaN and inf in nested containers of tensors (state dicts, optimiser states)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

__all__ = ["non_finite_tensors", "check_finite_checkpoint"]


def _tensors(tree, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i))


def non_finite_tensors(tree) -> list[str]:
    """Names (dotted paths) of the floating-point tensors in ``tree`` holding NaN or inf."""
    return [name for name, tensor in _tensors(tree)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def check_finite_checkpoint(checkpoint: dict, step: int) -> None:
    """Raise FloatingPointError, naming what is poisoned, if a checkpoint about to be written
    holds NaN or inf in its weights or optimiser state: a run is never resumed from it."""
    weights = non_finite_tensors(checkpoint.get("state_dict", {}))
    optimizer = non_finite_tensors(checkpoint.get("optimizer_states", []))
    if weights or optimizer:
        first = (weights or optimizer)[0]
        raise FloatingPointError(
            f"training diverged: after step {step}, {len(weights)} weight and {len(optimizer)} optimiser tensors hold "
            f"NaN or inf (first: {first}); this checkpoint is not written, so every checkpoint on disk predates the "
            f"divergence: resume from one with a lower learning rate (ckpt_path=last takes the newest)")
