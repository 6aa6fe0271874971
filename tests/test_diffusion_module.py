"""The diffusion stage's optimiser wiring: fused AdamW with the module's own gradient clipping."""

import dataclasses

import pytest
import torch

from vqdiffusion.lit.diffusion_module import DiffusionModule
from vqdiffusion.tiny import TINY_VQVAE


@pytest.fixture()
def module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule({"num_layers": 1, "num_heads": 2, "head_dim": 8}, dataclasses.asdict(TINY_VQVAE),
                           {"kind": "none"}, {"preset": "mask_only", "num_timesteps": 10})


def test_optimiser_is_fused_without_a_grad_scaler(module):
    optimizer = module.configure_optimizers()["optimizer"]
    assert all(group["fused"] for group in optimizer.param_groups)


@pytest.mark.parametrize("algorithm", [None, "norm", "value"])
def test_clipping_bounds_the_gradients_and_keeps_their_direction(module, algorithm):
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    before = torch.cat([p.grad.flatten() for p in params])
    module.configure_gradient_clipping(optimizer, 0.5, algorithm)
    after = torch.cat([p.grad.flatten() for p in params])
    if algorithm == "value":
        assert after.abs().max() <= 0.5 + 1e-6
        assert torch.equal(after, before.clamp(-0.5, 0.5))
    else:
        assert after.norm() == pytest.approx(0.5, rel=1e-4)
        torch.testing.assert_close(after, before * (0.5 / before.norm()), rtol=1e-4, atol=1e-7)


def test_no_clip_value_leaves_the_gradients(module):
    optimizer = module.configure_optimizers()["optimizer"]
    param = next(iter(module.transformer.parameters()))
    param.grad = torch.full_like(param, 7.0)
    module.configure_gradient_clipping(optimizer, None, None)
    assert torch.all(param.grad == 7.0)


@pytest.mark.parametrize("key", ["image", "tokens"])
def test_throughput_counts_image_and_pre_tokenised_batches(key, monkeypatch):
    from vqdiffusion.lit.callbacks import Throughput

    clock = iter(range(100))
    monkeypatch.setattr("vqdiffusion.lit.callbacks.time.perf_counter", lambda: 0.5 * next(clock))
    meter = Throughput(warmup=2)
    for step in range(10):
        meter.on_train_batch_end(None, None, None, {key: torch.zeros(8, 4)}, step)
    result = meter.summary(world_size=2)
    assert result["step_seconds"] == 0.5 and result["samples_per_second"] == 8 * 2 / 0.5


def test_compile_compiles_each_block_in_place_and_bf16_residual_reaches_the_transformer():
    torch.manual_seed(0)
    args = ({"num_layers": 2, "num_heads": 2, "head_dim": 8}, dataclasses.asdict(TINY_VQVAE), {"kind": "none"},
            {"preset": "mask_only", "num_timesteps": 10})
    eager, compiled = DiffusionModule(*args), DiffusionModule(*args, compile=True, bf16_residual=True)
    assert all(block._compiled_call_impl is not None for block in compiled.transformer.transformer_blocks)
    assert compiled.transformer._compiled_call_impl is None  # blocks only: the rest stays eager
    assert compiled.loss.compile_math and not eager.loss.compile_math
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    assert compiled.transformer.residual_in_autocast_dtype and not eager.transformer.residual_in_autocast_dtype
