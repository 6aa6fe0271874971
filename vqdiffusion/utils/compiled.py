"""``torch.compile`` of pure tensor functions, built once on first use (not at import: compiling
costs seconds and most runs never ask for it)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["compiled"]


@functools.cache
def compiled(function: Callable) -> Callable:
    """The compiled form of ``function`` (static shapes), shared by every caller."""
    return torch.compile(function, dynamic=False)
