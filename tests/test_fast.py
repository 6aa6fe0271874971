"""Inference speed-ups: each keeps the model's numbers (exactly, or within FP8's precision)."""

import pytest
import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.models.fast import Float8Linear, attention_backend, to_float8
from vqdiffusion.tiny import tiny_pipeline


def tokens(pipe, seed=0, **kwargs):
    return pipe(["a red circle", "a blue square"], num_inference_steps=4, guidance_scale=3.0, truncation_rate=0.9,
                generator=[torch.Generator(pipe.device).manual_seed(seed + i) for i in range(2)], output_type="tokens",
                **kwargs).images


def test_fused_qkv_computes_the_same_and_saves_the_same_weights(tmp_path):
    pipe = tiny_pipeline("text")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    x = torch.randint(0, pipe.transformer.config.num_embeds + 1, (2, pipe.transformer.config.num_tokens))
    context = torch.randn(2, 6, pipe.transformer.config.context_dim)
    with torch.no_grad():
        expected = pipe.transformer(x, 5, context)
        pipe.transformer.fuse_qkv()
        fused = pipe.transformer(x, 5, context)
    assert pipe.transformer.transformer_blocks[0].attn1.to_qkv is not None
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys()  # no to_qkv keys: the saved folder is unchanged
    assert all(torch.equal(after[k], before[k]) for k in before)
    pipe.save_pretrained(tmp_path / "p")
    reloaded = VQDiffusionPipeline.from_pretrained(tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.transformer(x, 5, context), expected, rtol=1e-5, atol=1e-5)


def test_cached_cross_attention_and_fused_qkv_give_the_same_samples():
    plain = tokens(tiny_pipeline("text"))
    fast = tokens(tiny_pipeline("text").optimize(fuse_qkv=True, cache_context=True, attention="math"))
    assert torch.equal(plain, fast)


def test_float8_linear_is_a_quantised_matmul_of_bounded_error():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(3, 10, 64, dtype=torch.bfloat16)
    x[0, 0, 0] = 40.0  # an outlier only its own row's scale sees
    fp8 = Float8Linear(linear)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    out, exact = fp8(x).float(), linear(x).float()
    assert out.shape == (3, 10, 48) and out.dtype == torch.float32
    error = (out - exact).norm() / exact.norm()
    assert 0 < error < 0.05  # e4m3 keeps 3 mantissa bits: a few percent, never exact


def test_to_float8_swaps_the_blocks_matmuls_and_sampling_still_runs():
    pipe = tiny_pipeline("text").to(dtype=torch.bfloat16)
    pipe.optimize(fuse_qkv=True, fp8=True)
    swapped = [m for m in pipe.transformer.modules() if isinstance(m, Float8Linear)]
    blocks = pipe.transformer.config.num_layers
    assert len(swapped) == blocks * 6  # fused qkv, out, cross q, cross out, MLP in and out
    out = tokens(pipe)
    assert out.shape == (2, pipe.transformer.config.num_tokens)
    assert int(out.max()) < pipe.transformer.config.num_embeds
    assert to_float8(pipe.transformer) == 0  # already swapped: nothing left
    with pytest.raises(ValueError, match="save the pipeline before optimizing it"):
        pipe.save_pretrained("unused")
    classes = tiny_pipeline("class").to(dtype=torch.bfloat16).optimize(fp8=True)  # no cross-attention
    assert sum(isinstance(m, Float8Linear) for m in classes.transformer.modules()) == blocks * 4


def test_optimize_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="fp8 needs a bfloat16 pipeline"):
        tiny_pipeline("text").optimize(fp8=True)
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_pipeline("text").optimize(attention="fastest")
    with pytest.raises(ValueError, match="attention must be one of"), attention_backend("fastest"):
        pass


@pytest.mark.gpu
def test_bf16_fast_path_agrees_with_float32_on_a_gpu():
    """The bf16 + fused + cached + compiled path against float32, same weights and generators: most
    tokens agree (bf16 moves a few near-tied draws), and the fp32 path with optimize stays exact."""
    reference = tiny_pipeline("text").to("cuda")
    exact = tokens(reference)
    assert torch.equal(tokens(tiny_pipeline("text").to("cuda").optimize(attention="math")), exact)
    fast = tiny_pipeline("text").to("cuda", torch.bfloat16).optimize(compile=True, attention="auto")
    agreement = (tokens(fast) == exact).float().mean().item()
    assert agreement > 0.8, agreement


def test_sample_py_speed_options_keep_the_images_and_are_recorded(tmp_path):
    from pathlib import Path

    import numpy as np
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from vqdiffusion.sampling import sample

    tiny_pipeline("text").save_pretrained(tmp_path / "pipe")
    root = Path(__file__).resolve().parents[1]

    def run(out, *extra):
        with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
            cfg = compose("sample", overrides=[f"checkpoint={tmp_path / 'pipe'}", "prompt=a red circle", "n=3",
                                               "sampler.num_inference_steps=3", f"output_dir={out}", *extra])
        return sample(cfg)

    plain = run(tmp_path / "plain")
    fast = run(tmp_path / "fast", "speed.fuse_qkv=true", "speed.cache_context=true", "speed.attention=math")
    for index in range(3):
        name = f"{index:06d}.png"
        assert np.array_equal(np.asarray(Image.open(plain / name)), np.asarray(Image.open(fast / name)))
    assert "fuse_qkv=True" in (fast / "samples.jsonl").read_text().splitlines()[0]
    with pytest.raises(ValueError, match=r"unknown speed options \['fp4'\]"):
        run(tmp_path / "bad", "+speed.fp4=true")


def test_the_ancestral_update_is_the_posterior_draw_with_the_same_uniforms():
    """The step math split out for torch.compile equals truncate -> posterior -> Gumbel-max."""
    from vqdiffusion.diffusion.guidance import truncate
    from vqdiffusion.diffusion.process import LOG_PROB_FLOOR, gumbel_argmax, q_posterior
    from vqdiffusion.diffusion.samplers import ancestral_update
    from vqdiffusion.diffusion.schedule import NoiseSchedule

    schedule = NoiseSchedule(7)
    generator = torch.Generator().manual_seed(3)
    log_p = torch.log_softmax(torch.randn(4, 7, 10, generator=generator), dim=1)
    x_t = torch.randint(0, 8, (4, 10), generator=generator)
    t, s = torch.tensor([40, 40, 7, 2]), torch.tensor([30, 39, 1, 0])
    expected = gumbel_argmax(q_posterior(truncate(log_p, 0.8).clamp(min=LOG_PROB_FLOOR), x_t, t, s, schedule),
                             torch.Generator().manual_seed(9))
    u = torch.rand(4, 8, 10, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ancestral_update(log_p, x_t, t, s, schedule, 0.8, u), expected)
