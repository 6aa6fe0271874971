"""The VQ-VAE tokenizer: encoder -> nearest-code quantizer -> decoder.

Module and parameter names follow diffusers' ``VQModel`` (``encoder.down_blocks.0.resnets.0...``,
``quantize.embedding.weight``), so its folders load directly and ours load in diffusers. The
block types cover the layouts published for VQ-Diffusion: plain and attention down/up blocks (the
ITHQ VQ-VAE has attention at its lowest resolution), a mid block with attention, GroupNorm +
SiLU resnets. The quantizer can update its codebook by EMA (the ITHQ tokenizer does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.distributed import sum_over_ranks_

__all__ = ["VQVAEConfig", "VQVAE", "VectorQuantizer"]

DOWN_BLOCKS = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_BLOCKS = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")


@dataclass
class VQVAEConfig:
    """Field names are diffusers' VQModel config keys, so its config.json maps one to one."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 128, 256, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 256
    sample_size: int = 256
    num_vq_embeddings: int = 1024
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    mid_block_add_attention: bool = True
    ema_decay: float | None = None  # EMA codebook updates when set (e.g. 0.99); None: learned codebook
    commitment_beta: float = 0.25
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.block_out_channels = tuple(self.block_out_channels)
        if self.act_fn != "silu":
            raise ValueError(f"act_fn must be 'silu' (the only activation of published VQ-VAEs), got {self.act_fn!r}")
        for name, types, allowed in (
            ("down_block_types", self.down_block_types, DOWN_BLOCKS),
            ("up_block_types", self.up_block_types, UP_BLOCKS),
        ):
            unknown = [t for t in types if t not in allowed]
            if unknown:
                raise ValueError(f"{name} has unknown block types {unknown}; expected any of {allowed}")
            if len(types) != len(self.block_out_channels):
                raise ValueError(
                    f"{name} has {len(types)} entries but block_out_channels has {len(self.block_out_channels)}"
                )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not multiples of norm_num_groups={self.norm_num_groups}")

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim or self.latent_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            data[key] = list(data[key])
        return data


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(seq)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, HW, C)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as taming / diffusers


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionBlock(nn.Module):
    """Resnets (each optionally followed by attention), then an optional down/up-sampler."""

    def __init__(
        self, in_ch: int, out_ch: int, num_layers: int, groups: int, attention: bool, resample: str | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_layers)
        )
        if attention:
            self.attentions = nn.ModuleList(SpatialAttention(out_ch, groups) for _ in range(num_layers))
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(out_ch)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if attentions is not None:
                x = attentions[i](x)
        for sampler in (*getattr(self, "downsamplers", ()), *getattr(self, "upsamplers", ())):
            x = sampler(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialAttention(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        chans, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            last = i == len(chans) - 1
            self.down_blocks.append(ResolutionBlock(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, groups,
                attention=kind.startswith("Attn"), resample=None if last else "down",
            ))
        self.mid_block = MidBlock(chans[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = _group_norm(chans[-1], groups)
        self.conv_out = nn.Conv2d(chans[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        chans, groups = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.up_block_types):
            last = i == len(chans) - 1
            self.up_blocks.append(ResolutionBlock(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, groups,
                attention=kind.startswith("Attn"), resample=None if last else "up",
            ))
        self.conv_norm_out = _group_norm(chans[-1], groups)
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with a straight-through gradient.

    With ``ema_decay`` set, the codebook follows exponential moving averages of the assigned
    encoder outputs (no codebook loss); otherwise it is learned through the codebook loss.
    """

    def __init__(self, num_codes: int, dim: int, beta: float, ema_decay: float | None) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.ema_decay = num_codes, dim, beta, ema_decay
        self.embedding = nn.Embedding(num_codes, dim)
        self.embedding.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema_decay is not None:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> (B, h, w) nearest code indices."""
        # Distances in float32 even under autocast: bf16 would pick wrong neighbours.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()  # (B*h*w, C)
            book = self.embedding.weight.float()
            distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, C, h, w) code vectors."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, C, h, w) -> (quantised (B, C, h, w) with straight-through grads, loss, indices)."""
        indices = self.codes(z)
        quant = self.lookup(indices)
        commitment = F.mse_loss(z, quant.detach())
        if self.ema_decay is None:
            loss = F.mse_loss(quant, z.detach()) + self.beta * commitment
        else:
            loss = self.beta * commitment
            if self.training:
                self._ema_update(z.detach(), indices)
        return z + (quant - z).detach(), loss, indices

    @torch.no_grad()
    @torch.autocast(device_type="cuda", enabled=False)
    def _ema_update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        onehot = F.one_hot(indices.reshape(-1), self.num_codes).type_as(flat)  # (M, K)
        # (K, 1 + C): each code's count and sum of assigned vectors, over every DDP rank's batch in
        # one all-reduce, so that all ranks move the codebook alike (as one process with the
        # global batch would)
        statistics = sum_over_ranks_(torch.cat([onehot.sum(0)[:, None], onehot.t() @ flat], dim=1))
        decay = self.ema_decay
        self.ema_count.mul_(decay).add_(statistics[:, 0], alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(statistics[:, 1:], alpha=1 - decay)
        total = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (total + self.num_codes * 1e-5) * total  # Laplace smoothing
        self.embedding.weight.copy_(self.ema_sum / count[:, None])


class VQVAE(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) <-> code indices (B, H/f, W/f)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(
            config.num_vq_embeddings, config.embed_dim, config.commitment_beta, config.ema_decay
        )
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    @property
    def num_codes(self) -> int:
        return self.config.num_vq_embeddings

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-quantisation latents (B, C, h, w)."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, h, w) long code indices."""
        return self.quantize.codes(self.encode_latents(images))

    def decode_latents(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) code vectors -> (B, 3, H, W) images (unclamped, ~[-1, 1])."""
        return self.decoder(self.post_quant_conv(quant))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long code indices -> (B, 3, H, W) images (unclamped, ~[-1, 1])."""
        if indices.min() < 0 or indices.max() >= self.num_codes:
            raise ValueError(f"code indices must be in [0, {self.num_codes - 1}], got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.decode_latents(self.quantize.lookup(indices))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (B, 3, H, W), quantiser loss (scalar), indices (B, h, w)."""
        quant, loss, indices = self.quantize(self.encode_latents(images))
        return self.decode_latents(quant), loss, indices
