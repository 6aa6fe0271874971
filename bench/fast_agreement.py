"""Token agreement of the fast sampling paths with float32 on a trained model (same generators).

    python bench/fast_agreement.py RUN [--n 1000] [--steps 25] [--guidance 2] [--batch 500]

Draws ``--n`` images (class i % C for class models, ``--prompt`` for text models) with one
generator per image, in float32 eager and in each fast variant, and prints the share of the
(n, N) tokens equal to float32's. Identical draws give 1.0; a reduced precision moves near-tied
draws, and every moved token changes the rest of its chain, so agreement falls below 1 while the
distribution (FID, run separately) stays the same. The float32 run with other seeds is the floor.
Rows go to ``bench/results/fast_agreement.csv``.
"""

from __future__ import annotations

import argparse

import torch
from common import Results

from vqdiffusion.tasks import load_pipeline

VARIANTS = {
    "fp32 (other seeds)": ("float32", None),
    "bf16": ("bfloat16", None),
    "bf16-compiled": ("bfloat16", dict(fuse_qkv=True, cache_context=True, compile=True)),
    "fp8-compiled": ("bfloat16", dict(fuse_qkv=True, cache_context=True, compile=True, fp8=True)),
}


def draw(pipe, n: int, batch: int, args, seed_offset: int = 0) -> torch.Tensor:
    config = pipe.transformer.config
    out = []
    for start in range(0, n, batch):
        indices = range(start, min(n, start + batch))
        generators = [torch.Generator(pipe.device).manual_seed(seed_offset + i) for i in indices]
        kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, truncation_rate=args.truncation,
                      generator=generators, output_type="tokens")
        if config.num_classes is not None:
            kwargs["class_labels"] = [i % config.num_classes for i in indices]
        elif config.context_dim is not None:
            kwargs["prompt"] = [args.prompt] * len(generators)
        else:
            kwargs["batch_size"] = len(generators)
        out.append(pipe(**kwargs).images.cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--truncation", type=float, default=0.86)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    reference_pipe = load_pipeline(args.run, "cuda", "float32")
    reference_pipe.progress = False
    reference = draw(reference_pipe, args.n, args.batch, args)
    results = Results("fast_agreement")
    for name in args.variants:
        dtype, speed = VARIANTS[name]
        pipe = load_pipeline(args.run, "cuda", dtype)
        pipe.progress = False
        if speed:
            pipe.optimize(**speed)
        tokens = draw(pipe, args.n, args.batch, args, seed_offset=10**6 if "other seeds" in name else 0)
        agreement = float((tokens == reference).float().mean())
        print(f"{name:>20}: {100 * agreement:.2f}% of tokens equal to float32's", flush=True)
        results.append({"run": args.run, "variant": name, "n": args.n, "steps": args.steps,
                        "guidance": args.guidance, "truncation": args.truncation, "token_agreement": agreement})


if __name__ == "__main__":
    main()
