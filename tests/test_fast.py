"""Inference speed-ups: each keeps the model's numbers (exactly, or within FP8's precision)."""

import pytest
import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.models import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.models.transformer import AdaLayerNorm
from vqdiffusion.speed import Float8Linear, attention_backend, to_float8
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


def test_tabulated_modulation_gives_the_same_samples_without_the_adaln_linears():
    plain = tokens(tiny_pipeline("text"))
    pipe = tiny_pipeline("text").optimize(fuse_qkv=False, cache_context=False, cache_modulation=True)
    calls = []
    for module in pipe.transformer.modules():
        if isinstance(module, AdaLayerNorm):
            module.linear.register_forward_hook(lambda *args: calls.append(1))
    assert torch.equal(tokens(pipe), plain) and calls == []
    assert pipe.fast.settings.cache_modulation
    assert pipe.transformer.state_dict().keys() == tiny_pipeline("text").transformer.state_dict().keys()


def test_fuse_activation_marks_the_gelu2_mlps_and_leaves_weights_and_cpu_samples_alone():
    plain = tokens(tiny_pipeline("text"))
    pipe = tiny_pipeline("text").optimize(fuse_qkv=False, fuse_activation=True)
    assert pipe.fast.settings.fuse_activation
    pipe.optimize(fuse_qkv=False)  # a later call leaves the kernels in place, and the settings say so
    assert pipe.fast.settings.fuse_activation
    assert [block.ff.net[0].fused_kernel for block in pipe.transformer.transformer_blocks] == [True, True]
    assert torch.equal(tokens(pipe), plain)  # no CUDA here: the unfused path serves, the same draws
    assert pipe.transformer.state_dict().keys() == tiny_pipeline("text").transformer.state_dict().keys()
    gelu = VQDiffusionTransformer(TransformerConfig(num_embeds=7, height=2, width=2, num_layers=2, num_heads=2,
                                                    head_dim=4, activation="gelu"))
    assert gelu.fuse_activation() == 0  # only GELU2 has a kernel
    assert not gelu.training and not any(p.requires_grad for p in gelu.parameters())  # no backward: frozen


def test_fuse_residual_marks_every_block_and_leaves_weights_and_cpu_samples_alone():
    plain = tokens(tiny_pipeline("text"))
    pipe = tiny_pipeline("text").optimize(fuse_qkv=False, fuse_residual=True)
    assert pipe.fast.settings.fuse_residual
    pipe.optimize(fuse_qkv=False)  # a later call leaves the blocks as they are, and the settings say so
    assert pipe.fast.settings.fuse_residual
    assert [block.residual_in_projection for block in pipe.transformer.transformer_blocks] == [True, True]
    assert torch.equal(tokens(pipe), plain)  # no CUDA here: linear then add, the same sums
    assert pipe.transformer.state_dict().keys() == tiny_pipeline("text").transformer.state_dict().keys()
    unconditional = tiny_pipeline("uncond").transformer  # blocks without cross-attention
    x = torch.randint(0, unconditional.config.num_embeds + 1, (3, unconditional.config.num_tokens))
    with torch.no_grad():
        expected = unconditional(x, torch.tensor([0, 41, 99]))
        assert unconditional.fuse_residual() == unconditional.config.num_layers
        assert torch.equal(unconditional(x, torch.tensor([0, 41, 99])), expected)
    assert not unconditional.training and not any(p.requires_grad for p in unconditional.parameters())


_INTERPRETED_KERNEL = """
import torch
from vqdiffusion.ops import fused_linear as ops
torch.manual_seed(0)
for rows, inner, outer, bias in ((70, 48, 96, True), (64, 64, 64, False), (33, 40, 50, True), (40, 24, 36, False)):
    x, linear = torch.randn(rows, inner), torch.nn.Linear(inner, outer, bias=bias)
    h = linear(x).detach().double()
    for gelu2, residual in ((True, None), (False, torch.randn(rows, outer)), (True, torch.randn(outer, rows).T)):
        out = torch.full((rows, outer), float("nan"))
        ops.launch(x, linear.weight.detach(), None if linear.bias is None else linear.bias.detach(), residual, out,
                   gelu2=gelu2, kernel=ops._depth_checked, block_m=32, block_n=32, block_k=16, group_m=2)
        expected = h * torch.sigmoid(1.702 * h) if gelu2 else h
        if residual is not None:
            expected = expected + residual.double()
        error = (out.double() - expected).abs().max().item()
        assert error < 1e-4, (rows, inner, outer, bias, gelu2, residual is not None, error)
print("ok")
"""


