"""Which SDPA kernel to run for the transformer's attention shapes, forward and forward + backward.

    python bench/attention_kernels.py --size ithq --batch 16

Times self-attention (1024 queries and keys) and cross-attention (1024 queries, 77 text keys) of
one layer, bf16, with each SDPA backend forced (cuDNN, flash, memory-efficient, math), plus the
cross-attention written out as two matmuls and a softmax under ``torch.compile``. ``--pad``
also times cuDNN on q/k/v already padded to a wider head dim (the kernel alone, not the copies)
to show what a tile-friendly head dim would buy. CUDA events, median of ``--reps`` after warm-up;
TFLOP/s counts the unpadded head dim (4 N M d per head forward, 2.5x that for the backward).
Each backward writes fresh gradients (no accumulation into ``.grad``). Rows go to
``bench/results/attention_kernels.csv``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from common import SIZES, Results, median_seconds
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the scores materialised; (B, H, N, d), (B, H, M, d) x2."""
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def timed(run, reps: int) -> float | None:
    try:
        return 1e3 * median_seconds(run, reps=reps, warmup=3)
    except Exception as error:  # a backend refusing this shape, or kernel settings that do not fit, say so
        print(f"    unavailable: {str(error).splitlines()[0][:120]}")
        return None


def measure(name: str, attend, q_shape, kv_shape, forward_flops: float, reps: int) -> dict:
    """Forward and forward + backward times of ``attend(q, k, v)`` on bf16 tensors of the given
    shapes (heads split or not, head dims padded or not: whatever ``attend`` takes)."""
    q = torch.randn(q_shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(q_shape, device="cuda", dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            attend(q, k, v)

    def forward_backward():
        q.grad = k.grad = v.grad = None  # a fresh gradient each time, not an accumulation
        attend(q, k, v).backward(grad)

    row = {"kernel": name, "q_shape": list(q_shape), "kv_shape": list(kv_shape)}
    row["forward_ms"] = timed(forward, reps)
    row["forward_backward_ms"] = timed(forward_backward, reps)
    if row["forward_ms"]:
        row["forward_tflops"] = forward_flops / row["forward_ms"] / 1e9
    if row["forward_backward_ms"]:
        row["forward_backward_tflops"] = 3.5 * forward_flops / row["forward_backward_ms"] / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ithq")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--pad", type=int, nargs="*", default=[96, 128], help="padded head dims for cuDNN")
    parser.add_argument("--kinds", nargs="+", choices=["self", "cross"], default=["self", "cross"])
    args = parser.parse_args()
    _, heads, head_dim, _, _, text_len = SIZES[args.size]
    scale = 1 / math.sqrt(head_dim)
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}; {args.size} batch {args.batch}, {heads} heads x {head_dim}")
    rows = []
    compiled_explicit = torch.compile(explicit_attention)
    for kind, keys in (("self", 1024), ("cross", text_len)):
        if kind not in args.kinds:
            continue
        q_shape, kv_shape = (args.batch, heads, 1024, head_dim), (args.batch, heads, keys, head_dim)
        flops = 4 * args.batch * heads * 1024 * keys * head_dim
        first = len(rows)
        for name, backend in BACKENDS.items():
            def attend(q, k, v, backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v)
            rows.append({"attention": kind, **measure(name, attend, q_shape, kv_shape, flops, args.reps)})
        rows.append({"attention": kind, **measure("explicit compiled", compiled_explicit, q_shape, kv_shape,
                                                  flops, args.reps)})
        for width in args.pad:
            def padded(q, k, v):
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    return F.scaled_dot_product_attention(q, k, v, scale=scale)
            rows.append({"attention": kind, **measure(f"cudnn, head dim {width}", padded, q_shape[:-1] + (width,),
                                                      kv_shape[:-1] + (width,), flops, args.reps)})
        for row in rows[first:]:
            print(f"{kind:5s} {row['kernel']:28s} forward {row['forward_ms'] or float('nan'):7.3f} ms "
                  f"({row.get('forward_tflops', float('nan')):5.0f} TFLOP/s)  forward+backward "
                  f"{row['forward_backward_ms'] or float('nan'):7.3f} ms "
                  f"({row.get('forward_backward_tflops', float('nan')):5.0f} TFLOP/s)", flush=True)
    results = Results("attention_kernels")
    for row in rows:
        results.append({"size": args.size, "batch": args.batch, **row})


if __name__ == "__main__":
    main()
