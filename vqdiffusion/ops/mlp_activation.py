"""The MLP's first linear and its GELU2 in one kernel: ``y = g(x W^T + b)``, ``g(h) = h·σ(1.702 h)``.

Unfused, the (tokens, 4·width) hidden goes out to memory from the matmul, back in for the
activation and out again: at the ITHQ size a memory-bound pass of 1.5 GB per block, 6% of a
batch-32 sampling step (``bench/profile_step.py sample``). cuBLASLt's epilogues offer tanh-GELU,
not GELU2 (a different function: the weights were trained with GELU2), so this is a tiled matmul
of its own whose epilogue adds the bias and applies g to the float32 accumulator before the one
bf16 store. Rounding differs from the unfused path only in where the single bf16 rounding happens
(after g here, before and after g there).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["linear_gelu2", "linear_gelu2_available"]

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only installs: the unfused linear and activation serve
    triton = None


def linear_gelu2_available(x: torch.Tensor, linear: nn.Module) -> bool:
    """Whether :func:`linear_gelu2` takes ``x`` through ``linear`` (a bf16/fp16 ``nn.Linear`` on
    the same CUDA device; FP8-swapped linears keep their own matmul)."""
    return (triton is not None and type(linear) is nn.Linear and x.is_cuda
            and x.dtype in (torch.bfloat16, torch.float16)
            and linear.weight.dtype == x.dtype and linear.weight.device == x.device)


def linear_gelu2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in), weight (out, in), bias (out,) or None -> (..., out) in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.vqdiffusion.linear_gelu2(flat, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


if triton is not None:

    @triton.jit
    def _linear_gelu2_kernel(x, w, b, y, m, n, k, stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                             has_bias: tl.constexpr, block_m: tl.constexpr, block_n: tl.constexpr,
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
        if has_bias:
            acc += tl.load(b + cols, mask=cols < n, other=0.0).to(tl.float32)[None, :]
        acc = acc * tl.sigmoid(1.702 * acc)
        tl.store(y + rows[:, None] * stride_ym + cols[None, :] * stride_yn, acc.to(y.dtype.element_ty),
                 mask=(rows[:, None] < m) & (cols[None, :] < n))

    # Hopper-sized tiles; the small-M ones serve batch 1 (2048 rows with guidance)
    _CONFIGS = [
        triton.Config({"block_m": 128, "block_n": 256, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=3),
        triton.Config({"block_m": 256, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=3),
        triton.Config({"block_m": 128, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=8, num_stages=4),
        triton.Config({"block_m": 128, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
        triton.Config({"block_m": 64, "block_n": 256, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
        triton.Config({"block_m": 64, "block_n": 128, "block_k": 64, "group_m": 8}, num_warps=4, num_stages=4),
    ]
    _depth_checked = triton.heuristics({"even_k": lambda args: args["k"] % args["block_k"] == 0})(_linear_gelu2_kernel)
    _tuned_kernel = triton.autotune(configs=_CONFIGS, key=["m", "n", "k"])(_depth_checked)

    def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
               kernel=None, **tiles) -> None:
        """Run the kernel on x (M, in) into out (M, out): autotuned, or ``kernel`` (``_depth_checked``,
        for the interpreter) with ``tiles``' sizes (block_m, block_n, block_k, group_m)."""
        rows, depth = x.shape
        cols = weight.shape[0]

        def grid(meta):
            return (triton.cdiv(rows, meta["block_m"]) * triton.cdiv(cols, meta["block_n"]),)

        (kernel or wrap_triton(_tuned_kernel))[grid](
            x, weight, bias if bias is not None else x, out, rows, cols, depth, *x.stride(), *weight.stride(),
            *out.stride(), has_bias=bias is not None, **tiles)

    @triton_op("vqdiffusion::linear_gelu2", mutates_args=())
    def _linear_gelu2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (M, in) CUDA, weight (out, in), bias (out,) or None -> (M, out)."""
        out = torch.empty((x.shape[0], weight.shape[0]), device=x.device, dtype=x.dtype)
        launch(x, weight, bias, out)
        return out
