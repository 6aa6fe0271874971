"""A linear layer with what follows it computed on its accumulator: ``y = g(x W^T + b) [+ r]``.

Two epilogues that cuBLAS cannot run, each saving memory traffic of a bandwidth-bound kernel:

- the MLP's GELU2, ``g(h) = h·σ(1.702 h)`` (:func:`linear_gelu2`). Unfused, the (tokens, 4·width)
  hidden goes out to memory from the matmul, back in for the activation and out again: at the
  ITHQ size 1.5 GB per block, 6% of a batch-32 sampling step (``bench/profile_step.py sample``).
  cuBLASLt's epilogues offer tanh-GELU, not GELU2 (a different function: the weights were
  trained with GELU2).
- the residual add after an attention output projection or the MLP's second linear
  (:func:`linear_add`). Unfused, the norm that follows reads the stream and the projection's
  output and writes the new stream and its own output; with the add here it reads and writes one
  tensor each, half the bytes of the residual + LayerNorm + AdaLN kernels (10% of the step).

The epilogue works on the float32 accumulator before the one store in the input's dtype, so the
rounding differs from the unfused path only in where the single rounding happens.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fused_linear_available", "linear_add", "linear_gelu2"]

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only installs: the unfused linear and what follows it serve
    triton = None


def fused_linear_available(x: torch.Tensor, linear: nn.Module) -> bool:
    """Whether the kernel takes ``x`` through ``linear`` (a bf16/fp16 ``nn.Linear`` on the same
    CUDA device; FP8-swapped linears keep their own matmul)."""
    return (triton is not None and type(linear) is nn.Linear and x.is_cuda
            and x.dtype in (torch.bfloat16, torch.float16)
            and linear.weight.dtype == x.dtype and linear.weight.device == x.device)


def linear_gelu2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """GELU2(x W^T + b): x (..., in), weight (out, in), bias (out,) or None -> (..., out) in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.vqdiffusion.linear_gelu2(flat, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def linear_add(x: torch.Tensor, linear: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)``: x (..., in), residual (..., out) -> (..., out). One kernel where
    :func:`fused_linear_available` and the residual has x's dtype; the two operations elsewhere."""
    if not (fused_linear_available(x, linear) and residual.dtype == x.dtype):
        return residual + linear(x)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.vqdiffusion.linear_add(flat, linear.weight, linear.bias, residual.reshape(flat.shape[0], -1))
    return out.reshape(residual.shape)


if triton is not None:

    @triton.jit
    def _fused_linear_kernel(x, w, b, r, y, m, n, k, stride_xm, stride_xk, stride_wn, stride_wk, stride_rm,
                             stride_rn, stride_ym, stride_yn, has_bias: tl.constexpr, gelu2: tl.constexpr,
                             has_residual: tl.constexpr, block_m: tl.constexpr, block_n: tl.constexpr,
                             block_k: tl.constexpr, group_m: tl.constexpr, even_k: tl.constexpr):
        # tiles visited in groups of group_m row tiles, so the W tiles a group reads stay in L2
        pid = tl.program_id(0)
        tiles_n = tl.cdiv(n, block_n)
        per_group = group_m * tiles_n
        first_m = (pid // per_group) * group_m
        rows_in_group = tl.minimum(tl.cdiv(m, block_m) - first_m, group_m)
        tile_m = first_m + (pid % per_group) % rows_in_group
        tile_n = (pid % per_group) // rows_in_group

        rows = tile_m * block_m + tl.arange(0, block_m)
        cols = tile_n * block_n + tl.arange(0, block_n)
        ks = tl.arange(0, block_k)
        x_tile = x + rows[:, None] * stride_xm + ks[None, :] * stride_xk  # (block_m, block_k)
        w_tile = w + cols[None, :] * stride_wn + ks[:, None] * stride_wk  # (block_k, block_n): W^T
        acc = tl.zeros((block_m, block_n), dtype=tl.float32)
        for step in range(0, tl.cdiv(k, block_k)):
            if even_k:  # no depth mask: plain vectorised loads in the inner loop
                a = tl.load(x_tile, mask=rows[:, None] < m, other=0.0)
                bt = tl.load(w_tile, mask=cols[None, :] < n, other=0.0)
            else:
                left = k - step * block_k
                a = tl.load(x_tile, mask=(rows[:, None] < m) & (ks[None, :] < left), other=0.0)
                bt = tl.load(w_tile, mask=(ks[:, None] < left) & (cols[None, :] < n), other=0.0)
            acc = tl.dot(a, bt, acc)
            x_tile += block_k * stride_xk
            w_tile += block_k * stride_wk
        inside = (rows[:, None] < m) & (cols[None, :] < n)
        if has_bias:
            acc += tl.load(b + cols, mask=cols < n, other=0.0).to(tl.float32)[None, :]
        if gelu2:
            acc = acc * tl.sigmoid(1.702 * acc)
        if has_residual:
            acc += tl.load(r + rows[:, None] * stride_rm + cols[None, :] * stride_rn, mask=inside,
                           other=0.0).to(tl.float32)
        tl.store(y + rows[:, None] * stride_ym + cols[None, :] * stride_yn, acc.to(y.dtype.element_ty), mask=inside)

    # Hopper-sized tiles; the small-M ones serve batch 1 (2048 rows with guidance)
    _CONFIGS = [
        triton.Config({"block_m": 128, "block_n": 256, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=3),
        triton.Config({"block_m": 256, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=3),
        triton.Config({"block_m": 128, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=4),
        triton.Config({"block_m": 128, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
        triton.Config({"block_m": 64, "block_n": 256, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
        triton.Config({"block_m": 64, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
    ]
    _depth_checked = triton.heuristics({"even_k": lambda args: args["k"] % args["block_k"] == 0})(_fused_linear_kernel)
    # each epilogue tunes its own tiles: the residual's extra load can favour other shapes
    _tuned_kernel = triton.autotune(configs=_CONFIGS, key=["m", "n", "k", "gelu2", "has_residual"])(_depth_checked)

    def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
               out: torch.Tensor, gelu2: bool, kernel=None, **tiles) -> None:
        """Run the kernel on x (M, in) into out (M, out), adding residual (M, out) if given:
        autotuned, or ``kernel`` (``_depth_checked``, for the interpreter) with ``tiles``' sizes
        (block_m, block_n, block_k, group_m)."""
        rows, depth = x.shape
        cols = weight.shape[0]

        def grid(meta):
            return (triton.cdiv(rows, meta["block_m"]) * triton.cdiv(cols, meta["block_n"]),)

        # absent operands get a stand-in pointer the kernel never reads (has_bias / has_residual off)
        added = residual if residual is not None else out
        (kernel or wrap_triton(_tuned_kernel))[grid](
            x, weight, bias if bias is not None else x, added, out, rows, cols, depth, *x.stride(), *weight.stride(),
            *added.stride(), *out.stride(), has_bias=bias is not None, gelu2=gelu2, has_residual=residual is not None,
            **tiles)

    @triton_op("vqdiffusion::linear_gelu2", mutates_args=())
    def _linear_gelu2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (M, in) CUDA, weight (out, in), bias (out,) or None -> GELU2(x W^T + b) (M, out)."""
        out = torch.empty((x.shape[0], weight.shape[0]), device=x.device, dtype=x.dtype)
        launch(x, weight, bias, None, out, gelu2=True)
        return out

    @triton_op("vqdiffusion::linear_add", mutates_args=())
    def _linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor) -> torch.Tensor:
        """x (M, in) CUDA, weight (out, in), bias (out,) or None, residual (M, out) -> residual + x W^T + b."""
        out = torch.empty((x.shape[0], weight.shape[0]), device=x.device, dtype=x.dtype)
        launch(x, weight, bias, residual, out, gelu2=False)
        return out
