"""``torch.compile`` for the fast paths: the options every compile here uses, and pure tensor
functions compiled once on first use (not at import: compiling costs seconds and most runs never
ask for it)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

__all__ = ["COMPILE_MODES", "begin_graph_step", "compile_blocks", "compile_fast", "compiled", "inductor_options",
           "uses_cuda_graphs"]

# torch.compile's modes, plus "tuned": the default mode with coordinate-descent tuning of every
# generated Triton kernel's launch configuration (block sizes, warps), without the GEMM autotuning
# of "max-autotune" (whose compile did not finish within 10 minutes on the ITHQ FP8 transformer).
# Minutes more compile for a few percent at large batches (bench/sampling.py --variants fp8-tuned).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "tuned")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def inductor_options(mode: str | None = None, multi_kernel: bool = True) -> dict:
    """What ``torch.compile(mode=mode)`` sets, plus (``multi_kernel``) multi-kernel reductions: each row reduction
    (LayerNorm over the width, the FP8 row scales) is built both as a persistent kernel holding
    the row in registers and as a looped one, and the faster is kept at run time. Inductor's own
    threshold makes rows over 1024 wide looped, which reads them twice: the ITHQ transformer's
    rows of 1408 and 5632 pay for that in every LayerNorm."""
    import torch._inductor

    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "tuned":
        options = {"coordinate_descent_tuning": True}
    else:
        options = {} if mode in (None, "default") else dict(torch._inductor.list_mode_options(mode))
    if not multi_kernel:
        return options
    options["triton.multi_kernel"] = 1
    # torch 2.11's cache of the picked kernels crashed on a reloaded Triton kernel ("'NoneType'
    # object does not support the context manager protocol" in JITFunction.cache_key); without
    # it the pick is re-measured once per process
    os.environ.setdefault("TORCHINDUCTOR_DISABLE_MULTI_KERNEL_CACHE", "1")
    return options


def compile_fast(fn: Callable, mode: str | None = None) -> Callable:
    """``torch.compile`` at static shapes with :func:`inductor_options`."""
    return torch.compile(fn, dynamic=False, options=inductor_options(mode))


def compile_blocks(transformer: torch.nn.Module, **compile_options) -> None:
    """``torch.compile`` each of ``transformer.transformer_blocks`` in place (``nn.Module.compile``
    with ``compile_options``): parameter names and checkpoints stay as they are, and the identical
    blocks share one compiled graph, so compiling costs one block's time however deep the model;
    the rest of the transformer stays eager."""
    for block in transformer.transformer_blocks:
        block.compile(**compile_options)


@functools.cache
def compiled(function: Callable, mode: str | None = None) -> Callable:
    """The compiled form of ``function`` (static shapes) in ``torch.compile``'s ``mode`` (None or
    "default": its default), shared by every caller."""
    return compile_fast(function, mode)


def uses_cuda_graphs(mode: str | None) -> bool:
    """Whether a ``torch.compile`` mode replays CUDA graphs, whose outputs live in buffers the next
    replay overwrites (clone what must outlive it)."""
    return mode in _CUDA_GRAPH_MODES


def begin_graph_step(mode: str | None) -> None:
    """Call before each sampling step: under a CUDA-graph mode, starts a new graph generation (the
    previous step's graph outputs are used up, so their buffers may be reused); otherwise nothing."""
    if uses_cuda_graphs(mode):
        torch.compiler.cudagraph_mark_step_begin()
