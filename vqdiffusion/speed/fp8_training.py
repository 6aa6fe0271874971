"""FP8 matmuls for training: the blocks' per-token linears forward and backward on FP8 tensor cores.

Each of a linear's three matmuls (``y = x W^T``, ``dx = dy W``, ``dW = dy^T x``) quantises its two
operands to float8 e4m3 with one scale per row of the left operand and one per column of the right
one, i.e. along the dimension the matmul sums over, so one outlier token or channel flattens only
its own row. The parameters stay as they are (float32 masters, the same names and checkpoints);
only the products run in FP8. Recipes:

- ``rowwise``: all three matmuls in FP8.
- ``rowwise-wgrad-bf16``: the weight gradient (which sums over every token of the batch, where
  FP8 rounding accumulates most) in bf16; the forward and input-gradient matmuls in FP8.

Needs matrix sides that are multiples of 16 (what FP8 tensor cores take); other shapes run the
plain matmul. Runs anywhere ``torch._scaled_mm`` does (H100/H200, and slowly on the CPU, which the
tests use); fast only on the GPU and under ``torch.compile``, where each quantisation fuses into
the kernel producing its operand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import quantise

__all__ = ["FP8_TRAINING_RECIPES", "Float8TrainingLinear", "float8_linear", "to_float8_training"]

FP8_TRAINING_RECIPES = ("rowwise", "rowwise-wgrad-bf16")


def _column_major(q: torch.Tensor) -> torch.Tensor:
    """The same (R, C) matrix laid out column by column (what ``_scaled_mm``'s right operand needs)."""
    return q.t().contiguous().t()


def scaled_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                  fast_accumulation: bool = False) -> torch.Tensor:
    """``a @ b`` (a (M, K), b (K, N)) on FP8 tensor cores, bf16 out: a scaled per row, b per column."""
    a_q, a_scale = quantise(a, dim=1)  # (M, K), (M, 1)
    b_q, b_scale = quantise(b, dim=0)  # (K, N), (1, N)
    return torch._scaled_mm(a_q.contiguous(), _column_major(b_q), scale_a=a_scale, scale_b=b_scale, bias=bias,
                            out_dtype=torch.bfloat16, use_fast_accum=fast_accumulation)


class _Float8Matmul(torch.autograd.Function):
    """x (M, K), weight (N, K), bias (N,) or None -> x W^T + b (M, N) bf16; FP8 products both ways."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: str) -> torch.Tensor:
        # the rounding of the forward's sums is a small part of FP8's error (its inputs are already
        # rounded to 3 bits): the tensor cores' faster accumulation, as inference uses
        out = scaled_matmul(x, weight.t(), None if bias is None else bias.to(torch.bfloat16), fast_accumulation=True)
        ctx.save_for_backward(x.to(torch.bfloat16), weight)
        ctx.recipe, ctx.has_bias, ctx.x_dtype = recipe, bias is not None, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(torch.bfloat16)
        grad_x = scaled_matmul(grad_out, weight).to(ctx.x_dtype)  # (M, N) @ (N, K)
        # (N, M) @ (M, K)
        grad_weight = scaled_matmul(grad_out.t(), x) if ctx.recipe == "rowwise" else grad_out.t() @ x
        grad_bias = grad_out.float().sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_x, grad_weight.to(weight.dtype), grad_bias, None


def float8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  recipe: str = "rowwise") -> torch.Tensor:
    """``F.linear`` (x (..., K), weight (N, K)) with its forward and backward matmuls in FP8;
    the plain linear where a side is not a multiple of 16. Output (..., N) in the dtype the linear
    would give: autocast's, or else x's."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] % 16 or weight.shape[0] % 16 or weight.shape[1] % 16:
        return F.linear(x, weight, bias)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out = _Float8Matmul.apply(rows, weight, bias, recipe).to(dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


class Float8TrainingLinear(nn.Linear):
    """An ``nn.Linear`` whose matmuls run in FP8 (:func:`float8_linear`); same parameters, names
    and state dict as the linear it replaces."""

    recipe: str = "rowwise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_function(x, self.weight, self.bias)

    def linear_function(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's matmul on other weights (self-attention's q/k/v stacked into one)."""
        return float8_linear(x, weight, bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, FP8 matmuls ({self.recipe})"


# The blocks' per-token linears (as for FP8 inference): AdaLN's (B, D) linears, the embeddings, the
# cross-attention keys and values of the short text and the output head stay as they are.
_TRAINING_NAMES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0",
                   "ff.net.0.proj", "ff.net.2")


def to_float8_training(transformer: nn.Module, recipe: str = "rowwise") -> int:
    """Make the blocks' per-token linears run their matmuls in FP8 (in place: the same parameter
    objects, so an optimiser built before or after sees the same tensors); returns how many."""
    if recipe not in FP8_TRAINING_RECIPES:
        raise ValueError(f"FP8 training recipe must be one of {FP8_TRAINING_RECIPES}, got {recipe!r}")
    converted = 0
    for block in transformer.transformer_blocks:
        for name in _TRAINING_NAMES:
            try:
                linear = block.get_submodule(name)
            except AttributeError:  # no cross-attention (class and unconditional models)
                continue
            if type(linear) is nn.Linear:
                linear.__class__ = Float8TrainingLinear
            if isinstance(linear, Float8TrainingLinear):
                linear.recipe = recipe
                converted += 1
    return converted
