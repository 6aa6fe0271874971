"""The denoising transformer: tokens x_t and a time t (and a condition) -> log p(x0 | x_t).

Block (SPEC §7): AdaLN -> self-attention -> AdaLN -> cross-attention -> LayerNorm -> MLP, the
timestep entering each AdaLN through embedding -> SiLU -> Linear -> (scale, shift). Unlike
diffusers' Transformer2DModel, every sample of a batch may have its own timestep, which training
needs. Parameter names follow diffusers' discrete Transformer2DModel, so its weights load as they
are (``convert.py`` documents the mapping of the original checkpoints onto these names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TransformerConfig", "VQDiffusionTransformer", "ACTIVATIONS"]

ACTIVATIONS = ("geglu", "geglu-approximate", "gelu", "gelu-approximate")


@dataclass
class TransformerConfig:
    num_embeds: int  # K: number of codes; inputs have K+1 classes ([MASK] = K), outputs K
    height: int = 32  # token grid
    width: int = 32
    num_layers: int = 19
    num_heads: int = 16
    head_dim: int = 64  # width = num_heads * head_dim
    context_dim: int | None = 512  # text embedding width for cross-attention; None: no cross-attention
    num_classes: int | None = None  # class-conditional: classes 0..C-1, class C is the null class
    num_timesteps: int = 100  # size of the AdaLN timestep embedding table (T)
    activation: str = "geglu-approximate"  # "geglu-approximate" is the original GELU2 MLP
    mlp_ratio: int = 4
    attention_bias: bool = True
    dropout: float = 0.0
    gradient_checkpointing: bool = False
    extra: dict = field(default_factory=dict)  # free-form metadata kept with the weights

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("num_embeds", "height", "width", "num_layers", "num_heads", "head_dim", "num_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def width_model(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    def to_dict(self) -> dict:
        return asdict(self)


class AdaLayerNorm(nn.Module):
    """LayerNorm (no affine) scaled and shifted by a timestep (+ class) embedding."""

    def __init__(self, dim: int, num_timesteps: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_timesteps, dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D); timestep (B,) long; extra (B, D) added to the timestep embedding or None."""
        emb = self.emb(timestep)  # (B, D)
        if extra is not None:
            emb = emb + extra
        scale, shift = self.linear(self.silu(emb)).chunk(2, dim=-1)  # (B, D) each
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention through PyTorch SDPA (flash / cuDNN / memory-efficient kernels)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, bias: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        kv_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), context (B, L, C) or None for self-attention -> (B, N, D)."""
        context = x if context is None else context
        batch = x.shape[0]
        q, k, v = (
            proj(src).view(batch, -1, self.heads, proj.out_features // self.heads).transpose(1, 2)
            for proj, src in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )  # (B, H, N|L, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(batch, -1, q.shape[1] * q.shape[3])
        return self.to_out[0](out)


class GatedOrPlainProjection(nn.Module):
    """The MLP's first layer and activation, named like diffusers (``ff.net.0.proj``)."""

    def __init__(self, dim: int, inner: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        gated = activation == "geglu"
        self.proj = nn.Linear(dim, inner * 2 if gated else inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.activation == "geglu":
            x, gate = x.chunk(2, dim=-1)
            return x * F.gelu(gate)
        if self.activation == "geglu-approximate":  # GELU2 of the original code: x * sigmoid(1.702 x)
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x, approximate="tanh" if self.activation == "gelu-approximate" else "none")


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, activation: str, dropout: float) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList(
            [GatedOrPlainProjection(dim, inner, activation), nn.Dropout(dropout), nn.Linear(inner, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        dim, heads, head_dim = config.width_model, config.num_heads, config.head_dim
        self.norm1 = AdaLayerNorm(dim, config.num_timesteps)
        self.attn1 = Attention(dim, heads, head_dim, None, config.attention_bias)
        self.has_cross_attention = config.context_dim is not None
        if self.has_cross_attention:
            self.norm2 = AdaLayerNorm(dim, config.num_timesteps)
            self.attn2 = Attention(dim, heads, head_dim, config.context_dim, config.attention_bias)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, config.mlp_ratio, config.activation, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | None,
        extra: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn1(self.norm1(x, timestep, extra)))
        if self.has_cross_attention:
            x = x + self.dropout(self.attn2(self.norm2(x, timestep, extra), context))
        return x + self.dropout(self.ff(self.norm3(x)))


class LatentImageEmbedding(nn.Module):
    """Code embedding + separate row and column position embeddings (diffusers' naming)."""

    def __init__(self, num_classes: int, dim: int, height: int, width: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_classes, dim)
        self.height_emb = nn.Embedding(height, dim)
        self.width_emb = nn.Embedding(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N) long -> (B, N, D)."""
        rows = self.height_emb.weight[:, None, :]  # (h, 1, D)
        cols = self.width_emb.weight[None, :, :]  # (1, w, D)
        position = (rows + cols).reshape(1, -1, rows.shape[-1])  # (1, N, D)
        return self.emb(x) + position[:, : x.shape[1]]


class VQDiffusionTransformer(nn.Module):
    """p(x0 | x_t, t, condition) over a grid of K-way tokens with a [MASK] class."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.width_model
        self.latent_image_embedding = LatentImageEmbedding(
            config.num_embeds + 1, dim, config.height, config.width
        )
        if config.num_classes is not None:
            self.class_embedding = nn.Embedding(config.num_classes + 1, dim)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, config.num_embeds)

    @property
    def null_class(self) -> int | None:
        return self.config.num_classes

    def forward(
        self,
        x_t: torch.Tensor,
        timestep: torch.Tensor | int,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probabilities of the clean codes.

        Args:
            x_t: (B, N) long tokens in ``0..K`` (K = [MASK]).
            timestep: (B,) or scalar long, model timesteps ``0..T-1`` (paper t - 1).
            context: (B, L, context_dim) text embeddings, for cross-attention models.
            class_labels: (B,) long in ``0..C`` (C = null class), for class-conditional models.
        Returns:
            (B, K, N) float32 log p(x0 | x_t).
        """
        batch = x_t.shape[0]
        timestep = torch.as_tensor(timestep, device=x_t.device).long()
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        extra = None
        if self.config.num_classes is not None:
            if class_labels is None:
                raise ValueError("this transformer is class-conditional: pass class_labels (B,)")
            extra = self.class_embedding(class_labels)  # (B, D)
        if self.config.context_dim is not None and context is None:
            raise ValueError("this transformer cross-attends to text: pass context (B, L, C)")

        h = self.latent_image_embedding(x_t)  # (B, N, D)
        for block in self.transformer_blocks:
            if self.config.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, timestep, context, extra, use_reentrant=False)
            else:
                h = block(h, timestep, context, extra)
        logits = self.out(self.norm_out(h))  # (B, N, K)
        return F.log_softmax(logits.float(), dim=-1).transpose(1, 2)  # (B, K, N)
