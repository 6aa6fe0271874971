"""Sampling speed: this project's pipeline vs diffusers' VQDiffusionPipeline, same GPU, same run.

ITHQ size (36 layers, width 1408 = 16 heads x 88, 32x32 tokens, 4096 codes, CLIP ViT-B/32 text
encoder, the ITHQ VQ-VAE layout), random weights shared by both pipelines, guidance 5,
truncation 0.86. Each configuration is timed end to end (prompt encoding, every step, decoding)
at two step counts; the difference gives the cost of one step and the rest the fixed cost, so a
100-step run costs ``fixed + 100 * step``. Warm-up excluded (compilation included there), CUDA
events, median of ``--reps`` repetitions.

Variants of this project's pipeline (``--variants``; see ``VARIANTS``): the dtype, and which of
``VQDiffusionPipeline.optimize``'s speed-ups are on (fused q/k/v, cached cross-attention K/V and
AdaLN tables; ``-adaln`` variants without the tables; the SDPA kernel, torch.compile, CUDA graphs,
FP8 matmuls). ``--project N`` adds the hours N images take at each row's images/s (an FID run:
30 000 images under the COCO protocol).

    python bench/sampling.py --batch 1 32 --variants bf16 bf16-fused bf16-compiled fp8-compiled

Needs a CUDA GPU and diffusers (``pip install -e ".[bench]"``). Appends its rows to
``bench/results/sampling.csv``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import Results, forward_flops, matmul_peak, median_seconds

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.convert.diffusers_format import transformer_config_from_diffusers, vqvae_config_from_diffusers
from vqdiffusion.convert.state_dict import load_checked
from vqdiffusion.diffusion.schedule import NoiseSchedule
from vqdiffusion.models import LearnedNullEmbedding, TextEncoder, VQDiffusionTransformer
from vqdiffusion.models.vqvae import VQVAE
from vqdiffusion.tiny import byte_level_vocab

ITHQ_TRANSFORMER = dict(
    num_attention_heads=16, attention_head_dim=88, num_vector_embeds=4097, sample_size=32, num_layers=36,
    cross_attention_dim=512, activation_fn="geglu-approximate", num_embeds_ada_norm=100, attention_bias=True,
    norm_type="ada_norm",
)
ITHQ_VQVAE = dict(
    block_out_channels=[128, 256, 256, 512], layers_per_block=2, latent_channels=256, num_vq_embeddings=4096,
    vq_embed_dim=128, down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
    up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, norm_num_groups=32, sample_size=256,
)
PROMPT = "a teddy bear playing in the pool"
BF16, FP16 = torch.bfloat16, torch.float16
FAST = dict(fuse_qkv=True, cache_context=True, cache_modulation=True)
UNTABULATED = {**FAST, "cache_modulation": False}
VARIANTS = {  # name: (dtype, VQDiffusionPipeline.optimize arguments or None)
    "bf16": (BF16, None),
    "fp16": (FP16, None),
    "bf16-fused": (BF16, FAST),
    "bf16-fused-cudnn": (BF16, {**FAST, "attention": "cudnn"}),
    "bf16-fused-flash": (BF16, {**FAST, "attention": "flash"}),
    "bf16-compiled": (BF16, {**FAST, "attention": "cudnn", "compile": True}),
    # the MLP's GELU2 in its first matmul's epilogue (a Triton matmul instead of cuBLAS's)
    "bf16-compiled-act": (BF16, {**FAST, "fuse_activation": True, "attention": "cudnn", "compile": True}),
    "bf16-graphs-act": (BF16, {**FAST, "fuse_activation": True, "attention": "cudnn", "compile": "reduce-overhead"}),
    # the residual adds in the projections' epilogues too (the norms then read one tensor, not two)
    "bf16-compiled-epilogues": (BF16, {**FAST, "fuse_activation": True, "fuse_residual": True, "attention": "cudnn",
                                       "compile": True}),
    "bf16-graphs-epilogues": (BF16, {**FAST, "fuse_activation": True, "fuse_residual": True, "attention": "cudnn",
                                     "compile": "reduce-overhead"}),
    "bf16-graphs": (BF16, {**FAST, "attention": "cudnn", "compile": "reduce-overhead"}),
    "bf16-autotune": (BF16, {**FAST, "attention": "cudnn", "compile": "max-autotune-no-cudagraphs"}),  # slow compile
    "fp8-compiled": (BF16, {**FAST, "attention": "cudnn", "compile": True, "fp8": True}),
    "fp8-graphs": (BF16, {**FAST, "attention": "cudnn", "compile": "reduce-overhead", "fp8": True}),
    # the same without the AdaLN tables (each step runs every AdaLN's embedding, SiLU and linear)
    "bf16-graphs-adaln": (BF16, {**UNTABULATED, "attention": "cudnn", "compile": "reduce-overhead"}),
    "fp8-graphs-adaln": (BF16, {**UNTABULATED, "attention": "cudnn", "compile": "reduce-overhead", "fp8": True}),
    "bf16-compiled-adaln": (BF16, {**UNTABULATED, "attention": "cudnn", "compile": True}),
    # each block compiled in place: one block's compile time (first_call_s); its step against bf16-compiled
    "bf16-compiled-blocks": (BF16, {**FAST, "attention": "cudnn", "compile": True, "compile_scope": "blocks"}),
    "fp8-compiled-blocks": (BF16, {**FAST, "attention": "cudnn", "compile": True, "compile_scope": "blocks",
                                   "fp8": True}),
    "bf16-tuned": (BF16, {**FAST, "attention": "cudnn", "compile": "tuned"}),
    "fp8-tuned": (BF16, {**FAST, "attention": "cudnn", "compile": "tuned", "fp8": True}),
    "fp8-autotune": (BF16, {**FAST, "attention": "cudnn", "compile": "max-autotune-no-cudagraphs", "fp8": True}),
    "bf16-autotune-graphs": (BF16, {**FAST, "attention": "cudnn", "compile": "max-autotune"}),  # slow compile
    "fp8t-compiled": (BF16, {**FAST, "attention": "cudnn", "compile": True, "fp8": True, "fp8_scaling": "tensor"}),
    "fp8t-graphs": (BF16, {**FAST, "attention": "cudnn", "compile": "reduce-overhead", "fp8": True,
                           "fp8_scaling": "tensor"}),
}


def flops_per_step(batch: int, guidance: bool) -> float:
    """Matmul FLOPs of one ITHQ-size transformer call on ``batch`` images (twice the sequences with guidance)."""
    return forward_flops("ithq", batch * (2 if guidance else 1))


def build(variants: list[str], device: str, layers: int, reference: bool = True):
    """diffusers' pipeline (fp16; on ``device`` when ``reference``) and ours per variant, same weights."""
    from diffusers import Transformer2DModel, VQDiffusionScheduler, VQModel
    from diffusers import VQDiffusionPipeline as Reference
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        transformer = Transformer2DModel(**{**ITHQ_TRANSFORMER, "num_layers": layers})
        vqvae = VQModel(**ITHQ_VQVAE)
        vocab = byte_level_vocab()
        text_model = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, eos_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"]))
        null = LearnedClassifierFreeSamplingEmbeddings(learnable=True, hidden_size=512, length=77)
        null.embeddings.data.normal_()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    baseline = Reference(vqvae=vqvae, text_encoder=text_model, tokenizer=tokenizer, transformer=transformer,
                          scheduler=VQDiffusionScheduler(num_vec_classes=4097),
                          learned_classifier_free_sampling_embeddings=null)
    ours = {}
    for name in variants:
        dtype, speedups = VARIANTS[name] if device == "cuda" else (torch.float32, None)
        with torch.device(device):
            our_transformer = VQDiffusionTransformer(transformer_config_from_diffusers(dict(transformer.config)))
            our_vqvae = VQVAE(vqvae_config_from_diffusers(dict(vqvae.config)))
            our_null = LearnedNullEmbedding(77, 512)
        load_checked(our_transformer, transformer.state_dict(), "transformer")
        load_checked(our_vqvae, vqvae.state_dict(), "vqvae")
        our_null.embeddings.data.copy_(null.embeddings.data)
        text = TextEncoder(copy.deepcopy(text_model), tokenizer)
        pipe = VQDiffusionPipeline(our_vqvae.eval(), our_transformer.eval(), NoiseSchedule(4096),
                                   text_encoder=text, null_embedding=our_null)
        pipe.progress = False
        pipe.to(device, dtype)
        ours[name] = pipe.optimize(**speedups) if speedups else pipe
    if reference:
        baseline.to(device, torch.float16 if device == "cuda" else torch.float32)
    baseline.set_progress_bar_config(disable=True)
    return baseline, ours


