"""The diffusion stage's optimiser wiring: fused AdamW with the module's own gradient clipping."""

import dataclasses
import functools

import pytest
import torch

from vqdiffusion.lit.diffusion_module import DiffusionModule
from vqdiffusion.tiny import TINY_VQVAE

ADAMW = functools.partial(torch.optim.AdamW, lr=4.5e-4, betas=(0.9, 0.96), weight_decay=4.5e-2)  # train.yaml's


@pytest.fixture()
def module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule({"num_layers": 1, "num_heads": 2, "head_dim": 8}, dataclasses.asdict(TINY_VQVAE),
                           {"kind": "none"}, {"preset": "mask_only", "num_timesteps": 10}, optimizer=ADAMW)


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
    optimizer.step()  # a norm clip is folded into the fused AdamW step, which writes the clipped gradients back
    after = torch.cat([p.grad.flatten() for p in params])
    if algorithm == "value":
        assert after.abs().max() <= 0.5 + 1e-6
        assert torch.equal(after, before.clamp(-0.5, 0.5))
    else:
        assert after.norm() == pytest.approx(0.5, rel=1e-4)
        torch.testing.assert_close(after, before * (0.5 / before.norm()), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped, and below the bound (no change)
def test_clipping_folded_into_the_fused_step_updates_like_clipping_first(max_norm):
    folded, folded_norms = _three_fused_adamw_steps("folded", max_norm)
    separate, separate_norms = _three_fused_adamw_steps("separate", max_norm)
    assert folded_norms == pytest.approx(separate_norms, rel=1e-6) and min(folded_norms) > 100
    for a, b in zip(folded.parameters(), separate.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    if max_norm < 100:  # the bound binds here: a fold that skipped clipping would have moved the weights elsewhere
        unclipped, _ = _three_fused_adamw_steps("none", max_norm)
        assert not torch.allclose(folded[0].weight, unclipped[0].weight, atol=1e-3)


def _three_fused_adamw_steps(clipping: str, max_norm: float) -> tuple[torch.nn.Module, list[float]]:
    """A fixed small net after three fused AdamW steps on fixed batches, its gradients clipped to
    ``max_norm`` inside the step ("folded"), before it ("separate") or not at all ("none"); with
    the gradient norms seen before clipping."""
    from vqdiffusion.utils.optim import clip_grad_norm_in_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    norms = []
    for step in range(3):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step))
        (10 * net(x).square().sum()).backward()
        if clipping == "folded":
            norms.append(float(clip_grad_norm_in_step(optimizer, max_norm)))
        elif clipping == "separate":
            norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)))
        optimizer.step()
        optimizer.zero_grad()
    return net, norms


def test_clipping_in_step_refuses_an_unfused_optimizer():
    from vqdiffusion.utils.optim import clip_grad_norm_in_step

    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs a fused Adam/AdamW, got SGD"):
        clip_grad_norm_in_step(torch.optim.SGD(net.parameters(), lr=0.1), 1.0)


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
    eager, compiled = DiffusionModule(*args, bf16_residual=False), DiffusionModule(*args, compile=True)
    assert all(block._compiled_call_impl is not None for block in compiled.transformer.transformer_blocks)
    assert compiled.transformer._compiled_call_impl is None  # blocks only: the rest stays eager
    assert compiled.loss.compile_math and not eager.loss.compile_math
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    assert compiled.transformer.residual_in_autocast_dtype and not eager.transformer.residual_in_autocast_dtype


