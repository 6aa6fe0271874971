"""Compare recipes for the CPU quickstart, several training seeds each, trained side by side on a GPU.

    python bench/quickstart_recipes.py --recipes base mlp4 --train-seeds 0 1 2 \
        [--stage tokenizer] [--encoder PATH] [--runs outputs/recipes] [--time-limit 480]

Each recipe is a list of ``train.py`` overrides on top of ``experiment=quickstart`` (both stages,
so each training seed trains its own tokenizer too, as ``make quickstart`` does). The runs train
concurrently, one process each, and every resulting pipeline is scored on the 18 single-object
prompts with the shapes analyzer, by the quickstart's own end-of-training evaluation and over
``--eval-seeds`` for each sampler setting of ``--samplers`` on ``--n`` images (the prompts cycled). Rows go to
``bench/results/quickstart_recipes.csv``; a table of mean, spread and minimum over the training
seeds is printed. GPU numerics differ a little from the CPU's: these numbers choose a recipe, the
CPU run of ``make quickstart`` is the result.

``--stage tokenizer`` trains only the tokenizers and compares their reconstruction faithfulness
(the share of validation images the analyzer still passes after encode + decode: the ceiling
of the diffusion stage), PSNR and code usage; rows in ``bench/results/quickstart_tokenizers.csv``.
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
from common import Results
from eval_shapes import faithfulness

# name -> overrides of experiment=quickstart
# The former tokenizer recipe: 500 steps of batch 32 (the preset's is 1000 steps of batch 16).
TOKENIZER_B32 = ["tokenizer_training.batch_size=32", "tokenizer_training.max_steps=500"]
CONSTANT_TOKENIZER_LR = ["lr_scheduler@tokenizer_training.lr_scheduler=constant",
                         "tokenizer_training.lr_scheduler.warmup_steps=0"]
RECIPES: dict[str, list[str]] = {
    "base": [],
    "tok_b32_d4000": [*TOKENIZER_B32, "diffusion_training.max_steps=4000"],
    "former_preset": [*TOKENIZER_B32, "diffusion_training.max_steps=4000", *CONSTANT_TOKENIZER_LR,
                      "model.mlp_ratio=4"],
    "mlp4": ["model.mlp_ratio=4"],
    "d3000": ["diffusion_training.max_steps=3000"],
    "d3600": ["diffusion_training.max_steps=3600"],
    "d4000": ["diffusion_training.max_steps=4000"],
    "tok800": ["tokenizer_training.max_steps=800"],
    "tok_b32": TOKENIZER_B32,
    "tok_b32x1000": ["tokenizer_training.batch_size=32"],
    "constant_tokenizer_lr": CONSTANT_TOKENIZER_LR,
    "tok_lr2e-3": ["tokenizer_training.optimizer.lr=2.0e-3"],
    "tok_betas": ["tokenizer_training.optimizer.betas=[0.9,0.99]"],
    "tok_wide": ["tokenizer.block_out_channels=[32,64,64]"],
    "codes64": ["tokenizer.num_vq_embeddings=64"],
    "codes256": ["tokenizer.num_vq_embeddings=256"],
    "singles": ["data.train.two_object_share=0.0"],
    "batch32": ["data.batch_size=32", "diffusion_training.max_steps=1700"],
    "ema999": ["diffusion_training.ema_decay=0.999"],
    "diffusion_lr3e-3": ["diffusion_training.optimizer.lr=3.0e-3"],
}
# (sampler, steps, guidance_scale, truncation_rate)
SAMPLERS = ["ancestral,50,2.5,0.6", "purity,50,2.5,0.6", "purity,50,4,0.4"]


def launch(name: str, seed: int, args) -> tuple[subprocess.Popen, Path]:
    folder = args.runs / f"{name}_s{seed}"
    command = [sys.executable, "train.py", "experiment=quickstart", "logger=csv", f"seed={seed}",
               f"stage={args.stage}", f"hydra.run.dir={folder}", *RECIPES[name], *args.overrides]
    if args.encoder:
        command.append(f"condition.encoder={args.encoder}")
    if torch.cuda.is_available():
        command += ["trainer.accelerator=gpu", "trainer.deterministic=false"]
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(folder / "stdout.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), folder


def score(folder: Path, settings: list[str], seeds: list[int], n: int, device: str) -> dict[str, list[float]]:
    from vqdiffusion import VQDiffusionPipeline
    from vqdiffusion.data.shapes import ShapesDataset

    pipe = VQDiffusionPipeline.from_pretrained(folder / "pipeline").to(device)
    pipe.progress = False
    dataset = ShapesDataset(pipe.vqvae.config.sample_size, length=1)
    prompts = dataset.validation_prompts(n, "single_objects")
    results = {}
    for setting in settings:
        sampler, steps, guidance, truncation = setting.split(",")
        results[setting] = [faithfulness(pipe, dataset, prompts, sampler, int(steps), float(guidance),
                                         float(truncation), seed)[0] for seed in seeds]
    return results


def compare_tokenizers(jobs: list, args) -> None:
    """Rows of the tokenizer metrics (reconstruction faithfulness, PSNR, codes used) and a table."""
    results = Results("quickstart_tokenizers")
    table: dict[str, list[dict]] = {}
    for name, seed, _, folder in jobs:
        path = folder / "tokenizer" / "metrics.json"
        if not path.exists():
            print(f"{name} seed {seed}: no tokenizer; its log ends:\n{(folder / 'stdout.log').read_text()[-1500:]}")
            continue
        metrics = json.loads(path.read_text())
        table.setdefault(name, []).append(metrics)
        results.append({"recipe": name, "overrides": " ".join(RECIPES[name] + args.overrides), "train_seed": seed,
                        **metrics})
    print("\ntokenizers: mean ± spread (min) over the training seeds\n")
    print("| recipe | reconstruction faithfulness | PSNR (dB) | codes used |\n|---|---|---|---|")
    for name, rows in table.items():
        cells = []
        for key, scale in (("reconstruction_faithfulness", 100), ("val_psnr_db", 1), ("codes_used", 100)):
            values = [scale * row[key] for row in rows]
            cells.append(f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f} ({min(values):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="text encoder folder (default: the preset's)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/recipes"), help="where the runs go")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--eval-seeds", type=int, nargs="*", default=[1234, 1])
    parser.add_argument("--n", type=int, default=256, help="images per sampler setting and seed")
    parser.add_argument("--samplers", nargs="*", default=SAMPLERS, help="sampler,steps,guidance,truncation")
    parser.add_argument("--overrides", nargs="*", default=[], help="added to every run's overrides, last")
    parser.add_argument("--stage", default="all", choices=["all", "tokenizer"],
                        help="tokenizer: train only the tokenizers and compare their reconstruction ceilings")
    parser.add_argument("--time-limit", type=float, default=480, help="seconds before unfinished runs are stopped")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    start = time.perf_counter()
    jobs = [(name, seed, *launch(name, seed, args)) for name in args.recipes for seed in args.train_seeds]
    for name, seed, process, _ in jobs:
        try:
            process.wait(timeout=max(1.0, args.time_limit - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            process.kill()
            print(f"{name} seed {seed}: stopped at the time limit", flush=True)
    print(f"training: {time.perf_counter() - start:.0f} s for {len(jobs)} runs", flush=True)

    if args.stage == "tokenizer":
        compare_tokenizers(jobs, args)
        return
    results = Results("quickstart_recipes")
    table: dict[str, dict[str, list[float]]] = {}
    for name, seed, _, folder in jobs:
        if not (folder / "pipeline").is_dir():
            print(f"{name} seed {seed}: no pipeline; its log ends:\n{(folder / 'stdout.log').read_text()[-1500:]}")
            continue
        final = json.loads((folder / "metrics.json").read_text())["diffusion"].get("faithfulness")
        table.setdefault(name, {}).setdefault("end of training", []).append(final)
        results.append({"recipe": name, "overrides": " ".join(RECIPES[name] + args.overrides), "train_seed": seed,
                        "sampler": "end of training", "n": 64, "faithfulness": final})
        for setting, shares in score(folder, args.samplers, args.eval_seeds, args.n, device).items():
            table.setdefault(name, {}).setdefault(setting, []).append(statistics.mean(shares))
            for eval_seed, share in zip(args.eval_seeds, shares):
                results.append({"recipe": name, "overrides": " ".join(RECIPES[name] + args.overrides),
                                "train_seed": seed, "sampler": setting, "n": args.n, "eval_seed": eval_seed,
                                "faithfulness": share})
        print(f"{name} seed {seed}: scored", flush=True)
    columns = ["end of training", *args.samplers]
    print(f"\nsingle-object faithfulness: the run's own end-of-training score (64 images), then each sampler "
          f"over {len(args.eval_seeds)} seed(s) x {args.n} images; mean ± spread (min) over the training seeds\n")
    print("| recipe | " + " | ".join(columns) + " |\n|---" + "|---" * len(columns) + "|")
    for name, row in table.items():
        cells = [f"{100 * statistics.mean(v):.1f} ± {100 * statistics.pstdev(v):.1f} ({100 * min(v):.1f})"
                 for v in (row[s] for s in columns)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
