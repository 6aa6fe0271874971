"""Diffusion-stage training throughput and MFU at the paper sizes (one GPU, bf16 autocast).

    python bench/train_mfu.py --size ithq --batch 8 16 32 --checkpointing off on --compile blocks

One training step = sample t, q(x_t | x0), the transformer, the full VQ-Diffusion loss (posterior
KLs over (B, K+1, N)), backward, gradient clipping (folded into the step unless
``--no-fold-clip``), fused AdamW on float32 master weights; with ``--accumulate N``, N such
forward/backward passes of ``--batch`` samples per optimizer step (Lightning's
``accumulate_grad_batches``). Random tokens and text embeddings: the cost does not
depend on them. Timed with CUDA events over ``--steps`` steps after ``--warmup`` (compile
included there). MFU = model matmul FLOPs (3x the forward's, counted from the shapes;
recomputation under checkpointing is not counted as useful work) / time / the bf16 matmul peak
measured in the same process, twice: the best reading before or after all runs (``mfu``), and the
median of readings taken right after each timed step (``mfu_interleaved``: same clocks and
temperature as the steps). A batch that does not fit is reported as OOM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch
from common import SIZES, MatmulProbe, Results, event_seconds, forward_flops, matmul_peak

from vqdiffusion.diffusion.closed_form import general_token_terms
from vqdiffusion.diffusion.loss import DiffusionLoss
from vqdiffusion.diffusion.schedule import NoiseSchedule, model_timestep
from vqdiffusion.models import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.models.transformer import Attention
from vqdiffusion.speed import ATTENTION_BACKENDS, FP8_TRAINING_RECIPES, attention_backend, to_float8_training
from vqdiffusion.speed.compile import COMPILE_MODES, compile_blocks, inductor_options
from vqdiffusion.utils.optim import clip_grad_norm_in_step

COMPILE_SCOPES = ("off", "model", "blocks")


@dataclasses.dataclass
class StepOptions:
    """What one measured training step does (the command line of this script and of
    ``profile_step.py train``)."""

    size: str = "ithq"
    batch: int = 16  # samples per forward/backward pass
    accumulate: int = 1  # passes per optimizer step
    checkpointing: bool = False
    compile: str = "off"  # "model": torch.compile of the whole transformer; "blocks": of each block
    compile_mode: str = "default"  # torch.compile's mode, or "tuned" (vqdiffusion.speed.compile)
    compile_loss: bool = False  # the loss math after the network
    memory_budget: float | None = None  # compile's activation memory budget in (0, 1]
    multi_kernel: bool = False  # inductor's multi-kernel reductions, as sampling's fast path uses
    stacked_qkv: bool = True  # self-attention q/k/v as one matmul in training (the model's default)
    bf16_residual: bool = True  # the residual stream in bf16 under autocast (the training default)
    attention: str = "auto"  # SDPA kernel tried first
    fold_clip: bool = True  # gradient clipping inside the fused AdamW step (DiffusionModule's default)
    closed_form: bool = True  # the loss's closed form on bf16 logits, not the general posterior on log-probs
    cuda_graph: bool = False  # the whole step (forward, backward, clipping, AdamW) replayed from one CUDA graph
    ddp: bool = False  # the model under DistributedDataParallel (bench/ddp_mfu.py, one process per GPU)
    ddp_bucket_view: bool = False  # DDP's gradient_as_bucket_view: gradients live in the all-reduce buckets
    ddp_static_graph: bool = False  # DDP's static_graph
    ddp_bucket_mb: int = 25  # DDP's bucket_cap_mb
    ddp_bf16_grads: bool = False  # DDP's bf16_compress_hook: gradients all-reduced in bf16
    # Dynamo's DDPOptimizer (torch._dynamo.config.optimize_ddp): a graph compiled inside DDP's
    # forward is split at DDP's bucket boundaries, so each compiled block becomes several graphs
    ddp_graph_split: bool = True
    sm_carveout: int | None = None  # SMs the backward's cuBLASLt matmuls leave free (for NCCL's kernels)
    blas: str = "default"  # torch.backends.cuda.preferred_blas_library for the step ("cublaslt", "cublas")
    fp8: str | None = None  # an FP8 training recipe (vqdiffusion.speed.fp8_training) for the blocks' linears

    @property
    def samples(self) -> int:
        return self.batch * self.accumulate


def add_step_arguments(parser: argparse.ArgumentParser, many: bool) -> None:
    """The StepOptions flags; ``many``: --size/--batch/--checkpointing take lists (a sweep)."""
    nargs = "+" if many else None
    parser.add_argument("--size", choices=sorted(SIZES), nargs=nargs, default=["ithq"] if many else "ithq")
    parser.add_argument("--batch", type=int, nargs=nargs, default=[8, 16, 32] if many else 16)
    parser.add_argument("--checkpointing", choices=["off", "on"], nargs=nargs, default=["off"] if many else "off")
    parser.add_argument("--accumulate", type=int, default=1, help="forward/backward passes per optimizer step")
    parser.add_argument("--compile", choices=COMPILE_SCOPES, default="off",
                        help="torch.compile the whole transformer or each block (regional: compiles once)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    parser.add_argument("--compile-loss", action="store_true", help="torch.compile the loss math after it")
    parser.add_argument("--multi-kernel", action="store_true",
                        help="with --compile: inductor's multi-kernel (persistent) reductions, as sampling uses")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="with --compile: activation memory budget in (0, 1] (1 = save everything)")
    parser.add_argument("--no-stacked-qkv", action="store_true",
                        help="three q/k/v matmuls in training instead of one over the stacked weights")
    parser.add_argument("--residual", choices=("bf16", "float32"), default="bf16",
                        help="the residual stream's dtype under autocast (residual_in_autocast_dtype; "
                             "bf16 is diffusion_training.bf16_residual's default)")
    parser.add_argument("--bf16-residual", action="store_const", dest="residual", const="bf16",
                        help=argparse.SUPPRESS)  # the older spelling of --residual bf16
    parser.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto", help="SDPA kernel tried first")
    parser.add_argument("--no-fold-clip", action="store_true",
                        help="clip_grad_norm_ before the step instead of folding the clip into fused AdamW")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the whole step in one CUDA graph after warm-up and replay it (no host "
                             "launches left between kernels)")
    parser.add_argument("--sm-carveout", type=int, default=None, metavar="SMS",
                        help="during backward, cuBLASLt matmuls target all SMs but this many "
                             "(torch._C._set_sm_carveout_experimental), leaving them to DDP's all-reduce "
                             "kernels; only cuBLASLt calls honour it, so pair it with --blas cublaslt")
    parser.add_argument("--blas", choices=("default", "cublas", "cublaslt"), default="default",
                        help="torch.backends.cuda.preferred_blas_library for the step")
    parser.add_argument("--fp8", choices=FP8_TRAINING_RECIPES, default=None,
                        help="the blocks' linears with FP8 matmuls forward and backward (diffusion_training.fp8)")
    parser.add_argument("--general-posterior", action="store_true",
                        help="the loss from the general (B, K+1, N) posteriors on float32 log-probs (the "
                             "path before the closed form) instead of the closed form on the network's logits")


def step_options(args: argparse.Namespace, **sweep) -> StepOptions:
    """StepOptions from parsed flags; ``sweep`` gives this row's size/batch/checkpointing."""
    values = {"size": args.size, "batch": args.batch, "checkpointing": args.checkpointing == "on", **sweep}
    return StepOptions(accumulate=args.accumulate, compile=args.compile, compile_mode=args.compile_mode,
                       compile_loss=args.compile_loss, bf16_residual=args.residual == "bf16",
                       memory_budget=args.memory_budget, multi_kernel=args.multi_kernel,
                       stacked_qkv=not args.no_stacked_qkv, attention=args.attention,
                       fold_clip=not args.no_fold_clip, closed_form=not args.general_posterior,
                       cuda_graph=args.cuda_graph, sm_carveout=args.sm_carveout, blas=args.blas, fp8=args.fp8,
                       **values)


