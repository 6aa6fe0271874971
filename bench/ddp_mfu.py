"""DDP training throughput at the paper sizes: the ``bench/train_mfu.py`` step on N GPUs of one host.

    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    for n in 1 2 4; do
        torchrun --nproc-per-node $n bench/ddp_mfu.py --size coco --batch 64 --compile blocks --compile-loss
    done
    python bench/ddp_mfu.py --table      # speed-ups against the 1-GPU row of the same day and host

One process per GPU, each with the same per-GPU batch (the global batch grows with the GPU count,
as ``trainer=ddp`` does). With more than one process the model is wrapped in
``DistributedDataParallel`` with its default 25 MB buckets, which is what Lightning's
``strategy=ddp`` builds; with one process it is not wrapped (Lightning trains one GPU without DDP),
so the 1-GPU row is the baseline a user would compare against. Every rank times its own steps
with CUDA events after warm-up; the step time of the run is the slowest rank's median (the
all-reduce makes them wait for each other anyway), and samples/s = GPUs x batch / that time.
Rows go to ``bench/results/ddp_mfu.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os

import torch
import torch.distributed as dist
from common import Results
from train_mfu import add_step_arguments, measure, step_options  # bench/train_mfu.py


def run(args: argparse.Namespace) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    wrap = world > 1 or args.wrap_one
    if wrap:
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    options = dataclasses.replace(step_options(args), ddp=wrap, ddp_bucket_view=args.bucket_view,
                                  ddp_static_graph=args.static_graph, ddp_bucket_mb=args.bucket_mb,
                                  ddp_bf16_grads=args.bf16_grads, ddp_graph_split=not args.no_graph_split)
    after = None
    if args.profile:
        from profile_step import profile_overlap  # bench/profile_step.py

        def after(step):
            return {"profile": profile_overlap(step, args.profile)}
    row = measure(options, args.steps, args.warmup, after)
    rows = [row]
    if world > 1:
        rows = [None] * world
        dist.all_gather_object(rows, row)
    if local_rank == 0:
        slowest = max(r["ms_per_step"] for r in rows)
        nccl = {k: v for k, v in os.environ.items() if k.startswith("NCCL_") and k != "NCCL_VERSION"}
        result = {"gpus": world, "size": options.size, "batch": options.batch, "accumulate": options.accumulate,
                  "bf16_residual": options.bf16_residual, "compile": options.compile, "wrapper": setting(options, nccl),
                  "ms_per_step": slowest, "rank_ms_per_step": [r["ms_per_step"] for r in rows],
                  "samples_per_s": world * options.samples / (slowest / 1e3),
                  "tflops_per_gpu": rows[0]["tflops"] * rows[0]["ms_per_step"] / slowest,
                  "peak_memory_gib": max(r["peak_memory_gib"] for r in rows)}
        print(f"{torch.cuda.get_device_name()}: {options.size} batch {options.batch} per GPU, {world} GPU(s): "
              f"{slowest:.1f} ms/step (ranks {[round(r['ms_per_step'], 1) for r in rows]}), "
              f"{result['samples_per_s']:.1f} samples/s, {result['peak_memory_gib']:.1f} GiB", flush=True)
        for rank, r in enumerate(rows):
            if "profile" in r:
                print(f"  rank {rank} profile, ms/step: " + ", ".join(f"{k} {v:.1f}" for k, v in r["profile"].items()),
                      flush=True)
        Results("ddp_mfu").append(result)
    if wrap:
        dist.destroy_process_group()


def setting(o, nccl: dict) -> str:
    """The DDP wrapper's settings in words ("-": no wrapper, one GPU)."""
    if not o.ddp:
        return "-"
    return ", ".join(["DDP"] + ["bucket view"] * o.ddp_bucket_view + ["static graph"] * o.ddp_static_graph
                     + [f"{o.ddp_bucket_mb} MB buckets"] * (o.ddp_bucket_mb != 25)
                     + ["bf16 all-reduce"] * o.ddp_bf16_grads + ["blocks not split"] * (not o.ddp_graph_split)
                     + [o.blas] * (o.blas != "default")
                     + [f"backward matmuls leave {o.sm_carveout} SMs"] * (o.sm_carveout is not None)
                     + [f"{k}={v}" for k, v in nccl.items() if k != "NCCL_NVLS_ENABLE"])


def table(path) -> None:
    """Speed-ups of each row against the 1-GPU row of the same size, batch, accumulation and residual
    stream measured on the same day on the same kind of GPU (a baseline from another host can
    differ by 1-2%, the size of the effects measured here)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def key(r: dict) -> tuple:
        return r["date"], r["device"], r["size"], r["batch"], r["accumulate"], r["bf16_residual"]

    baselines = {key(r): r for r in rows if r["gpus"] == "1" and r["wrapper"] == "-"}
    print("| date | GPU | size | batch per GPU | residual | GPUs | wrapper | ms/step | samples/s | speed-up "
          "| TFLOP/s per GPU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (*key(r), int(r["gpus"]), r["wrapper"])):
        base = baselines.get(key(r))
        speedup = f"{float(r['samples_per_s']) / float(base['samples_per_s']):.2f}x" if base else "(no 1-GPU row)"
        residual = "bf16" if r["bf16_residual"] == "True" else "float32"
        batch = f"{r['batch']}x{r['accumulate']}" if r["accumulate"] != "1" else r["batch"]
        print(f"| {r['date']} | {r['device']} | {r['size']} | {batch} | {residual} | {r['gpus']} | {r['wrapper']} | "
              f"{float(r['ms_per_step']):.1f} | {float(r['samples_per_s']):.1f} | {speedup} | "
              f"{float(r['tflops_per_gpu']):.0f} | {float(r['peak_memory_gib']):.1f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, many=False)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps after the first (compiling) one")
    parser.add_argument("--wrap-one", action="store_true",
                        help="wrap the model in DDP on one GPU too (the wrapper's own cost, without peers)")
    parser.add_argument("--bucket-view", action="store_true",
                        help="DDP(gradient_as_bucket_view=True): no copy of the gradients into the buckets and back")
    parser.add_argument("--static-graph", action="store_true", help="DDP(static_graph=True)")
    parser.add_argument("--bucket-mb", type=int, default=25, help="DDP's bucket_cap_mb")
    parser.add_argument("--bf16-grads", action="store_true",
                        help="all-reduce the gradients in bf16 (DDP's bf16_compress_hook): half the bytes")
    parser.add_argument("--no-graph-split", action="store_true",
                        help="torch._dynamo.config.optimize_ddp = False: each compiled block stays one graph "
                             "instead of being split at DDP's bucket boundaries (Dynamo's DDPOptimizer)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after the timing, profile this many steps on every rank: how long NCCL's kernels "
                             "run, how much of that no compute kernel hides, and what compute loses beside them")
    parser.add_argument("--table", action="store_true",
                        help="print the speed-up table of the rows in bench/results/ddp_mfu.csv instead of running")
    args = parser.parse_args()
    if args.table:
        table(Results("ddp_mfu").path)
    else:
        run(args)


if __name__ == "__main__":
    main()
