"""Image grids and atomic PNG writes."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from PIL import Image

from .atomic import atomic_write_bytes

__all__ = ["indexed_png", "make_grid", "save_png", "signed_to_pil", "to_pil"]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images (rounded like diffusers' ``numpy_to_pil``)."""
    array = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((image * 255).round().astype("uint8")) for image in array]


def signed_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] (dataset images, decoder outputs; clamped) -> PIL images."""
    return to_pil((images.float() / 2 + 0.5).clamp(0, 1))


def make_grid(images: list[Image.Image], columns: int | None = None, padding: int = 2,
              scale: int = 1) -> Image.Image:
    """Tile equally sized images row by row on a black canvas (``scale`` enlarges nearest)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    w, h = w * scale, h * scale
    grid = Image.new("RGB", (columns * (w + padding) + padding, rows * (h + padding) + padding))
    for i, image in enumerate(images):
        if scale != 1:
            image = image.resize((w, h), Image.NEAREST)
        r, c = divmod(i, columns)
        grid.paste(image, (padding + c * (w + padding), padding + r * (h + padding)))
    return grid


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically (no half-written file is ever visible at ``path``)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def indexed_png(folder: str | os.PathLike, index: int) -> Path:
    """``folder/000042.png``: where a sample folder keeps image ``index`` (sample.py writes it,
    evaluation reads it)."""
    return Path(folder) / f"{index:06d}.png"
