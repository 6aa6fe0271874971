"""The project's epilogue matmuls against cuBLAS followed by the separate pass they replace.

    python bench/epilogue_matmul.py --size ithq --batch 32

For each per-token linear of a block that takes an epilogue (the MLP's first linear with GELU2;
the attention output projection and the MLP's second linear with the residual add), at the
sampling step's row count (batch x 2 with guidance x 1024 tokens), bf16: cuBLAS's matmul alone,
cuBLAS then the pass (compiled by inductor into one elementwise kernel), and the Triton kernel of
``vqdiffusion/ops/fused_linear.py`` (autotuned on the first call). The kernel pays where its time
is below "cuBLAS + pass"; how close it stays to "cuBLAS alone" says whether its matmul keeps
cuBLAS's speed. CUDA events, median of ``--reps`` after warm-up; TFLOP/s counts the matmul's
2 M N K. Rows go to ``bench/results/epilogue_matmul.csv``.
"""

from __future__ import annotations

import argparse

import torch
from common import SIZES, Results, matmul_peak, median_seconds

from vqdiffusion.models.transformer import gelu2
from vqdiffusion.ops.fused_linear import fused_linear_available, linear_add, linear_gelu2


def ways_to_compute(linear, x, residual, epilogue: str, gelu2_pass, add_pass) -> dict:
    """The three timed callables of one linear: cuBLAS alone, cuBLAS + the pass, the epilogue kernel."""
    if epilogue == "gelu2":
        return {"cuBLAS alone": lambda: linear(x),
                "cuBLAS + pass": lambda: gelu2_pass(linear(x)),
                "epilogue kernel": lambda: linear_gelu2(x, linear.weight, linear.bias)}
    return {"cuBLAS alone": lambda: linear(x),
            "cuBLAS + pass": lambda: add_pass(residual, linear(x)),
            "epilogue kernel": lambda: linear_add(x, linear, residual)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ithq")
    parser.add_argument("--batch", type=int, default=32, help="images; the rows are batch x 2 (guidance) x 1024")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "error: the epilogue kernel runs on a CUDA GPU (with Triton); none is visible\n")
    _, heads, head_dim, _, _, _ = SIZES[args.size]
    width = heads * head_dim
    rows = args.batch * 2 * 1024
    peak = matmul_peak()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.size} batch {args.batch} "
          f"({rows} rows), bf16 matmul peak {peak:.0f} TFLOP/s")
    torch.manual_seed(0)
    gelu2_pass = torch.compile(gelu2)
    add_pass = torch.compile(torch.add)
    results = Results("epilogue_matmul")
    shapes = (("MLP first linear + GELU2", width, 4 * width, "gelu2"),
              ("attention output + residual", width, width, "residual"),
              ("MLP second linear + residual", 4 * width, width, "residual"))
    for name, inner, outer, epilogue in shapes:
        linear = torch.nn.Linear(inner, outer, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(rows, inner, device="cuda", dtype=torch.bfloat16)
        residual = torch.randn(rows, outer, device="cuda", dtype=torch.bfloat16)
        if not fused_linear_available(x, linear):
            parser.exit(2, "error: the epilogue kernel needs Triton and a CUDA GPU\n")
        candidates = ways_to_compute(linear, x, residual, epilogue, gelu2_pass, add_pass)
        flops = 2 * rows * inner * outer
        for kernel, run in candidates.items():
            with torch.no_grad():
                seconds = median_seconds(run, reps=args.reps, warmup=3)
            tflops = flops / seconds / 1e12
            print(f"{name:30s} {kernel:16s} {1e3 * seconds:7.3f} ms  {tflops:5.0f} TFLOP/s ({tflops / peak:4.0%})",
                  flush=True)
            results.append({"size": args.size, "batch": args.batch, "rows": rows, "linear": name,
                            "in": inner, "out": outer, "kernel": kernel, "ms": 1e3 * seconds,
                            "tflops": tflops, "peak_tflops": peak})


if __name__ == "__main__":
    main()
