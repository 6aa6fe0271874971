"""Stage 1: the VQ-VAE tokenizer as a LightningModule (thin wiring over ``models.vqvae``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..models.discriminator import PatchDiscriminator, adaptive_weight, hinge_discriminator_loss
from ..models.lpips import LPIPS
from ..models.vqvae import VQVAE, VQVAEConfig
from ..utils.distributed import sum_over_ranks_, take_rank_zeros_
from ..utils.optim import built, make_optimizer, partial_record
from .schedules import watches_the_loss

__all__ = ["TokenizerModule"]


class TokenizerModule(pl.LightningModule):
    """Reconstruction (L1 + L2) + codebook/commitment loss, with dead-code restarts, and the
    optional VQGAN patch discriminator (hinge loss, adaptive weight, off before ``disc_start``).

    Logs reconstruction PSNR, the share of codes used and the code perplexity. The perceptual
    (LPIPS-VGG) loss needs two local weight files (``lpips_vgg``, ``lpips_lin``; see
    ``models/lpips.py``), which this module never downloads: asking for it without them fails
    with a message instead of silently training without it.

    ``optimizer(param_groups)`` builds the optimiser (a partial of ``torch.optim.Adam`` with its
    LR and betas in the config) and ``lr_scheduler(optimizer)`` its schedule (:mod:`.schedules`:
    ``constant``, or ``cosine``, whose decay ends a short run on sharper colours and edges; the
    loss-watching ``plateau`` is the diffusion stage's); None keeps the LR constant.

    The discriminator shares the optimiser with the autoencoder as a second parameter group
    (Adam is per parameter, so this equals two optimisers): one optimiser step per batch keeps
    ``global_step``, ``max_steps`` and gradient clipping meaning the same with or without it.
    The generator term sees the discriminator frozen; the discriminator term sees the
    reconstructions detached, so neither loss leaks into the other's parameters.
    """

    def __init__(
        self,
        vqvae: dict,
        optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[[torch.optim.Optimizer], dict] | None = None,
        l2_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        restart_dead_codes_every: int = 200,
        dead_code_threshold: float = 1.0,
        disc_weight: float = 0.0,
        disc_start: int = 0,
        disc_lr: float | None = None,
        disc_layers: int = 3,
        lpips_vgg: str | None = None,
        lpips_lin: str | None = None,
    ) -> None:
        super().__init__()
        self.make_optimizer, self.make_lr_scheduler = built(optimizer), built(lr_scheduler)
        if watches_the_loss(self.make_lr_scheduler):
            raise ValueError("the plateau LR schedule watches the diffusion loss: the tokenizer takes constant or "
                             "cosine")
        # save_hyperparameters reads the arguments from this frame: rebound to plain records
        optimizer, lr_scheduler = partial_record(self.make_optimizer), partial_record(self.make_lr_scheduler)
        self.save_hyperparameters()
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        self.lpips = LPIPS.from_files(lpips_vgg, lpips_lin) if perceptual_weight > 0 else None
        if disc_weight < 0 or disc_start < 0:
            raise ValueError(f"disc_weight and disc_start must be >= 0, got {disc_weight} and {disc_start}")
        self.vqvae = VQVAE(VQVAEConfig(**vqvae))
        self.register_buffer("code_usage", torch.zeros(self.vqvae.num_codes))
        self.discriminator = (PatchDiscriminator(self.vqvae.config.out_channels, num_layers=disc_layers)
                              if disc_weight > 0 else None)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "image" not in batch:
            raise ValueError("the tokenizer stage needs images, but these batches hold only tokens "
                             "(shards made with keep_images=false): train it on an image dataset")
        images = batch["image"]
        recon, quant_loss, codes = self.vqvae(images)
        l1 = (recon - images).abs().mean()
        l2 = F.mse_loss(recon, images)
        rec_loss = l1 + self.hparams.l2_weight * l2
        if self.lpips is not None:
            perceptual = self.lpips(recon, images).mean()
            rec_loss = rec_loss + self.hparams.perceptual_weight * perceptual
            self.log("tokenizer/lpips", perceptual)
        loss = rec_loss + quant_loss
        if self.discriminator is not None:
            loss = loss + self._adversarial_terms(images, recon, rec_loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite tokenizer loss at step {self.global_step} (l1={l1.item()}, "
                                     f"quant_loss={quant_loss.item()}): lower tokenizer_training.optimizer.lr")
        # over every DDP rank's batch: the ranks must agree on which codes are dead
        usage = sum_over_ranks_(torch.bincount(codes.flatten(), minlength=self.vqvae.num_codes).float())
        self.code_usage.mul_(0.99).add_(usage)
        probs = usage / usage.sum()
        perplexity = torch.exp(-(probs * probs.clamp_min(1e-10).log()).sum())
        self.log_dict({
            "tokenizer/loss": loss, "tokenizer/l1": l1, "tokenizer/quant_loss": quant_loss,
            "tokenizer/psnr": _psnr(l2), "tokenizer/perplexity": perplexity,
            "tokenizer/codes_used": (usage > 0).float().mean(),
        }, prog_bar=True)
        every = self.hparams.restart_dead_codes_every
        accumulate = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        # once per optimiser step (the step count stays put over the batches accumulated into one)
        if every and (self.global_step + 1) % every == 0 and batch_idx % accumulate == 0:
            self._restart_dead_codes(images)
        return loss

    def _adversarial_terms(self, images: torch.Tensor, recon: torch.Tensor, rec_loss: torch.Tensor) -> torch.Tensor:
        """Generator hinge term (adaptively weighted) + discriminator hinge loss, 0 before disc_start."""
        hp = self.hparams
        active = float(self.global_step >= hp.disc_start)
        self.discriminator.requires_grad_(False)
        generator_loss = -self.discriminator(recon).mean()
        self.discriminator.requires_grad_(True)
        if active and self.training:
            weight = adaptive_weight(rec_loss, generator_loss, self.vqvae.decoder.conv_out.weight) * hp.disc_weight
        else:
            weight = torch.zeros((), device=recon.device)
        disc_loss = hinge_discriminator_loss(self.discriminator(images), self.discriminator(recon.detach()))
        self.log_dict({"tokenizer/generator_loss": generator_loss, "tokenizer/disc_loss": disc_loss,
                       "tokenizer/adaptive_weight": weight})
        # Before disc_start both terms still enter (times 0), so DDP sees every parameter used.
        return weight * generator_loss + active * disc_loss

    @torch.no_grad()
    def _restart_dead_codes(self, images: torch.Tensor) -> None:
        """Move rarely used codes onto random encoder outputs of the current batch."""
        dead = self.code_usage < self.hparams.dead_code_threshold
        count = int(dead.sum())
        if count == 0:
            return
        latents = self.vqvae.encode_latents(images)  # (B, C, h, w)
        pool = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        choice = torch.randint(len(pool), (count,), device=pool.device)
        # rank 0's picks on every rank (each rank draws from its own batch; the dead set, from
        # usage summed over the ranks, is the same everywhere, so the shapes agree)
        fresh = take_rank_zeros_(pool[choice].to(self.vqvae.quantize.embedding.weight.dtype))
        self.vqvae.quantize.embedding.weight[dead] = fresh
        if self.vqvae.quantize.ema_decay is not None:
            self.vqvae.quantize.ema_sum[dead] = fresh
            self.vqvae.quantize.ema_count[dead] = 1.0
        self.code_usage[dead] = self.hparams.dead_code_threshold
        self.log("tokenizer/restarted_codes", float(count))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        recon, _, _ = self.vqvae(images)
        self.log("val/tokenizer_psnr", _psnr(F.mse_loss(recon, images)), prog_bar=True, sync_dist=True)
        if batch_idx == 0:
            self.example = torch.cat([images[:8], recon[:8].clamp(-1, 1)])

    def configure_optimizers(self):
        if self.make_optimizer is None:
            raise ValueError("TokenizerModule needs optimizer= to train, e.g. functools.partial(torch.optim.Adam, "
                             "lr=2e-4, betas=(0.5, 0.9)) (train.py builds it from tokenizer_training.optimizer)")
        groups = [{"params": [p for p in self.vqvae.parameters() if p.requires_grad]}]
        if self.discriminator is not None:
            disc_lr = {"lr": self.hparams.disc_lr} if self.hparams.disc_lr is not None else {}
            groups.append({"params": list(self.discriminator.parameters()), **disc_lr})
        optimizer = make_optimizer(self.make_optimizer, groups)
        if self.make_lr_scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": self.make_lr_scheduler(optimizer)}


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10)) if torch.is_tensor(mse) else 10 * math.log10(4.0 / mse)
