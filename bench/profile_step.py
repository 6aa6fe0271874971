"""Where the GPU time of one sampling or training step goes, kernel by kernel (torch.profiler).

    python bench/profile_step.py sample --variant bf16-compiled --batch 32
    python bench/profile_step.py train --size ithq --batch 16 --compile blocks --compile-loss

``sample`` profiles ``--steps`` ancestral steps of the ITHQ-size pipeline (random weights, guidance
5, truncation 0.86; the loop only, without prompt encoding and decoding); ``train`` profiles
``--steps`` full training steps of ``bench/train_mfu.py``; ``call`` profiles whole pipeline calls
of one step (where the fixed cost per call goes: prompt encoding, decoding). Both run their warm-up (compilation)
first. Prints the wall time per step (CUDA events), the GPU-busy time per step (the sum of kernel
times: a gap between the two is host overhead), the time per kernel family (matmuls, attention,
fused Triton kernels, PyTorch's own elementwise/reduction kernels, copies) and the top kernels.
``profile_overlap`` (``bench/ddp_mfu.py --profile``) profiles a DDP rank's steps instead: how its
NCCL kernels sit against its compute kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
from collections import defaultdict

import torch
from common import Results, median_seconds
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

FAMILIES = (  # first match wins; names of cuBLAS/cuDNN/CUTLASS/Triton kernels on sm90
    ("matmul", r"^triton_tem|^_fused_linear_kernel"),  # inductor's matmul templates; the project's epilogue matmul
    # inductor's fused kernels, named after the ops they hold (before "attention": a kernel that
    # permutes attention's inputs carries the op's name)
    ("residual + layer norm + modulation", r"^triton_.*native_layer_norm"),
    ("MLP activation", r"^triton_.*(sigmoid|gelu|erf|tanh)"),
    ("step math", r"_truncate_kernel|^triton_.*(logadd|logsum|argmax|log_softmax)"),
    ("triton fused", r"^triton_"),  # the other fused elementwise/reduction kernels (FP8 row scaling included)
    ("attention", r"fmha|flash|sdpa|attention|attn"),
    ("matmul (fp8)", r"f8f8|e4m3|fp8|float8|qqtst"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|_mm_|matmul|splitk|sm90_"),
    ("sort / top-k", r"sort|radix|topk|scan"),
    ("copy / fill", r"memcpy|memset|copy|fill|catarray"),
    ("pytorch elementwise / reduction", r"elementwise|vectorized|reduce|softmax|norm|index|unrolled|kernel"),
)


def family(name: str) -> str:
    lowered = name.lower()
    for label, pattern in FAMILIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def kernel_table(run, steps: int) -> dict:
    """Profile ``run()`` (which performs ``steps`` steps); GPU time per step by family and kernel."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type != DeviceType.CUDA:
            continue
        entry = per_kernel[event.name]
        entry[0] += event.device_time_total / 1e3 / steps  # ms per step
        entry[1] += 1 / steps
    families: dict[str, float] = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        families[family(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return {"busy_ms": sum(families.values()), "families": dict(sorted(families.items(), key=lambda kv: -kv[1])),
            "top": [{"kernel": name[:140], "family": family(name), "ms": ms, "calls": calls}
                    for name, (ms, calls) in top], **idle_gaps(prof, steps)}


def kernel_spans(prof) -> list[tuple[float, float, str]]:
    """(start, end, name) of every GPU kernel the profile holds, in microseconds, by start time."""
    return sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                  if e.device_type == DeviceType.CUDA)


def idle_gaps(prof, steps: int) -> dict:
    """Where the GPU sat idle: the gaps between one kernel's end and the next kernel's start (over
    all streams), summed per (kernel before, kernel after) pair. A pair that repeats once per block
    points at the host work between those two launches."""
    spans = kernel_spans(prof)
    pairs: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    reach, before = spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > reach:
            entry = pairs[(before[:70], name[:70])]
            entry[0] += (start - reach) / 1e3 / steps  # ms per step
            entry[1] += 1 / steps
        if end > reach:
            reach, before = end, name
    top = sorted(pairs.items(), key=lambda kv: -kv[1][0])[:15]
    return {"idle_ms": sum(ms for ms, _ in pairs.values()),
            "idle_top": [{"before": b, "after": a, "ms": ms, "gaps": n} for (b, a), (ms, n) in top]}


def merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of time intervals, as sorted disjoint intervals."""
    union: list[list[float]] = []
    for start, end in sorted(spans):
        if union and start <= union[-1][1]:
            union[-1][1] = max(union[-1][1], end)
        else:
            union.append([start, end])
    return [(a, b) for a, b in union]


def covered(start: float, end: float, union: list[tuple[float, float]]) -> float:
    """How much of [start, end] the sorted disjoint intervals ``union`` cover."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in union if a < end and b > start)


def communication_overlap(prof, steps: int) -> dict:
    """How DDP's NCCL kernels sit against the compute kernels of the same GPU, per step (ms):
    ``nccl_ms`` the time some NCCL kernel runs; ``nccl_exposed_ms`` the part of it no compute
    kernel runs beside (communication the step waits for); ``compute_ms`` the time some compute
    kernel runs; ``contention_ms`` what the compute kernels that ran beside an NCCL kernel took
    beyond the median of the same kernel's runs that did not (the SMs and memory bandwidth
    NCCL's kernels took from them), with the matmuls' share in ``contention_matmul_ms``."""
    comm, compute = [], []
    for span in kernel_spans(prof):
        (comm if "nccl" in span[2].lower() else compute).append(span)
    comm_union = merged([(a, b) for a, b, _ in comm])
    compute_union = merged([(a, b) for a, b, _ in compute])
    alone: dict[str, list[float]] = defaultdict(list)
    beside: list[tuple[str, float]] = []
    for start, end, name in compute:
        if covered(start, end, comm_union) > 0:
            beside.append((name, end - start))
        else:
            alone[name].append(end - start)
    contention = {"all": 0.0, "matmul": 0.0}
    for name, duration in beside:
        if alone[name]:
            extra = duration - statistics.median(alone[name])
            contention["all"] += extra
            if family(name) == "matmul":
                contention["matmul"] += extra
    per_step = 1e3 * steps  # microseconds over all steps -> ms per step
    return {"nccl_ms": sum(b - a for a, b in comm_union) / per_step,
            "nccl_exposed_ms": sum(b - a - covered(a, b, compute_union) for a, b in comm_union) / per_step,
            "compute_ms": sum(b - a for a, b in compute_union) / per_step,
            "compute_kernels_beside_nccl": len(beside) / steps,
            "contention_ms": contention["all"] / per_step, "contention_matmul_ms": contention["matmul"] / per_step}


def profile_overlap(step, steps: int) -> dict:
    """``communication_overlap`` of ``steps`` calls of ``step`` (warm), with the wall time per step."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
    return {"wall_ms": start.elapsed_time(end) / steps, **communication_overlap(prof, steps)}


def sampling_run(args):
    from sampling import PROMPT, build  # bench/sampling.py

    from vqdiffusion.speed import attention_backend

    _, ours = build([args.variant], "cuda", 36, reference=False)
    pipe = ours[args.variant]
    conditions = pipe._conditions([PROMPT], None, args.batch, True)
    denoiser = pipe.denoiser(conditions, 5.0, True)
    sampler = pipe.sampler
    sampler.compile_math = pipe.speed.compile
    x_T = torch.full((args.batch, 1024), pipe.schedule.mask_index, device="cuda")

    def run(steps: int):
        def go():
            generators = [torch.Generator("cuda").manual_seed(i) for i in range(args.batch)]
            with torch.no_grad(), attention_backend(pipe.speed.attention):
                sampler(denoiser, pipe.schedule, x_T, num_inference_steps=steps, truncation_rate=0.86,
                        generator=generators)
        return go

    return run, f"sample {args.variant} batch {args.batch} (+ guidance)"


def pipeline_call_run(args):
    """Whole pipeline calls with one step: prompt encoding, the text's K/V, one step, decoding."""
    from sampling import PROMPT, build  # bench/sampling.py

    _, ours = build([args.variant], "cuda", 36, reference=False)
    pipe = ours[args.variant]

    def run(calls: int):
        def go():
            for _ in range(calls):
                pipe([PROMPT] * args.batch, num_inference_steps=1, guidance_scale=5.0, truncation_rate=0.86,
                     generator=[torch.Generator("cuda").manual_seed(i) for i in range(args.batch)], output_type="np")
        return go

    return run, f"one-step pipeline call {args.variant} batch {args.batch} (per call)"


def training_run(args):
    from train_mfu import build_step, step_options  # bench/train_mfu.py

    options = step_options(args)
    step = build_step(options)

    def run(steps: int):
        def go():
            for _ in range(steps):
                step()
        return go

    return run, "train " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(options).items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sample = sub.add_parser("sample")
    sample.add_argument("--variant", default="bf16-compiled")
    sample.add_argument("--batch", type=int, default=32)
    call = sub.add_parser("call", help="whole one-step pipeline calls: where the fixed cost goes")
    call.add_argument("--variant", default="bf16-compiled")
    call.add_argument("--batch", type=int, default=32)
    train = sub.add_parser("train", help="training steps of bench/train_mfu.py (same flags, one setting)")
    from train_mfu import add_step_arguments  # bench/train_mfu.py

    add_step_arguments(train, many=False)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    run, label = {"sample": sampling_run, "call": pipeline_call_run, "train": training_run}[args.what](args)
    run(3)()  # warm-up: compilation, autotuning, CUDA-graph recording
    wall_ms = 1e3 * median_seconds(run(args.steps), reps=3, warmup=0) / args.steps
    table = kernel_table(run(args.steps), args.steps)
    gpu = torch.cuda.get_device_name()
    print(f"\n{label} — {gpu}, torch {torch.__version__}")
    print(f"wall {wall_ms:.2f} ms/step, GPU busy {table['busy_ms']:.2f} ms/step "
          f"(host-bound gap {wall_ms - table['busy_ms']:.2f} ms)")
    print("| kernel family | ms/step | share |\n|---|---|---|")
    for name, ms in table["families"].items():
        print(f"| {name} | {ms:.2f} | {100 * ms / table['busy_ms']:.1f}% |")
    print("| top kernels | family | ms/step | calls/step |\n|---|---|---|---|")
    for row in table["top"][:15]:
        print(f"| `{row['kernel'][:90]}` | {row['family']} | {row['ms']:.2f} | {row['calls']:.0f} |")
    print(f"idle between kernels {table['idle_ms']:.2f} ms/step; largest (kernel before -> kernel after):")
    print("| before | after | ms/step | gaps/step |\n|---|---|---|---|")
    for row in table["idle_top"][:10]:
        print(f"| `{row['before'][:60]}` | `{row['after'][:60]}` | {row['ms']:.2f} | {row['gaps']:.1f} |")
    Results("profile_step").append({"what": label, "wall_ms": wall_ms, "busy_ms": table["busy_ms"],
                                    "idle_ms": table["idle_ms"],
                                    **{f"{name} ms": ms for name, ms in table["families"].items()}})


if __name__ == "__main__":
    main()
