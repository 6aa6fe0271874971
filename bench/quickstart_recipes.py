"""Compare diffusion-stage recipes for the CPU quickstart at equal CPU cost, trained side by side on one GPU.

    python bench/quickstart_recipes.py --tokenizer RUN/tokenizer --encoder .cache/minilm-fp16 --out DIR

Each recipe is a set of `train.py` overrides on top of `experiment=quickstart` with a step count
chosen so that every recipe costs about the same wall time on the 2-core CPU (per-step costs
measured there, listed below). The runs share one frozen tokenizer, train concurrently (one
process each, several training seeds), and every resulting pipeline is scored on single-object
prompts with the shapes analyzer over several sampling seeds and sampler settings. The numbers
choose the quickstart preset; they are not CPU results (GPU numerics differ slightly).
Writes ``recipes.json`` and ``recipes.md`` (a table) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# name -> (overrides, steps). CPU ms/step (batch 16, fused AdamW, 2-core EPYC): base 88,
# mlp_ratio 2: 73, head_dim 48: 139, 6 layers: 128. Equal budget: 4400 base steps (~6.5 min).
RECIPES: dict[str, tuple[list[str], int]] = {
    "base_3600": ([], 3600),
    "base_4400": ([], 4400),
    "base_4300": ([], 4300),
    "mlp2_5300": (["model.mlp_ratio=2"], 5300),
    "wide48_2800": (["model.head_dim=48"], 2800),
    "deep6_3000": (["model.num_layers=6"], 3000),
    "lr3e-3_4400": (["diffusion_training.lr=3.0e-3"], 4400),
    "dropout0.2_4400": (["diffusion_training.caption_dropout=0.2"], 4400),
    "mlp2_lr3e-3_5300": (["model.mlp_ratio=2", "diffusion_training.lr=3.0e-3"], 5300),
    # tokenizers trained longer on the CPU (1000 steps, 180 s instead of 90 s), so fewer diffusion steps
    "tok1000_3600": (["tokenizer_checkpoint=outputs/tokA"], 3600),
    "tok1000x256_3600": (["tokenizer_checkpoint=outputs/tokB"], 3600),
}
SAMPLERS = [(3.0, 0.86), (2.5, 0.6)]  # (guidance_scale, truncation_rate)


def launch(name: str, overrides: list[str], steps: int, seed: int, args) -> tuple[subprocess.Popen, Path]:
    folder = args.runs / f"{name}_s{seed}"
    if not any(o.startswith("tokenizer_checkpoint=") for o in overrides):  # a recipe may bring its own
        overrides = [f"tokenizer_checkpoint={args.tokenizer}", *overrides]
    command = [sys.executable, "train.py", "experiment=quickstart", "stage=diffusion", "logger=csv",
               f"condition.encoder={args.encoder}",
               "trainer.accelerator=gpu", "trainer.deterministic=false", f"seed={seed}",
               f"diffusion_training.max_steps={steps}", f"diffusion_training.val_every_n_steps={steps}",
               "final_num_images=8", f"hydra.run.dir={folder}", *overrides]
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(folder / "stdout.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), folder


def score(folder: Path, seeds: list[int]) -> dict[str, list[float]]:
    from vqdiffusion import VQDiffusionPipeline
    from vqdiffusion.data.shapes import ShapesDataset

    pipe = VQDiffusionPipeline.from_pretrained(folder / "pipeline").to("cuda")
    pipe.progress = False
    dataset = ShapesDataset(pipe.vqvae.config.sample_size, length=1)
    prompts = dataset.validation_prompts(64, "single_objects")
    results = {}
    for guidance, truncation in SAMPLERS:
        shares = []
        for seed in seeds:
            images = pipe(prompts, num_inference_steps=50, guidance_scale=guidance, truncation_rate=truncation,
                          generator=torch.Generator("cuda").manual_seed(seed)).images
            shares.append(sum(dataset.score(i, p) for i, p in zip(images, prompts)) / len(prompts))
        results[f"g{guidance}_t{truncation}"] = shares
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the table goes")
    parser.add_argument("--runs", type=Path, default=Path("outputs/recipes"), help="where the runs go")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--eval-seeds", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--time-limit", type=float, default=400, help="seconds before unfinished runs are stopped")
    args = parser.parse_args()

    start = time.perf_counter()
    jobs = [(name, seed, *launch(name, *RECIPES[name], seed, args))
            for name in args.recipes for seed in args.train_seeds]
    for name, seed, process, _ in jobs:
        try:
            process.wait(timeout=max(1.0, args.time_limit - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            process.kill()
            print(f"{name} seed {seed}: stopped at the time limit", flush=True)
    print(f"training: {time.perf_counter() - start:.0f} s for {len(jobs)} runs", flush=True)

    table = {}
    for name, seed, _, folder in jobs:
        if not (folder / "pipeline").is_dir():
            print(f"{name} seed {seed}: no pipeline; its log ends:", flush=True)
            print((folder / "stdout.log").read_text()[-1500:], flush=True)
            continue
        for setting, shares in score(folder, args.eval_seeds).items():
            table.setdefault(name, {}).setdefault(setting, []).extend(shares)
        print(f"{name} seed {seed}: scored", flush=True)
    (args.out / "recipes.json").write_text(json.dumps(table, indent=2) + "\n")
    settings = [f"g{g}_t{t}" for g, t in SAMPLERS]
    lines = [f"{torch.cuda.get_device_name()}; mean single-object faithfulness over {len(args.train_seeds)} "
             f"training seeds x {len(args.eval_seeds)} sampling seeds x 64 prompts", "",
             "| recipe | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * statistics.mean(row[s]):.1f}% ± {100 * statistics.pstdev(row[s]):.1f}" for s in settings) + " |")
    (args.out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