def test_epilogue_matmul_kernel_in_triton_interpreter_matches_linear_then_gelu2_or_add():
    """The kernel's tiling (edge tiles in every dimension, depths a multiple of the tile or not, the
    grouped tile order, the bias) and its epilogues (GELU2, a residual read through its strides, both)
    run by Triton's interpreter on the CPU in float32; needs Triton, which CPU torch wheels lack (the
    GPU tests below cover bf16 on the device)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-c", _INTERPRETED_KERNEL], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_epilogue_matmul_kernel_compiles_for_hopper_pipelined_within_shared_memory():
    """Each autotuning config, with each epilogue, compiled for sm_90 as a launch on contiguous
    ITHQ-sized tensors specialises it (16-aligned pointers and sizes, unit inner strides), by
    Triton's own ptxas with no GPU: tensor-core wgmma, cp.async loads at least two stages deep, and
    shared memory within the H100's 227 KiB a block (a config over it fails at launch: "out of
    resource")."""
    pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from vqdiffusion.ops import fused_linear as ops

    kernel = ops._fused_linear_kernel
    unit_strides = ("stride_xk", "stride_wk", "stride_rn", "stride_yn")
    signature = {name: "*bf16" for name in ("x", "w", "b", "r", "y")}
    signature |= {name: "i32" for name in ("m", "n", "k", "stride_xm", "stride_wn", "stride_rm", "stride_ym")}
    signature |= {name: "constexpr" for name in (*unit_strides, "has_bias", "gelu2", "has_residual", "block_m",
                                                 "block_n", "block_k", "group_m", "even_k")}
    aligned = ("x", "w", "b", "r", "y", "m", "n", "k", "stride_xm", "stride_wn", "stride_rm", "stride_ym")
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    for config in ops._CONFIGS:
        tiles = config.kwargs
        for gelu2 in (True, False):
            constants = {**dict.fromkeys(unit_strides, 1), "has_bias": True, "gelu2": gelu2,
                         "has_residual": not gelu2, "even_k": True, **tiles}
            compiled = compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": config.num_warps, "num_stages": config.num_stages})
            ptx = compiled.asm["ptx"]
            stage_bytes = 2 * tiles["block_k"] * (tiles["block_m"] + tiles["block_n"])
            assert "wgmma.mma_async" in ptx and "cp.async" in ptx, (tiles, gelu2)
            assert 2 * stage_bytes <= compiled.metadata.shared <= 227 * 1024, (tiles, gelu2, compiled.metadata.shared)


