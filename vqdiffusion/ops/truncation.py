"""Truncation of p(x0 | x_t) without a sort: one GPU kernel instead of a sort, a cumsum and a gather.

:func:`~vqdiffusion.diffusion.guidance.truncate` keeps, per token, the most likely classes whose
mass before each (in descending order) is below the rate, by sorting the K classes of every token:
at the paper sizes the sort and its cumsum are among the largest non-matmul kernels of a sampling
step (``bench/profile_step.py sample``). What it keeps is every class with p >= tau, where tau is the smallest
float whose "mass strictly above" is below the rate. This kernel finds tau per token by bisection
over the float32 bit patterns (non-negative floats are ordered like their int32 bits, so 32 rounds
reach adjacent floats: the exact tau), each round a masked sum over the K values held in
registers, and writes the truncated row: one read and one write of (B, K, N).

The same classes are kept as by the sort, up to the summation order of the masses (a token whose
boundary mass is within float32 rounding of the rate may keep one class more or less).
"""

from __future__ import annotations

import torch

__all__ = ["truncate_by_mass", "truncation_kernel_available"]

MAX_CLASSES = 32768  # the K values of one token live in registers

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only installs: the sort-based truncate serves
    triton = None


def truncation_kernel_available(log_p: torch.Tensor) -> bool:
    return (triton is not None and log_p.is_cuda and log_p.dtype == torch.float32 and log_p.dim() == 3
            and log_p.shape[1] <= MAX_CLASSES)


def truncate_by_mass(log_p: torch.Tensor, rate: float) -> torch.Tensor:
    """The bisection kernel on a (B, K, N) input for which :func:`truncation_kernel_available`
    holds: -inf outside the kept classes."""
    return torch.ops.vqdiffusion.truncate_by_mass(log_p, float(rate))


if triton is not None:

    @triton.jit
    def _truncate_kernel(log_p, out, num_classes, num_tokens, stride_b, stride_k, stride_n,
                         out_stride_b, out_stride_k, out_stride_n, rate, block_k: tl.constexpr):
        column = tl.program_id(0)  # one token (b, n) per program
        b = column // num_tokens
        n = column % num_tokens
        k = tl.arange(0, block_k)
        inside = k < num_classes
        values = tl.load(log_p + b * stride_b + n * stride_n + k * stride_k, mask=inside, other=float("-inf"))
        p = tl.exp(values)
        # hi always qualifies (mass strictly above it < rate; true for max p), lo never does
        hi = tl.max(p, axis=0).to(tl.int32, bitcast=True)
        lo = hi * 0 - 1  # "below zero": the mass above it is the whole 1 >= rate
        for _ in range(32):
            active = hi - lo > 1
            mid = lo + (hi - lo) // 2
            above = tl.sum(tl.where(p > mid.to(tl.float32, bitcast=True), p, 0.0), axis=0)
            qualifies = above < rate
            hi = tl.where(active & qualifies, mid, hi)
            lo = tl.where(active & ~qualifies, mid, lo)
        threshold = hi.to(tl.float32, bitcast=True)
        kept = tl.where(p >= threshold, values, float("-inf"))
        tl.store(out + b * out_stride_b + n * out_stride_n + k * out_stride_k, kept, mask=inside)

    @triton_op("vqdiffusion::truncate_by_mass", mutates_args=())
    def _truncate_by_mass(log_p: torch.Tensor, rate: float) -> torch.Tensor:
        """log_p (B, K, N) float32 CUDA -> (B, K, N), the dropped classes at -inf."""
        out = torch.empty_like(log_p)
        batch, classes, tokens = log_p.shape
        wrap_triton(_truncate_kernel)[(batch * tokens,)](
            log_p, out, classes, tokens, *log_p.stride(), *out.stride(), rate,
            block_k=triton.next_power_of_2(classes), num_warps=8)
        return out
