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

from ..ops.fused_linear import fused_linear_available, linear_add, linear_gelu2

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
        # (T, 2D) scale and shift of every timestep, set by tabulate() for sampling; not saved, and
        # dropped when new weights are loaded (it would describe the old ones)
        self.register_buffer("table", None, persistent=False)
        self.register_load_state_dict_post_hook(_drop_table)

    @torch.no_grad()
    def tabulate(self) -> None:
        """Compute the scale and shift of every timestep once (inference: the weights are final).
        Without a class embedding they depend on the timestep alone, so each step then reads its
        row instead of running the embedding, SiLU and linear again."""
        self.table = self.linear(self.silu(self.emb.weight))

    def modulation(self, timestep: torch.Tensor, extra: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep (B,) long, extra (B, D) or None -> scale, shift (B, D) each."""
        if self.table is not None and extra is None and not self.training:
            return self.table[timestep].chunk(2, dim=-1)
        emb = self.emb(timestep)  # (B, D)
        if extra is not None:
            emb = emb + extra
        return self.linear(self.silu(emb)).chunk(2, dim=-1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D); timestep (B,) long; extra (B, D) added to the timestep embedding or None."""
        scale, shift = self.modulation(timestep, extra)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


def _drop_table(module: AdaLayerNorm, incompatible_keys) -> None:
    module.table = None


class Attention(nn.Module):
    """Multi-head attention through PyTorch SDPA (flash / cuDNN / memory-efficient kernels).

    Self-attention's q/k/v are one (D -> 3D) matmul instead of three wherever that pays: in
    training over the three weights stacked on every call (their gradients reach ``to_q/k/v`` as
    they are), and for inference over a stacked copy made once by :meth:`fuse_qkv`.
    Cross-attention can take its keys and values precomputed (:meth:`keys_values`), since the
    text does not change across the steps of a sampling run.
    """

    # One wide matmul fills the GPU better than three narrow ones, and its backward is one
    # input-gradient matmul instead of three plus two adds. bench/train_mfu.py --no-stacked-qkv
    # turns it off to measure it.
    stack_qkv_in_training: bool = True

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, bias: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        kv_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.to_qkv: nn.Module | None = None  # set by fuse_qkv (inference only; not saved)
        self.register_state_dict_post_hook(_drop_fused_keys)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H * d) -> (B, H, L, d)."""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of ``context`` (B, L, C): two (B, H, L, d)."""
        return self._heads(self.to_k(context)), self._heads(self.to_v(context))

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """One (D -> 3 * inner) projection for self-attention; ``to_q/k/v`` become views of it, so
        the saved weights and their names do not change. For inference: the module is frozen."""
        if self.to_qkv is not None:
            return
        projections = (self.to_q, self.to_k, self.to_v)
        fused = nn.Linear(self.to_q.in_features, 3 * self.to_q.out_features, bias=self.to_q.bias is not None,
                          device=self.to_q.weight.device, dtype=self.to_q.weight.dtype)
        fused.weight.copy_(torch.cat([p.weight for p in projections]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in projections]))
        for index, projection in enumerate(projections):
            rows = slice(index * projection.out_features, (index + 1) * projection.out_features)
            projection.weight = nn.Parameter(fused.weight[rows], requires_grad=False)
            if projection.bias is not None:
                projection.bias = nn.Parameter(fused.bias[rows], requires_grad=False)
        self.to_qkv = fused.requires_grad_(False)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D); context (B, L, C), or its precomputed ``keys_values``, or neither for
        self-attention -> (B, N, D), plus ``residual`` (B, N, D) if given (added inside the output
        projection's kernel where it can be: inference, see ``TransformerBlock``)."""
        if keys_values is not None:
            q, (k, v) = self._heads(self.to_q(x)), keys_values
        elif context is None and self.to_qkv is not None and not self.training:
            q, k, v = self._split_qkv(self.to_qkv(x))
        elif context is None and self.training and self.stack_qkv_in_training:
            q, k, v = self._split_qkv(self._stacked_qkv(x))
        else:
            source = x if context is None else context
            q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(source)), self._heads(self.to_v(source))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out[0](out) if residual is None else linear_add(out, self.to_out[0], residual)

    def _stacked_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> (B, N, 3 * inner): q, k and v from one matmul over the stacked weights."""
        projections = (self.to_q, self.to_k, self.to_v)
        weight = torch.cat([p.weight for p in projections])
        bias = None if self.to_q.bias is None else torch.cat([p.bias for p in projections])
        # the projections' own matmul (FP8 training linears have one) on the stacked weights
        return getattr(self.to_q, "linear_function", F.linear)(x, weight, bias)

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, 3 * inner) -> q, k, v, each (B, H, N, d)."""
        qkv = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.heads, -1)  # (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v


