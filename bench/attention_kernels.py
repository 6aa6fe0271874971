"""Which SDPA kernel to run for the transformer's attention shapes, forward and forward + backward.

    python bench/attention_kernels.py --size ithq --batch 16

Times self-attention (1024 queries and keys) and cross-attention (1024 queries, 77 text keys) of
one layer, bf16, with each SDPA backend forced (cuDNN, flash, memory-efficient, math), plus the
cross-attention written out as two matmuls and a softmax under ``torch.compile``, and through the
short-key Triton kernel of ``bench/short_attention_kernel.py`` (an experiment, not in the model)
at each of ``--short-configs`` (each one's errors against float32 SDPA printed too). ``--pad``
also times cuDNN on q/k/v already padded to a wider head dim (the kernel alone, not the copies)
to show what a tile-friendly head dim would buy. CUDA events, median of ``--reps`` after warm-up;
TFLOP/s counts the unpadded head dim (4 N M d per head forward, 2.5x that for the backward).
Each backward writes fresh gradients (no accumulation into ``.grad``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import short_attention_kernel as short  # bench/short_attention_kernel.py
import torch
import torch.nn.functional as F
from flops import SIZES  # bench/flops.py
from timing import median_seconds  # bench/timing.py
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the scores materialised; (B, H, N, d), (B, H, M, d) x2."""
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def short_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The short-key kernel with its merged-heads output split again: (B, H, N, d) like SDPA's."""
    batch, heads, queries, head_dim = q.shape
    return short.short_attention(q, k, v).view(batch, queries, heads, head_dim).transpose(1, 2)


def short_kernel_errors(q_shape, kv_shape) -> dict:
    """Largest errors of the short-key kernel's output and q/k/v gradients (bf16) against float32
    SDPA on the same bf16 inputs, relative to the reference's largest magnitude."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for shape in (q_shape, kv_shape, kv_shape))
    grad = torch.randn(q_shape, device="cuda", dtype=torch.bfloat16)
    errors = {}
    results = {}
    for name, attend, dtype in (("kernel", short_kernel, torch.bfloat16),
                                ("float32", F.scaled_dot_product_attention, torch.float32)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = attend(*leaves)
        out.backward(grad.to(dtype))
        results[name] = [out.detach().float()] + [t.grad.float() for t in leaves]
    for label, got, want in zip(("out", "dq", "dk", "dv"), results["kernel"], results["float32"]):
        errors[label] = ((got - want).abs().max() / want.abs().max()).item()
    return errors


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
    parser.add_argument("--short-configs", nargs="*",
                        default=["128x8x1x1", "fwd=64x4x16x3 bwd=64x4x1x1 kv=64x8x16x2",
                                 "chunked fwd=64x4x16x3 bwd=64x4x1x1",
                                 "chunked fwd=128x8x8x2 bwd=64x4x2x2 kv=64x8x4x2"],
                        help="short-key kernel settings (bench/short_attention_kernel.py configure)")
    parser.add_argument("--kinds", nargs="+", choices=["self", "cross"], default=["self", "cross"])
    parser.add_argument("--out", default=None)
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
        if kind == "cross":
            for config in args.short_configs:
                short.configure(config)
                try:
                    errors = short_kernel_errors(q_shape, kv_shape)
                except Exception as error:  # settings that do not fit the GPU's shared memory
                    print(f"short-key kernel {config}: {str(error).splitlines()[0][:120]}")
                    continue
                print(f"short-key kernel {config}, largest error / largest reference value: "
                      + ", ".join(f"{name} {value:.2e}" for name, value in errors.items()), flush=True)
                rows.append({"attention": kind, "errors": errors,
                             **measure(f"short kernel {config}", short_kernel, q_shape, kv_shape, flops, args.reps)})
                print(f"cross short kernel {config}: forward {rows[-1]['forward_ms'] or float('nan'):.3f} ms, "
                      f"forward+backward {rows[-1]['forward_backward_ms'] or float('nan'):.3f} ms", flush=True)
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
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": gpu, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                       "size": args.size, "batch": args.batch, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
