"""The tokenizer stage's patch discriminator, the published tokenizer/transformer presets, and
the diffusion stage's LR schedules."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vqdiffusion.lit import schedules
from vqdiffusion.lit.schedules import WarmupPlateau
from vqdiffusion.lit.tokenizer_module import TokenizerModule
from vqdiffusion.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_discriminator_loss
from vqdiffusion.models.transformer import TransformerConfig, VQDiffusionTransformer
from vqdiffusion.models.vqvae import VQVAE, VQVAEConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ADAM = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.9))  # train.yaml's tokenizer optimiser
TINY_VQ = dict(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
               block_out_channels=[8, 8], layers_per_block=1, latent_channels=8, sample_size=32,
               num_vq_embeddings=16, norm_num_groups=4, vq_embed_dim=8, mid_block_add_attention=False)


def test_patch_discriminator_judges_patches():
    logits = PatchDiscriminator(3, channels=8, num_layers=3)(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)  # 64 / 2^3 - 2


def test_hinge_loss_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5; halves: 0.375
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.375)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.randn(4, requires_grad=True)
    rec, gen = (3 * w).sum(), (0.5 * w).sum()  # gradients 3 and 0.5 per element
    assert adaptive_weight(rec, gen, w).item() == pytest.approx(6.0, rel=1e-3)


def _batch_step(module: TokenizerModule, step: int) -> torch.Tensor:
    module._trainer = None
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    module.log_dict = lambda *a, **k: None
    module.log = lambda *a, **k: None
    type(module).global_step = property(lambda self: step)
    try:
        return module.training_step({"image": images}, 0)
    finally:
        del type(module).global_step


def test_discriminator_trains_only_on_its_own_loss_after_disc_start():
    torch.manual_seed(0)
    module = TokenizerModule(TINY_VQ, optimizer=ADAM, disc_weight=0.8, disc_start=10, restart_dead_codes_every=0)
    optimizer = module.configure_optimizers()["optimizer"]
    assert len(optimizer.param_groups) == 2  # autoencoder + discriminator, one optimiser step per batch

    # Before disc_start: the discriminator receives exactly zero gradient, but is in the graph (DDP).
    loss = _batch_step(module, step=0)
    loss.backward()
    disc_grads = [p.grad for p in module.discriminator.parameters()]
    assert all(g is not None and g.abs().max() == 0 for g in disc_grads)

    # After: the discriminator learns (what it learns from is the next test).
    module.zero_grad()
    torch.manual_seed(1)
    loss = _batch_step(module, step=10)
    loss.backward()
    after = {n: p.grad.clone() for n, p in module.discriminator.named_parameters()}
    assert any(g.abs().max() > 0 for g in after.values())


def test_discriminator_gradient_is_the_hinge_loss_gradient_only():
    torch.manual_seed(0)
    module = TokenizerModule(TINY_VQ, optimizer=ADAM, disc_weight=0.8, disc_start=0, restart_dead_codes_every=0)
    module.train()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    module.log_dict = lambda *a, **k: None
    recon, _, _ = module.vqvae(images)
    rec_loss = (recon - images).abs().mean()
    state = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    total = module._adversarial_terms(images, recon, rec_loss)
    disc_params = list(module.discriminator.parameters())
    got = torch.autograd.grad(total, disc_params, retain_graph=True)
    module.discriminator.load_state_dict(state)  # undo BatchNorm running-stat updates
    expected_loss = hinge_discriminator_loss(module.discriminator(images), module.discriminator(recon.detach()))
    expected = torch.autograd.grad(expected_loss, disc_params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "factor", "codes"), [
    ("vqgan_f8_8192", 8, 8192), ("vqvae_f8_ema_4096", 8, 4096), ("vqgan_f16_16384", 16, 16384)])
def test_published_tokenizer_presets_have_the_published_grid(name, factor, codes):
    cfg = OmegaConf.to_container(OmegaConf.merge({"data": {"train": {"size": 256}}},
                                                 {"t": OmegaConf.load(CONFIGS / "tokenizer" / f"{name}.yaml")}),
                                 resolve=True)["t"]
    vqvae = VQVAE(VQVAEConfig(**cfg))
    with torch.no_grad():
        codes_out = vqvae.encode(torch.zeros(1, 3, 64, 64))
    assert codes_out.shape[-1] * codes_out.shape[-2] == (64 // factor) ** 2
    assert vqvae.num_codes == codes


@pytest.mark.parametrize(("name", "layers", "width", "millions"), [
    ("coco", 19, 1024, None), ("ithq", 36, 1408, 1360), ("imagenet", 24, 512, None), ("ffhq", 20, 512, None)])
def test_published_transformer_presets(name, layers, width, millions):
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml"))
    assert cfg["num_layers"] == layers and cfg["num_heads"] * cfg["head_dim"] == width
    if millions:  # ITHQ: the released model has 1.36 B parameters (counted on the meta device)
        config = TransformerConfig(num_embeds=4096, height=32, width=32, context_dim=512, **cfg)
        with torch.device("meta"):
            model = VQDiffusionTransformer(config)
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) / millions < 0.02


def test_plateau_schedule_warms_up_then_halves_when_the_loss_stalls():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW(params, lr=1.0)
    scheduler = schedules.plateau(optimizer, warmup_steps=4, patience=3)
    assert scheduler["monitor"] == "train/loss"
    plateau = scheduler["scheduler"]
    assert isinstance(plateau, WarmupPlateau)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):  # warm-up: 0.25, 0.5, 0.75 -> 1.0
        plateau.step(10.0)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0]
    for _ in range(5):  # a flat loss: after patience 3 (+1) steps the LR halves
        plateau.step(10.0)
    assert optimizer.param_groups[0]["lr"] == 0.5
    restored = WarmupPlateau(torch.optim.AdamW(params, lr=1.0), warmup_steps=4, patience=3)
    restored.load_state_dict(plateau.state_dict())
    assert restored.calls == plateau.calls and restored.num_bad_epochs == plateau.num_bad_epochs


@pytest.mark.parametrize("schedule", [schedules.constant, schedules.cosine, schedules.plateau])
def test_a_negative_warmup_is_refused_by_every_schedule(schedule):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    settings = {"cosine": {"max_steps": 10}, "plateau": {"patience": 3}}.get(schedule.__name__, {})
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0, got -1"):
        schedule(optimizer, warmup_steps=-1, **settings)


def test_perceptual_loss_without_local_weights_fails_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lpips_vgg=None is not a file.*perceptual_weight=0"):
        TokenizerModule(TINY_VQ, perceptual_weight=1.0)
    with pytest.raises(FileNotFoundError, match="lpips_lin="):
        TokenizerModule(TINY_VQ, perceptual_weight=1.0, lpips_vgg=__file__, lpips_lin=str(tmp_path / "vgg.pth"))


# torchvision's vgg16().features: conv layer indices, and the ReLUs LPIPS reads (relu1_2 .. relu5_3)
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_POOLS_AFTER = (2, 7, 14, 21)  # a max-pool follows these convs' ReLUs
VGG_TAPS_AFTER = (2, 7, 14, 21, 28)


@pytest.fixture()
def lpips_files(tmp_path):
    """Random weights in the two published layouts (torchvision VGG16, lpips v0.1 vgg.pth)."""
    g = torch.Generator().manual_seed(0)
    vgg, channels = {}, 3
    widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    for index, width in zip(VGG_CONVS, widths):
        vgg[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=g) * (2 / (9 * channels)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.randn(width, generator=g) * 0.01
        channels = width
    vgg["classifier.0.weight"] = torch.zeros(1)  # ignored
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in
           enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    return tmp_path / "vgg16.pth", tmp_path / "vgg.pth", vgg, lin


def reference_lpips(x, y, vgg, lin):
    """LPIPS written out with functional ops over torchvision's layer indices."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(h):
        h, out = (h - shift) / scale, []
        for index in VGG_CONVS:
            h = torch.relu(torch.nn.functional.conv2d(h, vgg[f"features.{index}.weight"],
                                                      vgg[f"features.{index}.bias"], padding=1))
            if index in VGG_TAPS_AFTER:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
            if index in VGG_POOLS_AFTER:
                h = torch.nn.functional.max_pool2d(h, 2)
        return out

    return sum((lin[f"lin{k}.model.1.weight"] * (a - b) ** 2).sum(1).mean((1, 2))
               for k, (a, b) in enumerate(zip(taps(x), taps(y))))


