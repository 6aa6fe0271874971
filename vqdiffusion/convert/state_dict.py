"""Loading weights into our modules with errors that say exactly what does not fit."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_checked"]


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> nn.Module:
    """Load ``state`` strictly; on any mismatch raise ``ValueError`` listing missing keys,
    unexpected keys and shape mismatches against what the module's config implies."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs config {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatch(es), e.g. " + "; ".join(wrong_shape[:3]))
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        raise ValueError(f"the {name} checkpoint does not match its config: " + " | ".join(parts))
    module.load_state_dict(state, strict=True)
    return module
