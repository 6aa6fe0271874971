"""Diffusion-stage training throughput and MFU at the paper sizes (one GPU, bf16 autocast).

    python bench/train_mfu.py --size ithq --batch 8 16 32 --checkpointing off on --compile

One training step = sample t, q(x_t | x0), the transformer, the full VQ-Diffusion loss (posterior
KLs over (B, K+1, N)), backward, fused AdamW on float32 master weights. Random tokens and text
embeddings: the cost does not depend on them. Timed with CUDA events over ``--steps`` steps after
``--warmup`` (compile included there). MFU = model matmul FLOPs (3x the forward's, counted from
the shapes; recomputation under checkpointing is not counted as useful work) / time / the bf16
matmul peak measured in the same process. A batch that does not fit is reported as OOM.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from flops import SIZES, forward_flops  # bench/flops.py
from timing import matmul_peak, median_seconds  # bench/timing.py

from vqdiffusion.diffusion.loss import DiffusionLoss
from vqdiffusion.diffusion.schedule import NoiseSchedule, model_timestep
from vqdiffusion.models import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.utils.compiled import inductor_options


def build_step(size: str, batch: int, checkpointing: bool, compile_: bool, compile_loss: bool = False,
               memory_budget: float | None = None, multi_kernel: bool = False):
    """One training step as a function of nothing (random tokens and text, fixed per call)."""
    layers, heads, head_dim, codes, ctx_dim, ctx_len = SIZES[size]
    config = TransformerConfig(num_embeds=codes, height=32, width=32, num_layers=layers, num_heads=heads,
                               head_dim=head_dim, context_dim=ctx_dim, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = VQDiffusionTransformer(config).cuda()
    if memory_budget is not None:  # compile's partitioner recomputes the cheapest activations to fit it
        torch._functorch.config.activation_memory_budget = memory_budget
    options = inductor_options() if multi_kernel else None  # the sampling fast path's compile options
    network = torch.compile(model, options=options) if compile_ else model
    schedule = NoiseSchedule(codes).to(device="cuda")
    loss_fn = DiffusionLoss(schedule).to("cuda")
    loss_fn.compile_math = compile_loss  # train.py's diffusion_training.compile=true turns on both
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x0 = torch.randint(0, codes, (batch, 1024), device="cuda")
    context = torch.randn(batch, ctx_len, ctx_dim, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            terms = loss_fn(lambda x_t, t: network(x_t, model_timestep(t), context=context), x0)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.parameters_m = sum(p.numel() for p in model.parameters()) / 1e6
    return step


def measure(size: str, batch: int, checkpointing: bool, compile_: bool, steps: int, warmup: int,
            compile_loss: bool = False, memory_budget: float | None = None, multi_kernel: bool = False) -> dict:
    step = build_step(size, batch, checkpointing, compile_, compile_loss, memory_budget, multi_kernel)
    torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, reps=steps, warmup=warmup)
    return {"ms_per_step": 1e3 * seconds, "samples_per_s": batch / seconds,
            "tflops": 3 * forward_flops(size, batch) / seconds / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "parameters_m": step.parameters_m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), nargs="+", default=["ithq"])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--checkpointing", choices=["off", "on"], nargs="+", default=["off", "on"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--compile-loss", action="store_true", help="torch.compile the loss math after it")
    parser.add_argument("--multi-kernel", action="store_true",
                        help="with --compile: inductor's multi-kernel (persistent) reductions, as sampling uses")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="with --compile: activation memory budget in (0, 1] (1 = save everything)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    peak = matmul_peak()
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, measured bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    rows = []
    for size in args.size:
        for checkpointing in args.checkpointing:
            for batch in args.batch:
                row = {"size": size, "batch": batch, "checkpointing": checkpointing, "compile": args.compile,
                       "compile_loss": args.compile_loss, "memory_budget": args.memory_budget,
                       "multi_kernel": args.multi_kernel}
                try:
                    row.update(measure(size, batch, checkpointing == "on", args.compile, args.steps, args.warmup,
                                       args.compile_loss, args.memory_budget, args.multi_kernel))
                    row["mfu"] = row["tflops"] / peak
                    print(f"{size} b={batch} ckpt={checkpointing}: {row['ms_per_step']:.0f} ms, "
                          f"{row['samples_per_s']:.1f} samples/s, {row['tflops']:.0f} TFLOP/s, "
                          f"MFU {100 * row['mfu']:.1f}%, {row['peak_memory_gib']:.1f} GiB", flush=True)
                except torch.OutOfMemoryError:
                    row["oom"] = True
                    print(f"{size} b={batch} ckpt={checkpointing}: OOM", flush=True)
                rows.append(row)
                if args.out:  # after every row: a later row's time-out must not lose the earlier ones
                    with open(args.out, "w") as f:
                        json.dump({"gpu": gpu, "torch": torch.__version__, "matmul_peak_tflops": peak,
                                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
                torch._dynamo.reset()
                torch.cuda.empty_cache()
    print("| size | batch | checkpointing | ms/step | samples/s | TFLOP/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("oom"):
            print(f"| {r['size']} | {r['batch']} | {r['checkpointing']} | OOM | | | | |")
        else:
            print(f"| {r['size']} | {r['batch']} | {r['checkpointing']} | {r['ms_per_step']:.0f} | "
                  f"{r['samples_per_s']:.1f} | {r['tflops']:.0f} | {100 * r['mfu']:.1f}% | "
                  f"{r['peak_memory_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