def test_lpips_matches_a_functional_reference_and_is_zero_on_identical_images(lpips_files):
    from vqdiffusion.models.lpips import LPIPS

    vgg_path, lin_path, vgg, lin = lpips_files
    lpips = LPIPS.from_files(vgg_path, lin_path)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    torch.testing.assert_close(lpips(x, y), reference_lpips(x, y, vgg, lin), rtol=1e-4, atol=1e-6)
    assert torch.all(lpips(x, x) == 0)
    assert torch.all(lpips(x, y) > 0)


def test_perceptual_term_enters_the_tokenizer_loss_and_trains_only_the_autoencoder(lpips_files):
    vgg_path, lin_path, _, _ = lpips_files
    plain = TokenizerModule(TINY_VQ, optimizer=ADAM)
    module = TokenizerModule(TINY_VQ, optimizer=ADAM, perceptual_weight=0.5, lpips_vgg=str(vgg_path),
                             lpips_lin=str(lin_path))
    plain.vqvae.load_state_dict(module.vqvae.state_dict())  # the same autoencoder, with and without LPIPS
    for m in (plain, module):
        m.log = m.log_dict = lambda *a, **k: None
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, _, _ = module.vqvae(images)
    expected_extra = 0.5 * module.lpips(recon, images).mean()
    loss = module.training_step({"image": images}, 0)
    torch.testing.assert_close(loss - plain.training_step({"image": images}, 0), expected_extra)
    loss.backward()
    assert all(p.grad is None for p in module.lpips.parameters())
    optimised = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.lpips.parameters()}


