"""Where one sampling step goes at the ITHQ size: the transformer vs the step around it.

    python bench/step_split.py [--batch 32] [--layers 36]

Random ITHQ-size weights in bf16, ``optimize(compile=True)`` (fused q/k/v, cached text K/V).
Times with CUDA events (median of --reps after warm-up): the transformer call on the guided
batch (2B sequences), the step math of an ancestral step (guidance, truncation 0.86, the
posterior over (B, K+1, N), Gumbel draws: one generator per image as sample.py does, and one for
the batch), and the same math under ``torch.compile`` with the uniform draws passed in.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds  # bench/timing.py

from vqdiffusion.diffusion.guidance import classifier_free_guidance
from vqdiffusion.diffusion.process import uniform
from vqdiffusion.diffusion.samplers import ancestral_update
from vqdiffusion.diffusion.schedule import NoiseSchedule, model_timestep
from vqdiffusion.models import TransformerConfig, VQDiffusionTransformer


def timed(fn, reps: int) -> float:
    """Median milliseconds of ``fn()`` after two warm-up calls."""
    return 1e3 * median_seconds(fn, reps, warmup=2)


def step_math(both, x_t, t, s, schedule, u, scale: float = 5.0, rate: float = 0.86):
    """What the sampler does after the network: guidance, then ``ancestral_update`` (truncation,
    posterior, Gumbel-max from the uniforms ``u``)."""
    log_uncond, log_cond = both.chunk(2)
    return ancestral_update(classifier_free_guidance(log_uncond, log_cond, scale), x_t, t, s, schedule, rate, u)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    B, K, N = args.batch, 4096, 1024
    torch.manual_seed(0)
    config = TransformerConfig(num_embeds=K, height=32, width=32, num_layers=args.layers, num_heads=16,
                               head_dim=88, context_dim=512)
    model = VQDiffusionTransformer(config).cuda().to(torch.bfloat16).fuse_qkv()
    network = torch.compile(model)
    schedule = NoiseSchedule(K).to(device="cuda")
    x_t = torch.randint(0, K + 1, (B, N), device="cuda")
    t = torch.full((B,), 50, device="cuda")
    s = t - 1
    context = torch.randn(2 * B, 77, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        kv = model.context_keys_values(context)
        both = network(torch.cat([x_t, x_t]), model_timestep(torch.cat([t, t])), context_kv=kv)
        results = {"transformer (2B sequences, compiled)": timed(
            lambda: network(torch.cat([x_t, x_t]), model_timestep(torch.cat([t, t])), context_kv=kv), args.reps)}
        generators = [torch.Generator("cuda").manual_seed(i) for i in range(B)]
        one = torch.Generator("cuda").manual_seed(0)
        shape = (B, K + 1, N)
        results["step math, eager, one generator per image"] = timed(
            lambda: step_math(both, x_t, t, s, schedule, uniform(shape, "cuda", generators)), args.reps)
        results["step math, eager, one generator"] = timed(
            lambda: step_math(both, x_t, t, s, schedule, uniform(shape, "cuda", one)), args.reps)
        results["uniform draws alone, one generator per image"] = timed(
            lambda: uniform(shape, "cuda", generators), args.reps)
        compiled = torch.compile(step_math)
        u = uniform(shape, "cuda", one)
        results["step math, compiled (draws excluded)"] = timed(lambda: compiled(both, x_t, t, s, schedule, u),
                                                                args.reps)
        results["share of tokens where compiled and eager math agree"] = float(
            (compiled(both, x_t, t, s, schedule, u) == step_math(both, x_t, t, s, schedule, u)).float().mean())
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {B} (+ guidance), {args.layers} layers")
    print("| part | ms |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
