"""Score trained shapes pipelines: faithfulness of N samples (colour, shape and relation), over a
grid of sampler settings and sampling seeds.

    python bench/eval_shapes.py RUN [RUN ...] [--kind single_objects] [--n 64] [--steps 50 100]
        [--sampler ancestral purity] [--guidance 2.5 3] [--truncation 0.6 0.86] [--seeds 1234 1 2]

Uses the prompts and scorer of the end-of-training evaluation (``kind``: single_objects,
two_objects or mixed). Each setting's mean over the seeds is printed as a table row and every
(run, setting, seed) is appended to ``bench/results/shapes_faithfulness.csv``; ``--grid`` also
saves the first setting's images of the first seed as ``eval_<kind>.png`` in each run folder.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from common import Results

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.data.shapes import ShapesDataset
from vqdiffusion.utils.images import make_grid, save_png


def faithfulness(pipe, dataset, prompts: list[str], sampler: str, steps: int, guidance: float, truncation: float,
                 seed: int) -> tuple[float, list, float]:
    """Share of ``prompts`` whose sample the shapes analyzer finds faithful, the images, and the
    seconds the sampling took (one generator for the batch, seeded by ``seed``)."""
    device = pipe.device
    start = time.perf_counter()
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, truncation_rate=truncation,
                  sampler=sampler, generator=torch.Generator(device).manual_seed(seed)).images
    seconds = time.perf_counter() - start
    share = sum(bool(dataset.score(i, p)) for i, p in zip(images, prompts)) / len(prompts)
    return share, images, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (with pipeline/) or pipeline folders")
    parser.add_argument("--kind", default="single_objects", choices=["single_objects", "two_objects", "mixed"])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--sampler", nargs="+", default=["ancestral"])
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.5])
    parser.add_argument("--truncation", type=float, nargs="+", default=[0.6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234])
    parser.add_argument("--grid", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = Results("shapes_faithfulness")
    settings = list(itertools.product(args.sampler, args.steps, args.guidance, args.truncation))
    print("| run | sampler | steps | guidance | truncation | faithfulness (mean over seeds) | per seed |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        folder = run / "pipeline" if (run / "pipeline").is_dir() else run
        pipe = VQDiffusionPipeline.from_pretrained(folder).to(device)
        pipe.progress = False
        dataset = ShapesDataset(pipe.vqvae.config.sample_size, length=1)
        prompts = dataset.validation_prompts(args.n, args.kind)
        for index, (sampler, steps, guidance, truncation) in enumerate(settings):
            shares = []
            for seed in args.seeds:
                share, images, seconds = faithfulness(pipe, dataset, prompts, sampler, steps, guidance,
                                                      truncation, seed)
                shares.append(share)
                results.append({"run": str(run), "kind": args.kind, "n": args.n, "sampler": sampler,
                                "steps": steps, "guidance_scale": guidance, "truncation_rate": truncation,
                                "seed": seed, "faithfulness": share, "seconds": seconds})
                if args.grid and index == 0 and seed == args.seeds[0]:
                    save_png(make_grid(images[:64], columns=8, scale=2), run / f"eval_{args.kind}.png")
            print(f"| {run} | {sampler} | {steps} | {guidance} | {truncation} | "
                  f"{100 * statistics.mean(shares):.1f}% | {' '.join(f'{100 * s:.1f}' for s in shares)} |",
                  flush=True)


if __name__ == "__main__":
    main()
