"""FP8 matmuls for the denoising transformer's per-token linears (H100/H200 tensor cores)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["E4M3_MAX", "FP8_SCALINGS", "Float8Linear", "quantise", "require_fp8_tensor_cores", "to_float8"]

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


FP8_SCALINGS = ("row", "tensor")
FP8_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores


def quantise(t: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 e4m3 copy of a 2-D ``t`` scaled by its absolute maximum along ``dim`` (kept as size
    1), or over the whole tensor when ``dim`` is None (a 0-d scale), and that float32 scale:
    ``t ≈ q.float() * scale``."""
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = amax.float().clamp_min(1e-12) / E4M3_MAX
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def require_fp8_tensor_cores(device: torch.device | str, what: str) -> None:
    """Refuse ``what`` on a CUDA GPU without FP8 tensor cores, naming the GPU (elsewhere
    ``torch._scaled_mm`` fails deep inside the first matmul). Other devices pass: the CPU runs
    the same FP8 products, slowly, which the tests use."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        raise ValueError(f"{what} needs FP8 tensor cores (compute capability 8.9 or higher: H100, H200, L40, "
                         f"RTX 4090); {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")


class Float8Linear(nn.Module):
    """``y = x W^T + b`` with W stored as float8 (e4m3) and x quantised on the fly, multiplied by
    ``torch._scaled_mm`` on FP8 tensor cores (H100/H200) with bf16 output.

    ``scaling="row"``: one scale per output channel of W and per row (token) of x, so one outlier
    token or channel does not flatten the rest; under ``torch.compile`` the row scaling and cast of
    x fuse into the kernel before. ``scaling="tensor"``: one scale for all of W and one for all of
    x (cuBLAS's own FP8 kernels; x needs a whole-tensor max before its cast).
    """

    def __init__(self, linear: nn.Linear, scaling: str = "row") -> None:
        super().__init__()
        if scaling not in FP8_SCALINGS:
            raise ValueError(f"scaling must be one of {FP8_SCALINGS}, got {scaling!r}")
        self.in_features, self.out_features, self.scaling = linear.in_features, linear.out_features, scaling
        weight_fp8, scale = quantise(linear.weight.detach().float(), 1 if scaling == "row" else None)  # (out, 1) / ()
        self.register_buffer("weight_fp8", weight_fp8)  # (out, in)
        self.register_buffer("weight_scale", scale.t().contiguous() if scaling == "row" else scale)  # (1, out) / ()
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) bf16."""
        dim = 1 if self.scaling == "row" else None
        quantised, scale = quantise(x.reshape(-1, self.in_features), dim)  # scale (M, 1) / ()
        # bias in the matmul's epilogue; fast accumulation: the tensor cores' faster, less exact
        # FP8 accumulation (what FP8 inference libraries use; the products are already 3-bit)
        out = torch._scaled_mm(quantised, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn, {self.scaling} scales"


# The per-token matmuls of each block: attention projections and the MLP. AdaLN's (B, D) linears,
# the embeddings and the output head stay in bf16 (tiny, or where precision shows directly).
_FP8_NAMES = ("attn1.to_qkv", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
              "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def to_float8(transformer: nn.Module, scaling: str = "row") -> int:
    """Swap the blocks' per-token linears for :class:`Float8Linear` (in place); returns how many.
    With fused q/k/v only the fused projection is swapped (q/k/v stay as the saved views)."""
    swapped = 0
    for block in transformer.transformer_blocks:
        fused = getattr(block.attn1, "to_qkv", None) is not None
        for name in _FP8_NAMES:
            if fused and name in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
                continue
            try:
                linear = block.get_submodule(name)
            except AttributeError:  # unfused q/k/v, or no cross-attention (class and unconditional models)
                continue
            if not isinstance(linear, nn.Linear) or linear.in_features % 16 or linear.out_features % 16:
                continue  # already swapped, or sizes FP8 tensor cores cannot take (multiples of 16)
            block.set_submodule(name, Float8Linear(linear, scaling))
            swapped += 1
    return swapped
