"""DDP training throughput at the paper sizes: the ``bench/train_mfu.py`` step on N GPUs of one host.

    torchrun --nproc-per-node 4 bench/ddp_mfu.py --size coco --batch 64 --compile blocks --compile-loss \
        --out results_ddp_coco_4.json
    python bench/ddp_mfu.py --table results_ddp_coco_*.json     # speed-ups against the 1-GPU file
    bash bench/ddp_mfu.sh                                       # 1, 2 and 4 GPUs at both sizes, and the table

One process per GPU, each with the same per-GPU batch (the global batch grows with the GPU count,
as ``trainer=ddp`` does). With more than one process the model is wrapped in
``DistributedDataParallel`` with its default 25 MB buckets, which is what Lightning's
``strategy=ddp`` builds; with one process it is not wrapped (Lightning trains one GPU without DDP),
so the 1-GPU file is the baseline a user would compare against. Every rank times its own steps
with CUDA events after warm-up; the step time of the run is the slowest rank's median (the
all-reduce makes them wait for each other anyway), and samples/s = GPUs x batch / that time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
import torch.distributed as dist
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
        result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "gpus": world, "options": dataclasses.asdict(options), "ms_per_step": slowest,
                  "samples_per_s": world * options.samples / (slowest / 1e3),
                  "tflops_per_gpu": rows[0]["tflops"] * rows[0]["ms_per_step"] / slowest,
                  "peak_memory_gib": max(r["peak_memory_gib"] for r in rows), "ranks": rows,
                  "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_") and k != "NCCL_VERSION"}}
        print(f"{result['gpu']}: {options.size} batch {options.batch} per GPU, {world} GPU(s): "
              f"{slowest:.1f} ms/step (ranks {[round(r['ms_per_step'], 1) for r in rows]}), "
              f"{result['samples_per_s']:.1f} samples/s, {result['peak_memory_gib']:.1f} GiB", flush=True)
        for rank, r in enumerate(rows):
            if "profile" in r:
                print(f"  rank {rank} profile, ms/step: " + ", ".join(f"{k} {v:.1f}" for k, v in r["profile"].items()),
                      flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    if wrap:
        dist.destroy_process_group()


def table(paths: list[str]) -> None:
    """Speed-ups of each file against the 1-GPU file of the same size, batch, accumulation and
    residual stream in the same folder (one folder per device call: a baseline from another
    machine or another hour can differ by 1-2%, which is the size of the effects measured here)."""
    results = []
    for path in paths:
        with open(path) as f:
            results.append((os.path.dirname(os.path.abspath(path)), json.load(f)))

    def key(folder: str, r: dict) -> tuple:
        o = r["options"]
        return folder, o["size"], o["batch"], o.get("accumulate", 1), o["bf16_residual"]

    def setting(r: dict) -> str:
        o = r["options"]
        if not o["ddp"]:
            return "-"
        return ", ".join(["DDP"] + ["bucket view"] * o.get("ddp_bucket_view", False)
                         + ["static graph"] * o.get("ddp_static_graph", False)
                         + [f"{o.get('ddp_bucket_mb', 25)} MB buckets"] * (o.get("ddp_bucket_mb", 25) != 25)
                         + ["bf16 all-reduce"] * o.get("ddp_bf16_grads", False)
                         + ["blocks not split"] * (not o.get("ddp_graph_split", True))
                         + [f"{o['blas']}"] * (o.get("blas", "default") != "default")
                         + [f"backward matmuls leave {o.get('sm_carveout')} SMs"] * (o.get("sm_carveout") is not None)
                         + [f"{k}={v}" for k, v in r.get("nccl_env", {}).items()
                            if k not in ("NCCL_NVLS_ENABLE", "NCCL_VERSION")])

    baselines = {key(folder, r): r for folder, r in results if r["gpus"] == 1 and not r["options"]["ddp"]}
    folders = sorted({folder for folder, _ in results})
    print("| call | size | batch per GPU | residual | GPUs | wrapper | ms/step | samples/s | speed-up "
          "| TFLOP/s per GPU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for folder, r in sorted(results, key=lambda fr: (*key(*fr), fr[1]["gpus"], setting(fr[1]))):
        base = baselines.get(key(folder, r))
        speedup = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "(no 1-GPU run)"
        o = r["options"]
        residual = "bf16" if o["bf16_residual"] else "float32"
        batch = f"{o['batch']}x{o['accumulate']}" if o.get("accumulate", 1) > 1 else o["batch"]
        call = os.path.basename(folder) if len(folders) > 1 else "-"
        print(f"| {call} | {o['size']} | {batch} | {residual} | {r['gpus']} | {setting(r)} | "
              f"{r['ms_per_step']:.1f} | {r['samples_per_s']:.1f} | {speedup} | {r['tflops_per_gpu']:.0f} | "
              f"{r['peak_memory_gib']:.1f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, many=False)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps after the first (compiling) one")
    parser.add_argument("--out", default=None)
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
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="print the speed-up table of earlier runs' files instead of running")
    args = parser.parse_args()
    if args.table:
        table(args.table)
    else:
        run(args)


if __name__ == "__main__":
    main()
