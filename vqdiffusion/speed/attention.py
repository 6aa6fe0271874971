"""The SDPA kernel tried first: PyTorch's order, or one named kernel ahead of the others."""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["ATTENTION_BACKENDS", "attention_backend"]

ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@contextmanager
def attention_backend(name: str):
    """Run SDPA with ``name`` tried first (then the others), or PyTorch's own order for ``auto``.
    Head dims that are not a multiple of 64 (ITHQ's 88) are where the choice matters most."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {name!r}")
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    backends = [order[name]] + [b for key, b in order.items() if key != name]
    with sdpa_kernel(backends, set_priority=True):
        yield
