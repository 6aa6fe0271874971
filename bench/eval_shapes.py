"""Score a trained shapes pipeline: faithfulness of N samples (colour, shape and relation).

    python bench/eval_shapes.py RUN_FOLDER [--kind two_objects] [--n 256] [--steps 50] [--sampler ancestral]

Uses the same prompts, seed and scorer as the end-of-training evaluation; writes
``eval_<kind>.json``, the grid and per-prompt results into the run folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.data.shapes import ShapesDataset
from vqdiffusion.utils.images import make_grid, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--kind", default="two_objects")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ancestral")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--truncation", type=float, default=0.86)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = VQDiffusionPipeline.from_pretrained(args.run / "pipeline").to(device)
    pipe.progress = False
    config = pipe.vqvae.config
    dataset = ShapesDataset(config.sample_size, length=1)
    prompts = dataset.validation_prompts(args.n, args.kind)
    start = time.perf_counter()
    images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  truncation_rate=args.truncation, sampler=args.sampler,
                  generator=torch.Generator(device).manual_seed(args.seed)).images
    seconds = time.perf_counter() - start
    hits = [bool(dataset.score(image, prompt)) for image, prompt in zip(images, prompts)]
    result = {"kind": args.kind, "n": args.n, "faithfulness": sum(hits) / len(hits), "sampler": args.sampler,
              "steps": args.steps, "guidance_scale": args.guidance, "truncation_rate": args.truncation,
              "seconds": seconds, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    (args.run / f"eval_{args.kind}.json").write_text(json.dumps(result, indent=2) + "\n")
    save_png(make_grid(images[:64], columns=8, scale=2), args.run / f"eval_{args.kind}.png")
    with open(args.run / f"eval_{args.kind}.txt", "w") as f:
        f.writelines(f"{p}\t{'ok' if h else 'wrong'}\n" for p, h in zip(prompts, hits))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