def _drop_fused_keys(module, state_dict, prefix, local_metadata) -> None:
    # the fused projection is a view of to_q/k/v: saved weights keep diffusers' names only
    for key in [k for k in state_dict if k.startswith(prefix + "to_qkv.")]:
        del state_dict[key]


def gelu2(h: torch.Tensor) -> torch.Tensor:
    """GELU2 of the original code, ``h * sigmoid(1.702 h)`` (diffusers' "geglu-approximate")."""
    return h * torch.sigmoid(1.702 * h)


class GatedOrPlainProjection(nn.Module):
    """The MLP's first layer and activation, named like diffusers (``ff.net.0.proj``)."""

    def __init__(self, dim: int, inner: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        gated = activation == "geglu"
        self.proj = nn.Linear(dim, inner * 2 if gated else inner)
        self.fused_kernel = False  # GELU2 in the matmul's epilogue (CUDA, Triton): fuse_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_kernel and fused_linear_available(x, self.proj):
            return linear_gelu2(x, self.proj.weight, self.proj.bias)
        x = self.proj(x)
        if self.activation == "geglu":
            x, gate = x.chunk(2, dim=-1)
            return x * F.gelu(gate)
        if self.activation == "geglu-approximate":
            return gelu2(x)
        return F.gelu(x, approximate="tanh" if self.activation == "gelu-approximate" else "none")


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, activation: str, dropout: float) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList(
            [GatedOrPlainProjection(dim, inner, activation), nn.Dropout(dropout), nn.Linear(inner, dim)]
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D), plus ``residual`` (B, N, D) if given (inside the second
        linear's kernel where it can be)."""
        first, dropout, second = self.net
        hidden = dropout(first(x))
        return second(hidden) if residual is None else linear_add(hidden, second, residual)


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
        # inference: each residual add inside the projection before it (fuse_residual())
        self.residual_in_projection = False

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | None,
        extra: torch.Tensor | None,
        keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.residual_in_projection and not self.training:
            # the same sums (dropout is the identity here), each added on the projection's accumulator
            x = self.attn1(self.norm1(x, timestep, extra), residual=x)
            if self.has_cross_attention:
                x = self.attn2(self.norm2(x, timestep, extra), context, keys_values, residual=x)
            return self.ff(self.norm3(x), residual=x)
        x = x + self.dropout(self.attn1(self.norm1(x, timestep, extra)))
        if self.has_cross_attention:
            x = x + self.dropout(self.attn2(self.norm2(x, timestep, extra), context, keys_values))
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
        # Under autocast the residual stream stays float32 by default: each block's bf16 output is
        # added to it in float32. True carries it in bf16 instead under bf16 autocast, which halves
        # the bytes every LayerNorm, residual add and their gradients move (Megatron-LM's default,
        # fp32_residual_connection=False); LayerNorm still computes in float32. fp16 autocast keeps
        # the float32 stream: a residual sum over many blocks can pass fp16's 65504. Not saved.
        self.residual_in_autocast_dtype = False

    def carries_bf16_stream(self, device_type: str) -> bool:
        """Whether this forward carries the residual stream in bf16 (asked for, under bf16 autocast)."""
        return (self.residual_in_autocast_dtype and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.bfloat16)

    @property
    def null_class(self) -> int | None:
        return self.config.num_classes

    def context_keys_values(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's cross-attention keys and values of ``context`` (B, L, C), to pass as
        ``forward(..., context_kv=...)`` at each step of a sampling run (the text is fixed)."""
        if self.config.context_dim is None:
            raise ValueError("this transformer has no cross-attention")
        return [block.attn2.keys_values(context) for block in self.transformer_blocks]

    def fuse_qkv(self) -> VQDiffusionTransformer:
        """Fuse every self-attention's q/k/v projections (inference; see ``Attention.fuse_qkv``)."""
        self.eval().requires_grad_(False)
        for block in self.transformer_blocks:
            block.attn1.fuse_qkv()
        return self

    def fuse_activation(self) -> int:
        """The MLPs' GELU2 computed inside their first matmul (one Triton kernel, CUDA bf16/fp16;
        elsewhere, and for FP8 linears, the unfused path serves). Returns how many MLPs take it:
        none for the other activations. For inference: the kernel has no backward, so the model is frozen."""
        self.eval().requires_grad_(False)
        fused = 0
        for block in self.transformer_blocks:
            projection = block.ff.net[0]
            projection.fused_kernel = projection.activation == "geglu-approximate"
            fused += projection.fused_kernel
        return fused

    def fuse_residual(self) -> int:
        """Every block's three residual adds computed inside the projection before them (the
        attention outputs and the MLP's second linear: one Triton kernel each on CUDA bf16/fp16;
        elsewhere, and for FP8 linears, the linear then the add). Returns the number of blocks. For
        inference: the kernel has no backward, so the model is frozen."""
        self.eval().requires_grad_(False)
        for block in self.transformer_blocks:
            block.residual_in_projection = True
        return len(self.transformer_blocks)

    def tabulate_modulation(self) -> VQDiffusionTransformer:
        """Every AdaLN's scale and shift per timestep computed once (inference; see
        ``AdaLayerNorm.tabulate``). Class-conditional models keep computing theirs, which depend
        on the class too. Loading weights afterwards drops the tables (tabulate again then)."""
        self.eval().requires_grad_(False)
        if self.config.num_classes is None:
            for module in self.modules():
                if isinstance(module, AdaLayerNorm):
                    module.tabulate()
        return self

    def forward(
        self,
        x_t: torch.Tensor,
        timestep: torch.Tensor | int,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        return_logits: bool = False,
    ) -> torch.Tensor:
        """Log-probabilities of the clean codes.

        Args:
            x_t: (B, N) long tokens in ``0..K`` (K = [MASK]).
            timestep: (B,) or scalar long, model timesteps ``0..T-1`` (paper t - 1).
            context: (B, L, context_dim) text embeddings, for cross-attention models.
            class_labels: (B,) long in ``0..C`` (C = null class), for class-conditional models.
            context_kv: instead of ``context``, its per-block keys and values
                (:meth:`context_keys_values`).
            return_logits: return the unnormalised scores instead, in the compute dtype (bf16
                under autocast): what the training loss takes, so that it can fuse the float32
                cast and the normalisation into its own math rather than read a float32 copy.
        Returns:
            (B, K, N) float32 log p(x0 | x_t), or with ``return_logits`` its logits (a
            transposed view of a (B, N, K) tensor).
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
        if self.config.context_dim is not None and context is None and context_kv is None:
            raise ValueError("this transformer cross-attends to text: pass context (B, L, C)")

        h = self.latent_image_embedding(x_t)  # (B, N, D)
        if self.carries_bf16_stream(h.device.type):
            h = h.to(torch.bfloat16)
        for index, block in enumerate(self.transformer_blocks):
            keys_values = None if context_kv is None else context_kv[index]
            if self.config.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, timestep, context, extra, keys_values, use_reentrant=False)
            else:
                h = block(h, timestep, context, extra, keys_values)
        logits = self.out(self.norm_out(h))  # (B, N, K)
        if return_logits:
            return logits.transpose(1, 2)
        return F.log_softmax(logits.float(), dim=-1).transpose(1, 2)  # (B, K, N)
