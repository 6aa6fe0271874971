"""Matmul FLOPs of the denoising transformer at the paper sizes, counted from the shapes (the
numerator of every MFU in bench/RESULTS.md, for sampling and training alike)."""

from __future__ import annotations

SIZES = {  # SPEC §7: (layers, heads, head dim, codes, text width, text length)
    "ithq": (36, 16, 88, 4096, 512, 77),
    "coco": (19, 16, 64, 8192, 512, 77),
}


def forward_flops(size: str, batch: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward over ``batch`` sequences of 1024 tokens."""
    layers, heads, head_dim, codes, ctx_dim, ctx_len = SIZES[size]
    n, d = 1024, heads * head_dim
    per_layer = (2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # self-attention
                 + 2 * n * d * d + 2 * 2 * ctx_len * ctx_dim * d + 2 * 2 * n * ctx_len * d + 2 * n * d * d  # cross
                 + 2 * 2 * n * d * 4 * d)  # MLP
    return batch * (layers * per_layer + 2 * n * d * codes)
