"""Stage 1: the VQ-VAE tokenizer as a LightningModule (thin wiring over ``models.vqvae``)."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..models.vqvae import VQVAE, VQVAEConfig

__all__ = ["TokenizerModule"]


class TokenizerModule(pl.LightningModule):
    """Reconstruction (L1 + L2) + codebook/commitment loss, with dead-code restarts.

    Logs reconstruction PSNR, the share of codes used and the code perplexity. A perceptual
    (LPIPS) loss needs VGG weights, which this module does not download: asking for one without
    them fails with a message instead of silently training without it.
    """

    def __init__(
        self,
        vqvae: dict,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        l2_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        restart_dead_codes_every: int = 200,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if perceptual_weight > 0:
            raise ValueError(
                "perceptual_weight > 0 needs LPIPS/VGG weights, which are not available offline here; "
                "set tokenizer_training.perceptual_weight=0"
            )
        self.vqvae = VQVAE(VQVAEConfig(**vqvae))
        self.register_buffer("code_usage", torch.zeros(self.vqvae.num_codes))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        recon, quant_loss, codes = self.vqvae(images)
        l1 = (recon - images).abs().mean()
        l2 = F.mse_loss(recon, images)
        loss = l1 + self.hparams.l2_weight * l2 + quant_loss
        usage = torch.bincount(codes.flatten(), minlength=self.vqvae.num_codes).float()
        self.code_usage.mul_(0.99).add_(usage)
        probs = usage / usage.sum()
        perplexity = torch.exp(-(probs * probs.clamp_min(1e-10).log()).sum())
        self.log_dict({
            "tokenizer/loss": loss, "tokenizer/l1": l1, "tokenizer/quant_loss": quant_loss,
            "tokenizer/psnr": _psnr(l2), "tokenizer/perplexity": perplexity,
            "tokenizer/codes_used": (usage > 0).float().mean(),
        }, prog_bar=True)
        every = self.hparams.restart_dead_codes_every
        if every and (self.global_step + 1) % every == 0:
            self._restart_dead_codes(images)
        return loss

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
        fresh = pool[choice].to(self.vqvae.quantize.embedding.weight.dtype)
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
        params = [p for p in self.vqvae.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas))


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10)) if torch.is_tensor(mse) else 10 * math.log10(4.0 / mse)
