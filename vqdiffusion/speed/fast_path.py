"""The sampling fast path: the callables a pipeline samples through, as loaded or sped up.

:meth:`FastPath.optimize` (what ``VQDiffusionPipeline.optimize`` calls) fuses q/k/v, tabulates
the AdaLN modulation per timestep, swaps the blocks' linears for FP8 ones, compiles the transformer
and the VQ decoder, and records the SDPA kernel choice and whether cross-attention keys and values
are cached; the pipeline then calls ``network``, ``decode`` and ``math(fn)`` without knowing which
of these are on.
``bench/sampling.py`` measures each against diffusers on the same GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import ATTENTION_BACKENDS, attention_backend
from .compile import COMPILE_MODES, compile_blocks, compile_fast, compiled, inductor_options, uses_cuda_graphs
from .fp8 import FP8_SCALINGS, require_fp8_tensor_cores, to_float8

__all__ = ["COMPILE_SCOPES", "FastPath", "SpeedSettings"]

COMPILE_SCOPES = ("model", "blocks")


@dataclass
class SpeedSettings:
    """What :meth:`FastPath.optimize` turned on."""

    fuse_qkv: bool = False
    fuse_activation: bool = False
    fuse_residual: bool = False
    cache_context: bool = False
    cache_modulation: bool = False
    attention: str = "auto"
    fp8: bool = False
    fp8_scaling: str = "row"
    compile: str | None = None
    compile_scope: str = "model"


class FastPath:
    """``network`` (the transformer's call), ``decode`` ((B, h, w) codes -> images) and
    ``math(fn)`` (a pure tensor function of the step, compiled when compiling), for one
    transformer and VQ decoder."""

    def __init__(self, transformer: nn.Module, decode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transformer, self.decode_eager = transformer, decode
        self.settings = SpeedSettings()
        self.network: Callable = transformer
        self.decode: Callable = decode

    def optimize(self, *, fuse_qkv: bool = True, fuse_activation: bool = False, fuse_residual: bool = False,
                 cache_context: bool = True, cache_modulation: bool = True, attention: str = "auto",
                 fp8: bool = False, fp8_scaling: str = "row", compile: bool | str = False,
                 compile_scope: str = "model") -> None:
        """Inference speed-ups, in place (the transformer is for sampling afterwards).

        Args:
            fuse_qkv: one matmul for each self-attention's q, k and v.
            fuse_activation: the MLPs' GELU2 inside their first matmul (a Triton kernel on CUDA
                bf16/fp16 pipelines; an FP8 MLP keeps its own matmul).
            fuse_residual: each block's residual adds inside the projections before them (the
                attention outputs, the MLP's second linear; the same Triton kernel, the same limits).
            cache_context: cross-attention keys and values computed once per call, not per step.
            cache_modulation: each AdaLN's scale and shift computed once per timestep, not per step
                (models without classes: :meth:`~vqdiffusion.models.VQDiffusionTransformer.tabulate_modulation`).
            attention: the SDPA kernel tried first: ``auto`` (PyTorch's order), ``cudnn``,
                ``flash``, ``efficient`` or ``math``.
            fp8: the blocks' per-token linears as FP8 matmuls (:class:`~.fp8.Float8Linear`;
                H100/H200 tensor cores; needs a bfloat16 transformer).
            fp8_scaling: ``"row"`` (a scale per token and per output channel) or ``"tensor"`` (one
                scale per matrix: cuBLAS's FP8 kernels).
            compile: ``torch.compile`` the transformer, the step math and the VQ decoder: True, or
                a mode of :data:`~.compile.COMPILE_MODES`: ``"reduce-overhead"`` (CUDA graphs;
                for batch 1), ``"tuned"`` (Triton kernels tuned: minutes more compile, for long runs
                at large batch).
            compile_scope: ``"model"`` compiles the transformer whole; ``"blocks"`` compiles each
                block in place, one graph that every (identical) block reuses, so compiling costs
                one block's time however deep the model (modes without CUDA graphs).
        """
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        if fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"fp8_scaling must be one of {FP8_SCALINGS}, got {fp8_scaling!r}")
        dtype = next(self.transformer.parameters()).dtype
        if fp8 and dtype != torch.bfloat16:
            raise ValueError(f"fp8 needs a bfloat16 pipeline (pipe.to(dtype=torch.bfloat16)), this one is {dtype}")
        if fp8:
            require_fp8_tensor_cores(next(self.transformer.parameters()).device, "fp8")
        mode = None if compile is False else ("default" if compile is True else str(compile))
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}")
        if compile_scope == "blocks" and uses_cuda_graphs(mode):
            raise ValueError(f"compile_scope='blocks' is for modes without CUDA graphs; {mode!r} replays them: "
                             "compile the whole model (compile_scope='model')")
        # every check above comes before the first change below: a refused call leaves the pipeline as it was
        self.transformer.eval().requires_grad_(False)
        if fuse_qkv:
            self.transformer.fuse_qkv()
        if fuse_activation:
            self.transformer.fuse_activation()
        if fuse_residual:
            self.transformer.fuse_residual()
        if cache_modulation:
            self.transformer.tabulate_modulation()
        converted = self.settings.fp8
        if fp8 and not converted:
            to_float8(self.transformer, fp8_scaling)
        if mode is not None and compile_scope == "blocks":
            compile_blocks(self.transformer, dynamic=False, options=inductor_options(mode))
            self.network = self.transformer
        else:
            self.network = self.transformer if mode is None else compile_fast(self.transformer, mode)
        # the decoder too: eager, its GroupNorm/SiLU/residual passes and cuDNN's NCHW<->NHWC copies are a
        # large share of a whole call; compiled, they fuse and the convolutions go channels-last
        self.decode = self.decode_eager if mode is None else compile_fast(self.decode_eager, mode)
        # what a call turned on stays on (the transformer keeps its fused projections, kernels and tables)
        before = self.settings
        self.settings = SpeedSettings(fuse_qkv=fuse_qkv or before.fuse_qkv,
                                      fuse_activation=fuse_activation or before.fuse_activation,
                                      fuse_residual=fuse_residual or before.fuse_residual,
                                      cache_context=cache_context,
                                      cache_modulation=cache_modulation or before.cache_modulation,
                                      attention=attention,
                                      fp8=fp8 or converted,
                                      fp8_scaling=fp8_scaling if fp8 and not converted else before.fp8_scaling,
                                      compile=mode, compile_scope=compile_scope)

    def math(self, function: Callable) -> Callable:
        """``function`` compiled in the fast path's mode, or as is when not compiling."""
        return function if self.settings.compile is None else compiled(function, self.settings.compile)

    def attention(self):
        """A context in which SDPA tries the chosen kernel first."""
        return attention_backend(self.settings.attention)