def test_tokenizer_stage_on_token_only_batches_says_what_is_wrong():
    module = TokenizerModule(TINY_VQ, optimizer=ADAM)
    with pytest.raises(ValueError, match="needs images, but these batches hold only tokens"):
        module.training_step({"tokens": torch.zeros(2, 8, 8, dtype=torch.long)}, 0)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_dead_codes_restart_once_per_optimizer_step_under_accumulation(accumulate, monkeypatch):
    """Every step restarts here (every=1, every code below the threshold); over the batches
    accumulated into one step the step count stands still, and a restart on each of them would
    replace the codes again before the step that uses them."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    module = TokenizerModule(TINY_VQ, optimizer=ADAM, restart_dead_codes_every=1, dead_code_threshold=1e9)
    restarts = []
    restart = module._restart_dead_codes
    monkeypatch.setattr(module, "_restart_dead_codes", lambda images: (restarts.append(1), restart(images)))
    images = [{"image": torch.rand(2, 3, 32, 32) * 2 - 1} for _ in range(3 * accumulate)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(images, batch_size=None))
    assert trainer.global_step == 3 and len(restarts) == 3


def test_tokenizer_cosine_schedule_warms_up_and_ends_at_a_tenth_of_the_peak():
    import pytorch_lightning as pl

    torch.manual_seed(0)
    module = TokenizerModule(TINY_VQ, optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                             lr_scheduler=functools.partial(schedules.cosine, warmup_steps=2, max_steps=6),
                             restart_dead_codes_every=0)
    seen = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    images = [{"image": torch.rand(2, 3, 32, 32) * 2 - 1} for _ in range(6)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, callbacks=[RecordLR()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(images, batch_size=None))
    # warm-up 1/2, 2/2 of the peak, then cosine over the 4 remaining steps down towards 0.1
    expected = [5e-4, 1e-3] + [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * k / 4))) for k in range(4)]
    torch.testing.assert_close(torch.tensor(seen), torch.tensor(expected), rtol=1e-6, atol=0)


def test_the_tokenizer_refuses_the_loss_watching_schedule():
    with pytest.raises(ValueError, match="plateau LR schedule watches the diffusion loss"):
        TokenizerModule(TINY_VQ, lr_scheduler=functools.partial(schedules.plateau, warmup_steps=0,
                                                                                 patience=3))


class _Identity(torch.nn.Module):
    """A stand-in tokenizer whose codes are the pixels: decode(encode(x)) == x."""

    def __init__(self, blank: bool = False) -> None:
        super().__init__()
        self.weight, self.blank = torch.nn.Parameter(torch.zeros(())), blank

    def encode(self, images):
        return images

    def decode(self, codes):
        return torch.full_like(codes, -1.0) if self.blank else codes


def test_reconstruction_faithfulness_is_the_analyzer_on_decoded_images():
    from vqdiffusion.data.shapes import ShapesDataset
    from vqdiffusion.tasks.training import reconstruction_faithfulness

    shapes = ShapesDataset(32, length=40, seed=3, two_object_share=0.5)
    # the dataset's own images pass (after the uint8 round trip), black images never do
    assert reconstruction_faithfulness(_Identity(), shapes, count=40, batch_size=16) == 1.0
    assert reconstruction_faithfulness(_Identity(blank=True), shapes, count=40) == 0.0
    # datasets without an analyzer have no ceiling to report
    assert reconstruction_faithfulness(_Identity(), [{"image": torch.zeros(3, 32, 32)}]) is None
    assert reconstruction_faithfulness(_Identity(), None) is None


def test_reconstruction_faithfulness_counts_each_failure():
    from vqdiffusion.data.shapes import ShapesDataset
    from vqdiffusion.tasks.training import reconstruction_faithfulness

    class EveryOtherBlank(_Identity):
        def decode(self, codes):  # blanks the odd images of each batch
            out = codes.clone()
            out[1::2] = -1.0
            return out

    shapes = ShapesDataset(32, length=10, seed=4, two_object_share=0.0)
    assert reconstruction_faithfulness(EveryOtherBlank(), shapes, count=10, batch_size=10) == 0.5
    assert reconstruction_faithfulness(EveryOtherBlank(), shapes, count=5, batch_size=10) == 0.6
