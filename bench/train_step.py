"""Where a diffusion training step's time goes (GPU): data, tokenizer, text, forward, backward.

    python bench/train_step.py --encoder .cache/minilm-fp16 --size 64 --batch 128

Builds the quickstart_gpu shapes (random tokenizer weights: the cost does not depend on them),
times each part with CUDA synchronisation after warm-up, median of --reps steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from vqdiffusion.data.datamodule import StepSampler
from vqdiffusion.data.shapes import ShapesDataset
from vqdiffusion.diffusion.schedule import model_timestep
from vqdiffusion.lit.diffusion_module import DiffusionModule

SMALL_F4 = dict(block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=64, sample_size=64,
                num_vq_embeddings=256, norm_num_groups=16, vq_embed_dim=32, mid_block_add_attention=False,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


class Clock:
    """Accumulates named, CUDA-synchronised durations (ms) of consecutive parts of a step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        torch.cuda.synchronize()
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[name] = 1e3 * (now - self.last)
        self.last = now


def one_step(module: DiffusionModule, loader, optimizer, step: int) -> dict[str, float]:
    clock = Clock()
    batch = next(loader)
    batch["image"] = batch["image"].cuda(non_blocking=True)
    clock.lap("data")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x0 = module.codes(batch)
        clock.lap("tokens")
        conditions = module.conditions(batch, 0.1)
        clock.lap("text")
        loss = module.loss(lambda x, t: module.transformer(x, model_timestep(t), **conditions), x0)["loss"]
        clock.lap("forward+loss")
    loss.backward()
    clock.lap("backward")
    optimizer.step()
    optimizer.zero_grad()
    clock.lap("optimizer")
    module.on_train_batch_end(None, batch, step)
    clock.lap("ema")
    clock.times["step total"] = sum(clock.times.values())
    return clock.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=30, help="steps excluded (compile, text cache filling)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    args = parser.parse_args()

    module = DiffusionModule({"num_layers": 8, "num_heads": 8, "head_dim": 48}, {**SMALL_F4, "sample_size": args.size},
                             {"kind": "text", "encoder": args.encoder, "max_length": 16}, {"preset": "released"},
                             loss={"auxiliary_weight": 1.0, "time_sampling": "uniform"},
                             compile=args.compile).cuda()
    module.log = module.log_dict = lambda *a, **k: None
    optimizer = module.configure_optimizers()["optimizer"]
    dataset = ShapesDataset(args.size, length=1_000_000, two_object_share=0.8)
    loader = iter(DataLoader(dataset, batch_size=args.batch, sampler=StepSampler(len(dataset)),
                             num_workers=args.workers, drop_last=True))
    parts: dict[str, list[float]] = {}
    for step in range(args.reps + args.warmup):
        times = one_step(module, loader, optimizer, step)
        if step >= args.warmup:
            for key, value in times.items():
                parts.setdefault(key, []).append(value)
    # Whole steps with no synchronisation between parts (what training sees), CUDA events.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for step in range(args.reps):
        batch = next(loader)
        batch["image"] = batch["image"].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x0, conds = module.codes(batch), module.conditions(batch, 0.1)
            loss = module.loss(lambda x, t, c=conds: module.transformer(x, model_timestep(t), **c), x0)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        module.on_train_batch_end(None, batch, step)
    end.record()
    torch.cuda.synchronize()
    overlapped = start.elapsed_time(end) / args.reps
    params = sum(p.numel() for p in module.transformer.parameters())
    tokens = args.batch * (args.size // 4) ** 2
    print(f"{torch.cuda.get_device_name()}, batch {args.batch}, {args.size}px, workers {args.workers}, "
          f"compile {args.compile}, torch {torch.__version__}")
    for key, values in parts.items():
        print(f"{key:>14}: {statistics.median(values):8.2f} ms")
    print(f"{'overlapped':>14}: {overlapped:8.2f} ms/step, {args.batch / overlapped * 1e3:8.0f} samples/s, "
          f"~{6 * params * tokens / overlapped / 1e9:.0f} TFLOP/s (6 x {params / 1e6:.1f} M params x {tokens} tokens)")


if __name__ == "__main__":
    main()