def build_step(options: StepOptions):
    """One training step as a function of nothing (random tokens and text, fixed per call)."""
    if options.cuda_graph and options.ddp:
        raise ValueError("--cuda-graph with DDP is not supported: its all-reduces run outside a captured graph")
    layers, heads, head_dim, codes, ctx_dim, ctx_len = SIZES[options.size]
    config = TransformerConfig(num_embeds=codes, height=32, width=32, num_layers=layers, num_heads=heads,
                               head_dim=head_dim, context_dim=ctx_dim, gradient_checkpointing=options.checkpointing)
    if options.blas != "default":
        torch.backends.cuda.preferred_blas_library(options.blas)
    torch._dynamo.config.optimize_ddp = options.ddp_graph_split  # read when a block first compiles
    torch.manual_seed(0)
    model = VQDiffusionTransformer(config).cuda()
    Attention.stack_qkv_in_training = options.stacked_qkv
    if options.memory_budget is not None:  # compile's partitioner recomputes the cheapest activations to fit it
        torch._functorch.config.activation_memory_budget = options.memory_budget
    model.residual_in_autocast_dtype = options.bf16_residual
    if options.fp8 is not None:
        to_float8_training(model, options.fp8)
    compile_options = inductor_options(options.compile_mode, multi_kernel=options.multi_kernel)
    if options.compile == "model":
        network = torch.compile(model, options=compile_options)
    elif options.compile == "blocks":  # in place: one compiled graph serves every (identical) block
        compile_blocks(model, options=compile_options)
        network = model
    else:
        network = model
    if options.ddp:  # as Lightning's strategy=ddp wraps it (DDP's defaults unless ddp_* say otherwise)
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[torch.cuda.current_device()], gradient_as_bucket_view=options.ddp_bucket_view,
            static_graph=options.ddp_static_graph, bucket_cap_mb=options.ddp_bucket_mb)
        if options.ddp_bf16_grads:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

            network.register_comm_hook(None, bf16_compress_hook)
    schedule = NoiseSchedule(codes).to(device="cuda")
    loss_fn = DiffusionLoss(schedule).to("cuda")
    loss_fn.compile_math = options.compile_loss  # train.py's diffusion_training.compile=true turns on both
    if not options.closed_form:
        loss_fn.terms_of_tokens = general_token_terms
    # a captured step keeps AdamW's step counters on the device (capturable)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=options.cuda_graph)
    x0 = torch.randint(0, codes, (options.batch, 1024), device="cuda")
    context = torch.randn(options.batch, ctx_len, ctx_dim, device="cuda")

    def step() -> None:
        with attention_backend(options.attention):  # a fresh context each step: one is single-use
            for micro in range(options.accumulate):
                # under DDP only the last pass all-reduces, as Lightning's accumulate_grad_batches does
                last = micro == options.accumulate - 1
                with network.no_sync() if options.ddp and not last else contextlib.nullcontext():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        terms = loss_fn(lambda x_t, t: network(x_t, model_timestep(t), context=context,
                                                               return_logits=options.closed_form), x0)
                    with sm_carveout(options.sm_carveout):
                        (terms["loss"] / options.accumulate).backward()
        if options.fold_clip:
            clip_grad_norm_in_step(optimizer, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed = graph_replayer(step) if options.cuda_graph else step
    timed.parameters_m = sum(p.numel() for p in model.parameters()) / 1e6
    return timed


@contextlib.contextmanager
def sm_carveout(sms: int | None):
    """cuBLASLt matmuls started inside target all SMs but ``sms`` (None: all; plain cuBLAS calls
    ignore it: see ``StepOptions.blas``). A persistent matmul sizes its grid to the SMs it targets;
    launched beside an NCCL kernel that holds some of them, its blocks without an SM run in a
    second wave (PyTorch's note on ``Context::_SMCarveout_EXPERIMENTAL``) — what DDP's all-reduce
    during the backward may cause."""
    if sms is None:
        yield
        return
    torch._C._set_sm_carveout_experimental(sms)
    try:
        yield
    finally:
        torch._C._set_sm_carveout_experimental(None)


def graph_replayer(step, warmup: int = 3):
    """``step`` captured in one CUDA graph on its first call (after ``warmup`` eager steps on a side
    stream, the first of which compiles) and replayed from then on: the step's random draws (t,
    x_t) come from the CUDA generator, which advances with every replay; its gradients live in the
    graph's memory pool (they are None when the capture begins, as PyTorch's whole-network recipe
    asks), and ``step`` ends by setting them to None again."""
    graph = None

    def replay() -> None:
        nonlocal graph
        if graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        graph.replay()

    return replay


def measure(options: StepOptions, steps: int, warmup: int, after=None) -> dict:
    """Time ``steps`` steps after the compiling one and ``warmup`` more; ``after(step)``, if given,
    runs once the timing is done and its dict joins the result (a profile of the warm step)."""
    begin = time.perf_counter()
    step = build_step(options)
    step()  # the first step compiles
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - begin
    if not options.cuda_graph:  # a captured step allocates only while its first call captures it
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(warmup, 1)):  # at least one step inside the memory reading
        step()
    peak_memory = torch.cuda.max_memory_allocated() / 2**30  # before the probe's operands exist
    retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    # a reading of the matmul peak after every timed step: the denominator measured under the
    # same clocks and temperature as the steps it divides (readings minutes apart differ by 10%)
    probe = MatmulProbe()
    step_seconds, peaks = [], []
    for _ in range(steps):
        step_seconds.append(event_seconds(step))
        peaks.append(probe.reading(products=5))
    seconds = statistics.median(step_seconds)
    # allocations that found no cached block and freed the cache to retry (a synchronizing stall)
    alloc_retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) - retries_before
    tflops = 3 * forward_flops(options.size, options.samples) / seconds / 1e12
    extra = after(step) if after is not None else {}
    return {**extra, "ms_per_step": 1e3 * seconds, "samples_per_s": options.samples / seconds, "tflops": tflops,
            "peak_memory_gib": peak_memory, "parameters_m": step.parameters_m, "first_step_s": first_step_s,
            "interleaved_peak_tflops": statistics.median(peaks), "interleaved_peaks": peaks,
            "mfu_interleaved": tflops / statistics.median(peaks), "alloc_retries_timed": alloc_retries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser, many=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps after the first (compiling) one")
    args = parser.parse_args()

    peak = matmul_peak()
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, measured bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    rows, results = [], Results("train_mfu")
    for size in args.size:
        for checkpointing in args.checkpointing:
            for batch in args.batch:
                options = step_options(args, size=size, batch=batch, checkpointing=checkpointing == "on")
                row = dataclasses.asdict(options)
                label = (f"{size} b={batch}x{options.accumulate} ckpt={checkpointing} compile={options.compile} "
                         f"mode={options.compile_mode} stacked_qkv={options.stacked_qkv} "
                         f"bf16_residual={options.bf16_residual} "
                         f"attention={options.attention} fold_clip={options.fold_clip} "
                         f"closed_form={options.closed_form} cuda_graph={options.cuda_graph}")
                try:
                    row.update(measure(options, args.steps, args.warmup))
                    row["mfu"] = row["tflops"] / peak
                    print(f"{label}: {row['ms_per_step']:.0f} ms, {row['samples_per_s']:.1f} samples/s, "
                          f"{row['tflops']:.0f} TFLOP/s, MFU {100 * row['mfu']:.1f}% "
                          f"({100 * row['mfu_interleaved']:.1f}% of the interleaved peak "
                          f"{row['interleaved_peak_tflops']:.0f}), "
                          f"{row['peak_memory_gib']:.1f} GiB, first step {row['first_step_s']:.0f} s", flush=True)
                except torch.OutOfMemoryError:
                    row["oom"] = True
                    print(f"{label}: OOM", flush=True)
                rows.append(row)
                results.append({**row, "matmul_peak_tflops": peak})
                torch._dynamo.reset()
                torch.cuda.empty_cache()
    # the peak again after the runs: MFU against the higher of the two readings
    peak_after = matmul_peak()
    print(f"measured bf16 matmul peak after the runs {peak_after:.0f} TFLOP/s", flush=True)
    peak = max(peak, peak_after)
    for r in rows:
        if not r.get("oom"):
            r["mfu"] = r["tflops"] / peak
    print("| size | batch | checkpointing | compile | ms/step | samples/s | TFLOP/s | MFU (best peak) "
          "| MFU (interleaved peak) | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        batch = f"{r['batch']}x{r['accumulate']}" if r["accumulate"] > 1 else r["batch"]
        cells = f"| {r['size']} | {batch} | {'on' if r['checkpointing'] else 'off'} | {r['compile']} |"
        if r.get("oom"):
            print(f"{cells} OOM | | | | | |")
        else:
            print(f"{cells} {r['ms_per_step']:.0f} | {r['samples_per_s']:.1f} | {r['tflops']:.0f} | "
                  f"{100 * r['mfu']:.1f}% | {100 * r['mfu_interleaved']:.1f}% | {r['peak_memory_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