@pytest.mark.parametrize("accumulate", [1, 2])
def test_accumulated_batches_update_the_ema_once_per_step_and_draw_their_own_noise(accumulate):
    """Over ``accumulate_grad_batches`` batches the step count stands still: the EMA must move once
    per optimiser step (decay 0 at the first update, then ``ema_decay``), toward the weights that
    step produced, and each accumulated batch must draw its own t and noise."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    module = DiffusionModule({"num_layers": 1, "num_heads": 2, "head_dim": 8}, dataclasses.asdict(TINY_VQVAE),
                             {"kind": "none"}, {"preset": "mask_only", "num_timesteps": 10},
                             ema_every=1, ema_decay=0.5, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    grid = TINY_VQVAE.sample_size // TINY_VQVAE.downsample_factor
    tokens = torch.randint(0, module.tokenizer.num_codes, (3 * accumulate, 2, grid, grid))
    loader = torch.utils.data.DataLoader([{"tokens": batch} for batch in tokens], batch_size=None)
    seeds, weights_after_step = [], {}
    drawn = module.step_generator

    def recording_generator(batch_idx: int = 0) -> torch.Generator:
        generator = drawn(batch_idx)
        seeds.append(generator.initial_seed())
        return generator

    module.step_generator = recording_generator

    class WeightsAfterEachStep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights_after_step[trainer.global_step] = [p.detach().clone() for p in pl_module.transformer.parameters()]

    trainer = pl.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[WeightsAfterEachStep()])
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 3
    assert len(seeds) == 3 * accumulate == len(set(seeds))
    assert seeds[::accumulate] == [i * accumulate for i in range(3)]  # seed 0: 1000003 x 0 + step x accumulate
    # steps 1, 2, 3 with ema_every=1: a copy at the first, then halfway toward each step's weights
    expected = weights_after_step[1]
    for step in (2, 3):
        expected = [0.5 * e + 0.5 * w for e, w in zip(expected, weights_after_step[step])]
    for ema, want in zip(module.ema_transformer.parameters(), expected):
        torch.testing.assert_close(ema, want, rtol=0, atol=1e-6)
    assert not torch.allclose(expected[0], weights_after_step[3][0])  # the test can tell the steps apart


def test_every_rank_and_accumulated_batch_of_a_step_draws_its_own_noise(module):
    """Under DDP each rank, and each batch accumulated into a step, gets its own generator seed;
    on one process with one batch per step the seed stays seed x 1000003 + step (resumes and
    earlier runs draw the same)."""
    from types import SimpleNamespace

    def seed(step: int, batch_idx: int, rank: int = 0, world: int = 1, accumulate: int = 1) -> int:
        module._trainer = SimpleNamespace(global_step=step, global_rank=rank, world_size=world,
                                          accumulate_grad_batches=accumulate)
        try:
            return module.step_generator(batch_idx).initial_seed()
        finally:
            module._trainer = None

    drawn = [seed(step, 2 * step + place, rank, world=4, accumulate=2)
             for step in range(3) for place in range(2) for rank in range(4)]
    assert len(set(drawn)) == len(drawn) == 24
    module.hparams.seed = 5
    assert [seed(step, step) for step in range(3)] == [5 * 1_000_003 + step for step in range(3)]


def test_hyperparameters_record_plain_values_that_rebuild_the_module(tmp_path):
    """A checkpoint holds the condition, schedule, optimiser and LR schedule as plain dicts (loadable
    with weights_only=True) from which load_from_checkpoint builds the same module."""
    from vqdiffusion.lit import schedules

    torch.manual_seed(0)
    module = DiffusionModule({"num_layers": 1, "num_heads": 2, "head_dim": 8}, dataclasses.asdict(TINY_VQVAE),
                             {"kind": "class", "num_classes": 3}, {"preset": "mask_only", "num_timesteps": 10},
                             optimizer=ADAMW, lr_scheduler=functools.partial(schedules.cosine, warmup_steps=2,
                                                                             max_steps=8))
    assert module.hparams["optimizer"] == {"_target_": "torch.optim.adamw.AdamW", "_partial_": True, "lr": 4.5e-4,
                                           "betas": [0.9, 0.96], "weight_decay": 4.5e-2}
    assert module.hparams["lr_scheduler"]["_target_"] == "vqdiffusion.lit.schedules.cosine"
    assert module.hparams["condition"] == {"kind": "class", "num_classes": 3}
    path = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["schedule"]["num_timesteps"] == 10
    restored = DiffusionModule.load_from_checkpoint(path, weights_only=True)
    assert restored.condition == module.condition and restored.transformer.config == module.transformer.config
    optimizer = restored.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == pytest.approx(4.5e-4 / 2)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), module.state_dict().values()))