def measure(pipe, batch: int, steps: tuple[int, int], reps: int, device: str, **kwargs) -> dict:
    def run_with(n):
        return lambda: pipe([PROMPT] * batch, num_inference_steps=n, guidance_scale=5.0, truncation_rate=0.86,
                            generator=torch.Generator(device).manual_seed(0), output_type="np", **kwargs)

    begin = time.perf_counter()
    run_with(steps[0])()  # the first call compiles (the cost a short evaluation job pays once)
    if device == "cuda":
        torch.cuda.synchronize()
    first_call = time.perf_counter() - begin
    short, long = (median_seconds(run_with(n), reps) for n in steps)
    step = (long - short) / (steps[1] - steps[0])
    fixed = max(short - steps[0] * step, 0.0)
    total = fixed + 100 * step
    return {"ms_per_step": 1e3 * step, "fixed_ms": 1e3 * fixed, "s_per_100_steps": total, "first_call_s": first_call,
            "images_per_s": batch / total, "tflops": flops_per_step(batch, True) / step / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 30])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=36, help="fewer for a smoke test; FLOPs assume 36")
    parser.add_argument("--project", type=int, default=30000, metavar="N",
                        help="report the hours N images take at 100 steps (an FID run's sampling)")
    parser.add_argument("--variants", nargs="+", default=["bf16", "bf16-fused", "bf16-compiled"],
                        choices=sorted(VARIANTS))
    args = parser.parse_args()

    import diffusers

    peak = matmul_peak() if args.device == "cuda" else float("nan")
    reference, ours = build(args.variants, args.device, args.layers)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    info = {"gpu": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__}
    results = Results("sampling")
    rows = []
    for batch in args.batch:
        entries = [("diffusers fp16", reference, {})]
        entries += [(f"vqdiffusion {name}", p, {}) for name, p in ours.items()]
        for name, pipe, extra in entries:
            try:
                result = measure(pipe, batch, tuple(args.steps), args.reps, args.device, **extra)
            except Exception as error:  # noqa: BLE001 - one failing variant must not hide the others
                print(f"{name:>18} b={batch:<3} failed: {type(error).__name__}: {str(error)[:400]}", flush=True)
                continue
            row = {"pipeline": name, "batch": batch, **result, "mfu": result["tflops"] / peak,
                   "projected_images": args.project, "projected_hours": args.project / result["images_per_s"] / 3600}
            base = next((r for r in rows if r["batch"] == batch and r["pipeline"] == "diffusers fp16"), row)
            row["vs_diffusers"] = row["images_per_s"] / base["images_per_s"]
            rows.append(row)
            results.append({**row, "layers": args.layers, "diffusers": diffusers.__version__,
                            "matmul_peak_tflops": peak})
            print(f"{name:>18} b={batch:<3} {result['ms_per_step']:8.1f} ms/step  "
                  f"{result['images_per_s']:6.3f} img/s  {result['tflops']:6.0f} TFLOP/s  "
                  f"first call {result['first_call_s']:.1f} s", flush=True)
    print(f"\n{info['gpu']}, torch {info['torch']}, diffusers {info['diffusers']}, "
          f"measured bf16 matmul peak {peak:.0f} TFLOP/s")
    print(f"| pipeline | batch | ms/step | images/s (100 steps) | {args.project} images (h) | TFLOP/s | MFU | "
          "vs diffusers |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["batch"] == row["batch"] and r["pipeline"] == "diffusers fp16")
        print(f"| {row['pipeline']} | {row['batch']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.3f} | "
              f"{row['projected_hours']:.2f} | "
              f"{row['tflops']:.0f} | {100 * row['mfu']:.0f}% | {row['images_per_s'] / base['images_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
