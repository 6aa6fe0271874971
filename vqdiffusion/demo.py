"""A sampling demo that needs nothing but this repository: ``python -m vqdiffusion.demo``.

Builds a small random text-to-image pipeline, saves it in the diffusers format, loads it back and
samples the same prompts with each sampler (full ancestral chain, a 10-step respaced chain, the
purity strategy), writing a grid per sampler and a summary with timings. The weights are random,
so the images are texture, not content; ``python train.py experiment=quickstart`` trains a real one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .pipeline import VQDiffusionPipeline
from .tiny import tiny_pipeline
from .utils.atomic import atomic_write_json
from .utils.images import make_grid, save_png

PROMPTS = ["a red circle", "a blue square left of a yellow triangle", "a green triangle", "a white circle"]
RUNS = [("ancestral", 100), ("ancestral", 10), ("purity", 10)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    folder = args.out / "pipeline"
    tiny_pipeline("text", seed=args.seed).save_pretrained(folder)
    pipe = VQDiffusionPipeline.from_pretrained(folder)
    summary = {"pipeline": str(folder), "prompts": PROMPTS, "runs": []}
    for sampler, steps in RUNS:
        start = time.perf_counter()
        images = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, truncation_rate=0.86,
                      num_images_per_prompt=2, sampler=sampler,
                      generator=torch.Generator().manual_seed(args.seed)).images
        seconds = time.perf_counter() - start
        grid_path = args.out / f"grid_{sampler}_{steps}.png"
        save_png(make_grid(images, columns=2, scale=4), grid_path)
        summary["runs"].append({"sampler": sampler, "steps": steps, "images": len(images),
                                "seconds": round(seconds, 3), "grid": str(grid_path)})
        print(f"{sampler:>9} {steps:>3} steps: {len(images)} images in {seconds:.2f} s -> {grid_path}")
    atomic_write_json(args.out / "summary.json", summary)
    return summary


if __name__ == "__main__":
    main()
