"""FP8 training matmuls: each of a linear's three products quantised along its summed dimension,
the parameters and checkpoints unchanged, a short run's losses those of the float32 run."""

import dataclasses
import functools

import pytest
import pytorch_lightning as pl
import torch

from vqdiffusion.lit.diffusion_module import DiffusionModule
from vqdiffusion.speed import fp8_training
from vqdiffusion.speed.fp8_training import Float8TrainingLinear, float8_linear, to_float8_training
from vqdiffusion.tiny import TINY_VQVAE


def _relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return float((value.double() - exact).norm() / exact.norm())


def _products(recipe: str, rows: int = 64, inputs: int = 96, outputs: int = 48, outlier: float = 1.0):
    """Output and gradients of float8_linear and of the float64 linear on the same inputs; row 0 of
    x scaled by ``outlier``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=generator)
    x[0] *= outlier
    weight = torch.randn(outputs, inputs, generator=generator) / inputs**0.5
    bias = torch.randn(outputs, generator=generator)
    grad = torch.randn(rows, outputs, generator=generator)
    results = []
    for fn, dtype in ((functools.partial(float8_linear, recipe=recipe), torch.float32),
                      (torch.nn.functional.linear, torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x, weight, bias)]
        out = fn(*leaves)
        out.backward(grad.to(out.dtype))
        results.append([out.detach()] + [t.grad for t in leaves])
    return results


@pytest.mark.parametrize("recipe", ["rowwise", "rowwise-wgrad-bf16"])
def test_each_product_carries_fp8_rounding_and_no_more(recipe):
    (out, dx, dw, db), (out_ref, dx_ref, dw_ref, db_ref) = _products(recipe)
    assert out.dtype == dx.dtype == dw.dtype == torch.float32  # as the linear gives, outside autocast
    # e4m3 keeps 3 mantissa bits: each factor within 1/16 of itself, errors averaging out in the
    # sums; bf16 alone stays near 0.3%: above 1% means the products really ran in FP8
    for value, exact in ((out, out_ref), (dx, dx_ref)):
        assert 0.01 < _relative_error(value, exact) < 0.06
    weight_error = _relative_error(dw, dw_ref)
    assert (0.01 < weight_error < 0.06) if recipe == "rowwise" else weight_error < 0.006
    assert _relative_error(db, db_ref) < 0.006  # a float32 sum of the bf16 gradient


def test_one_outlier_token_does_not_flatten_the_others():
    # a token 1000x larger: one scale per tensor would leave the others on e4m3's subnormal
    # steps (2^-9 of the scale); one per row keeps their 3 bits
    (out, dx, dw, _), (out_ref, dx_ref, dw_ref, _) = _products("rowwise", outlier=1000.0)
    assert _relative_error(out[1:], out_ref[1:]) < 0.06
    assert _relative_error(dx, dx_ref) < 0.06
    per_tensor_scale = out_ref.abs().max() / 448
    assert float(out_ref[1:].abs().median()) < 16 * per_tensor_scale * 2**-6  # the case a tensor scale fails


def test_sides_fp8_cannot_take_run_the_plain_linear():
    x, weight = torch.randn(5, 24, requires_grad=True), torch.randn(40, 24, requires_grad=True)
    out = float8_linear(x, weight)
    out.sum().backward()
    torch.testing.assert_close(out, x @ weight.t())
    assert x.grad is not None and weight.grad is not None


def test_the_output_dtype_is_the_linears():
    x, weight = torch.randn(32, 32), torch.randn(16, 32)
    with torch.autocast("cpu", torch.bfloat16):
        assert float8_linear(x, weight).dtype == torch.bfloat16 == torch.nn.functional.linear(x, weight).dtype
    assert float8_linear(x, weight).dtype == torch.float32


def _tiny(kind: str = "none", layers: int = 2, **kwargs) -> DiffusionModule:
    torch.manual_seed(0)
    condition = {"kind": kind, **({"num_classes": 3} if kind == "class" else {})}
    return DiffusionModule({"num_layers": layers, "num_heads": 2, "head_dim": 16}, dataclasses.asdict(TINY_VQVAE),
                           condition, {"preset": "mask_only", "num_timesteps": 10},
                           optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), ema_every=1, **kwargs)


def test_conversion_keeps_parameters_names_and_the_ema_copy():
    plain, module = _tiny(), _tiny(fp8="rowwise")
    assert module.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep their names
    for a, b in zip(module.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    converted = [m for m in module.transformer.modules() if isinstance(m, Float8TrainingLinear)]
    assert len(converted) == 2 * 6  # q, k, v, out, MLP in and out; no cross-attention here
    assert not any(isinstance(m, Float8TrainingLinear) for m in module.ema_transformer.modules())
    parameters = {id(p) for p in module.transformer.parameters()}
    assert to_float8_training(module.transformer, "rowwise-wgrad-bf16") == 12  # again: the same modules
    assert {id(p) for p in module.transformer.parameters()} == parameters
    assert all(m.recipe == "rowwise-wgrad-bf16" for m in converted)


def test_a_text_model_trains_with_its_cross_attention_in_either_dtype():
    from vqdiffusion.tiny import tiny_pipeline

    transformer = tiny_pipeline("text").transformer.train().requires_grad_(True)
    to_float8_training(transformer)
    tokens, context = torch.randint(0, 16, (2, 16)), torch.randn(2, 6, 32)
    for autocast in (False, True):  # the FP8 queries meet the text's keys in the linear's dtype
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            transformer(tokens, torch.tensor([3, 7]), context).float().mean().backward()
    assert transformer.transformer_blocks[0].attn2.to_q.weight.grad.abs().sum() > 0


def test_stacked_self_attention_projections_run_in_fp8(monkeypatch):
    module = _tiny(layers=1, fp8="rowwise").train()
    calls = []
    matmul = fp8_training._Float8Matmul.apply
    monkeypatch.setattr(fp8_training._Float8Matmul, "apply",
                        lambda x, w, *rest: calls.append(tuple(w.shape)) or matmul(x, w, *rest))
    tokens = torch.randint(0, 16, (4, 16))
    module.transformer(tokens, torch.zeros(4, dtype=torch.long)).sum().backward()
    assert calls == [(96, 32), (32, 32), (128, 32), (32, 128)]  # stacked q/k/v, out, MLP in, MLP out
    assert module.transformer.transformer_blocks[0].attn1.to_k.weight.grad is not None


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(float(outputs["loss"]))


def test_a_short_run_trains_like_float32():
    """The same 30 steps with and without FP8 products: losses within a few percent all along."""
    losses = {}
    for recipe in (None, "rowwise"):
        module = _tiny(fp8=recipe)
        generator = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 4, (30, 8, 4, 4), generator=generator)  # a skewed code distribution to learn
        loader = torch.utils.data.DataLoader([{"tokens": batch} for batch in tokens], batch_size=None)
        recorder = _Losses()
        trainer = pl.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])
        trainer.fit(module, train_dataloaders=loader)
        losses[recipe] = torch.tensor(recorder.seen)
    exact, fp8 = losses[None], losses["rowwise"]
    assert exact[-5:].mean() < 0.7 * exact[:5].mean()  # it learns
    assert float(((fp8 - exact).abs() / exact).max()) < 0.05 and not torch.equal(fp8, exact)


def test_an_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match=r"FP8 training recipe must be one of \('rowwise', 'rowwise-wgrad-bf16'\), "
                                         r"got 'tensor'"):
        _tiny(fp8="tensor")


@pytest.mark.gpu
def test_a_compiled_fp8_training_step_matches_float32_on_a_gpu():
    torch.manual_seed(0)
    from vqdiffusion.models.transformer import TransformerConfig, VQDiffusionTransformer

    config = TransformerConfig(num_embeds=512, height=16, width=16, num_layers=2, num_heads=8, head_dim=48,
                               context_dim=None, num_classes=10)
    reference = VQDiffusionTransformer(config).cuda()
    fast = VQDiffusionTransformer(config).cuda()
    fast.load_state_dict(reference.state_dict())
    to_float8_training(fast, "rowwise")
    for block in fast.transformer_blocks:
        block.compile()
    tokens = torch.randint(0, 513, (64, 256), device="cuda")
    timesteps, labels = torch.randint(0, 100, (64,), device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    outputs = []
    for net, autocast in ((reference, False), (fast, True)):
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = net(tokens, timesteps, class_labels=labels)
        out.mean().backward()
        outputs.append((out.detach().double(), net.transformer_blocks[0].ff.net[2].weight.grad.double()))
    (out_ref, grad_ref), (out_fp8, grad_fp8) = outputs
    assert _relative_error(out_fp8, out_ref) < 0.02  # log-probabilities of 512 codes (about -6)
    assert _relative_error(grad_fp8, grad_ref) < 0.1


def test_fp8_on_a_gpu_without_fp8_tensor_cores_is_refused_by_name(monkeypatch):
    from vqdiffusion.speed.fp8 import require_fp8_tensor_cores

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"diffusion_training.fp8=rowwise needs FP8 tensor cores .*"
                                         r"NVIDIA A100-SXM4-80GB has 8.0"):
        require_fp8_tensor_cores("cuda:0", "diffusion_training.fp8=rowwise")
    require_fp8_tensor_cores("cpu", "fp8")  # the CPU runs the products (slowly)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    require_fp8_tensor_cores("cuda:0", "fp8")