def _relative_errors(fused: torch.Tensor, unfused: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    scale = exact.norm()
    return ((fused.double() - exact).norm() / scale).item(), ((unfused.double() - exact).norm() / scale).item()


@pytest.mark.gpu
def test_gelu2_matmul_kernel_on_a_gpu_is_as_close_to_float32_as_the_unfused_path():
    """bf16 at the ITHQ MLP's shape (1408 -> 5632) and at odd sizes, eager and under torch.compile:
    the fused result's error against float64 is within that of cuBLAS's bf16 matmul then GELU2."""
    from vqdiffusion.ops.fused_linear import fused_linear_available, linear_gelu2

    torch.manual_seed(0)
    compiled = torch.compile(linear_gelu2, dynamic=False)
    for rows, inner, outer in ((4096, 1408, 5632), (300, 72, 200)):
        linear = torch.nn.Linear(inner, outer).to("cuda", torch.bfloat16)
        x = torch.randn(2, rows // 2, inner, device="cuda", dtype=torch.bfloat16)
        assert fused_linear_available(x, linear)
        h = torch.nn.functional.linear(x.double(), linear.weight.double(), linear.bias.double())
        exact = h * torch.sigmoid(1.702 * h)
        unfused = linear(x)
        unfused = unfused * torch.sigmoid(1.702 * unfused)
        for fused in (linear_gelu2(x, linear.weight, linear.bias), compiled(x, linear.weight, linear.bias)):
            assert fused.shape == unfused.shape and fused.dtype == torch.bfloat16
            fused_error, unfused_error = _relative_errors(fused, unfused, exact)
            assert fused_error < 1.1 * unfused_error, (rows, inner, outer, fused_error, unfused_error)


@pytest.mark.gpu
def test_residual_matmul_kernel_on_a_gpu_is_as_close_to_float32_as_the_unfused_path():
    """bf16 at the ITHQ block's shapes (attention output 1408 -> 1408, MLP 5632 -> 1408) and at odd
    sizes, eager and compiled: residual + linear(x) in one kernel is as close to float64 as cuBLAS's
    matmul then the add; a compiled tiny pipeline with both epilogues draws the tokens it drew before."""
    from vqdiffusion.ops.fused_linear import linear_add

    torch.manual_seed(0)
    compiled = torch.compile(linear_add, dynamic=False)
    for rows, inner, outer in ((4096, 1408, 1408), (4096, 5632, 1408), (300, 72, 200)):
        linear = torch.nn.Linear(inner, outer).to("cuda", torch.bfloat16)
        x = torch.randn(2, rows // 2, inner, device="cuda", dtype=torch.bfloat16)
        residual = 4 * torch.randn(2, rows // 2, outer, device="cuda", dtype=torch.bfloat16)
        exact = residual.double() + torch.nn.functional.linear(x.double(), linear.weight.double(),
                                                               linear.bias.double())
        unfused = residual + linear(x)
        for fused in (linear_add(x, linear, residual), compiled(x, linear, residual)):
            assert fused.shape == unfused.shape and fused.dtype == torch.bfloat16
            fused_error, unfused_error = _relative_errors(fused, unfused, exact)
            assert fused_error < 1.1 * unfused_error, (rows, inner, outer, fused_error, unfused_error)
    plain = tokens(tiny_pipeline("text").to("cuda", torch.bfloat16))
    fused = tokens(tiny_pipeline("text").to("cuda", torch.bfloat16).optimize(
        fuse_activation=True, fuse_residual=True, compile=True))
    assert (fused == plain).float().mean().item() > 0.8


def test_modulation_tables_follow_the_timestep_and_skip_class_models():
    unconditional = tiny_pipeline("uncond").transformer
    x = torch.randint(0, unconditional.config.num_embeds + 1, (3, unconditional.config.num_tokens))
    timesteps = torch.tensor([0, 41, 99])
    with torch.no_grad():
        expected = unconditional(x, timesteps)
        tabulated = unconditional.tabulate_modulation()(x, timesteps)
    assert unconditional.transformer_blocks[0].norm1.table.shape == (100, 2 * unconditional.config.width_model)
    torch.testing.assert_close(tabulated, expected, rtol=1e-5, atol=1e-5)
    other = tiny_pipeline("uncond", seed=1).transformer
    unconditional.load_state_dict(other.state_dict())  # new weights: the old tables must not be used
    assert unconditional.transformer_blocks[0].norm1.table is None
    with torch.no_grad():
        torch.testing.assert_close(unconditional(x, timesteps), other(x, timesteps))
    classes = tiny_pipeline("class").transformer.tabulate_modulation()  # the modulation depends on the class too
    assert all(m.table is None for m in classes.modules() if isinstance(m, AdaLayerNorm))


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


def test_float8_linear_with_one_scale_per_tensor():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(3, 10, 64, dtype=torch.bfloat16)
    per_tensor, per_row = Float8Linear(linear, scaling="tensor"), Float8Linear(linear)
    assert per_tensor.weight_scale.shape == () and "tensor scales" in repr(per_tensor)
    exact = linear(x).float()
    error = (per_tensor(x).float() - exact).norm() / exact.norm()
    assert 0 < error < 0.05
    x[0, 0, 0] = 1e5  # one outlier: with a single scale for x, every other row falls to subnormals
    rest = (slice(1, None),)
    exact = linear(x).float()[rest]
    tensor_error = (per_tensor(x).float()[rest] - exact).norm() / exact.norm()
    row_error = (per_row(x).float()[rest] - exact).norm() / exact.norm()
    assert row_error < 0.05 < tensor_error
    with pytest.raises(ValueError, match="scaling must be one of"):
        Float8Linear(linear, scaling="block")


@pytest.mark.gpu
@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_float8_linear_on_fp8_tensor_cores(scaling):
    """The CUDA kernels (bias in the epilogue, fast accumulation) stay within e4m3's error."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 matmuls need sm89+ (Ada, Hopper)")
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512).to("cuda", torch.bfloat16)
    x = torch.randn(4, 128, 256, device="cuda", dtype=torch.bfloat16)
    exact = linear(x).float()
    error = (Float8Linear(linear, scaling)(x).float() - exact).norm() / exact.norm()
    assert 0 < error < 0.05, error


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
    refused = tiny_pipeline("text")
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        refused.optimize(compile="fastest")
    assert refused.transformer.transformer_blocks[0].attn1.to_qkv is None  # refused before fusing anything
    with pytest.raises(ValueError, match="fp8_scaling must be one of"):
        tiny_pipeline("text").to(dtype=torch.bfloat16).optimize(fp8=True, fp8_scaling="column")
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
    blocks = tiny_pipeline("text").to("cuda", torch.bfloat16).optimize(compile=True, compile_scope="blocks")
    assert (tokens(blocks) == exact).float().mean().item() > 0.8  # each block compiled in place
    graphs = tiny_pipeline("text").to("cuda", torch.bfloat16).optimize(compile="reduce-overhead")
    first = tokens(graphs)
    assert (first == exact).float().mean().item() > 0.8
    kept = first.clone()
    tokens(graphs, seed=5)  # replays every CUDA graph: tokens returned earlier must not change
    assert torch.equal(first, kept)
    for _ in range(2):  # the diffusers sampler's loop under CUDA graphs too (one generator: its draws)
        drawn = graphs("a red circle", num_inference_steps=4, guidance_scale=3.0, sampler="diffusers",
                       generator=torch.Generator("cuda").manual_seed(0), output_type="tokens").images
        assert drawn.shape == (1, graphs.transformer.config.num_tokens)
    expected = reference.decode(exact, "pt")  # float32 eager decoder
    for pipe in (fast, graphs):  # compiled decoders (bf16), the second one CUDA-graphed
        images = pipe.decode(exact, "pt")
        assert images.shape == expected.shape and (images - expected).abs().mean() < 0.01
        assert torch.equal(pipe.decode(exact, "pt"), images)  # deterministic, and not overwritten by a replay


def test_sample_py_speed_options_keep_the_images_and_are_recorded(tmp_path):
    from pathlib import Path

    import numpy as np
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from vqdiffusion.tasks import sample

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
    from vqdiffusion.diffusion.samplers.ancestral import ancestral_update
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


def test_compile_options_add_multi_kernel_reductions_and_tuning_to_the_mode():
    from vqdiffusion.speed.compile import inductor_options, uses_cuda_graphs

    assert inductor_options(None) == {"triton.multi_kernel": 1}
    assert inductor_options("reduce-overhead") == {"triton.cudagraphs": True, "triton.multi_kernel": 1}
    assert inductor_options("tuned") == {"coordinate_descent_tuning": True, "triton.multi_kernel": 1}
    assert uses_cuda_graphs("reduce-overhead") and not uses_cuda_graphs("tuned")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        inductor_options("turbo")


def test_a_compiled_pipeline_draws_the_same_tokens_on_the_cpu():
    """optimize(compile=...) compiles the transformer (whole, or block by block), the step math
    and the VQ decoder: float32 on the CPU, the tokens equal the eager pipeline's. The compiled
    decoder's images are compared on the GPU (the bf16 fast-path test): compiling it cold on a
    2-core CPU takes longer than the rest of this test together."""
    def tokens(pipe):
        return pipe(["a red circle", "a blue square"], num_inference_steps=4, guidance_scale=3.0, truncation_rate=0.9,
                    generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="tokens").images

    eager = tokens(tiny_pipeline("text"))
    fast = tiny_pipeline("text").optimize(compile="tuned")
    assert fast.fast.decode is not fast.vqvae.decode  # the decoder is compiled too
    assert torch.equal(tokens(fast), eager)
    regional = tiny_pipeline("text").optimize(compile="tuned", compile_scope="blocks")
    assert regional.fast.network is regional.transformer  # the model stays eager around its compiled blocks
    assert all(block._compiled_call_impl is not None for block in regional.transformer.transformer_blocks)
    assert torch.equal(tokens(regional), eager)
    with pytest.raises(ValueError, match="compile_scope='blocks' is for modes without CUDA graphs"):
        tiny_pipeline("text").optimize(compile="reduce-overhead", compile_scope="blocks")
    with pytest.raises(ValueError, match=r"compile_scope must be one of \('model', 'blocks'\), got 'layers'"):
        tiny_pipeline("text").optimize(compile=True, compile_scope="layers")


def test_truncate_fast_is_the_sort_based_truncation_where_no_kernel_runs():
    from vqdiffusion.diffusion.guidance import truncate, truncate_fast

    log_p = torch.randn(2, 9, 5).log_softmax(1)
    assert torch.equal(truncate_fast(log_p, 0.7), truncate(log_p, 0.7))
    assert truncate_fast(log_p, 1.0) is log_p


def _ambiguous_tokens(log_p: torch.Tensor, rate: float, tolerance: float = 1e-5) -> torch.Tensor:
    """(B, N) True where some class's mass before it (float64) lies within ``tolerance`` of the
    rate: there float32 summation order alone decides whether that class is kept."""
    p = log_p.double().exp().sort(dim=1, descending=True).values
    return ((p.cumsum(1) - p - rate).abs() < tolerance).any(dim=1)


@pytest.mark.gpu
def test_truncation_kernel_keeps_what_the_sort_keeps():
    """The bisection kernel against the sort in float64, eager and inside torch.compile, both
    memory layouts; exact on a hand-made distribution with a tie at the boundary."""
    from vqdiffusion.diffusion.guidance import truncate, truncate_fast
    from vqdiffusion.ops.truncation import truncation_kernel_available

    p = torch.tensor([0.5, 0.25, 0.125, 0.125], device="cuda")
    log_p = p.log()[None, :, None].repeat(1, 1, 3)  # (1, 4, 3)
    assert torch.isfinite(truncate_fast(log_p, 0.75)).sum(1).tolist() == [[2, 2, 2]]  # 0.75 is not below 0.75
    assert torch.isfinite(truncate_fast(log_p, 0.76)).sum(1).tolist() == [[4, 4, 4]]  # the tie at 0.125 stays whole
    assert torch.isfinite(truncate_fast(log_p, 0.3)).sum(1).tolist() == [[1, 1, 1]]

    generator = torch.Generator("cuda").manual_seed(0)
    compiled = torch.compile(lambda x, rate: truncate_fast(x, rate).clamp(min=-70.0), dynamic=False)
    for classes in (7, 4096, 8192):
        logits = 3 * torch.randn(3, 64, classes, device="cuda", generator=generator)  # peaked rows
        for log_p in (logits.log_softmax(-1).transpose(1, 2), logits.transpose(1, 2).contiguous().log_softmax(1)):
            assert truncation_kernel_available(log_p)
            for rate in (0.2, 0.86, 0.999) if classes == 7 else (0.2, 0.5, 0.86):  # see _ambiguous_tokens
                got = truncate_fast(log_p, rate)
                kept = torch.isfinite(truncate(log_p.double(), rate))
                kept_here = torch.isfinite(got)
                clear = ~_ambiguous_tokens(log_p, rate)
                assert clear.float().mean() > 0.5, (classes, rate)  # the comparison below is not empty
                differing = (kept != kept_here).any(dim=1) & clear
                assert not differing.any(), (classes, rate, int(differing.sum()))
                assert kept_here.any(dim=1).all()  # the most likely class always survives
                assert torch.equal(got[kept_here], log_p[kept_here])
                torch.testing.assert_close(compiled(log_p, rate), got.clamp(min=-70.0), rtol=0, atol=0)
