"""Image grids and atomic PNG writes."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write_bytes

__all__ = ["indexed_png", "labelled_rows", "make_grid", "pad_row", "save_png", "signed_to_pil", "to_pil"]


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


def pad_row(images: list[Image.Image], length: int, like: Image.Image | None = None) -> list[Image.Image]:
    """A grid row of ``length`` tiles: ``images``, then black tiles of their size (or ``like``'s)."""
    like = images[0] if images else like
    return images + [Image.new(like.mode, like.size)] * (length - len(images))


def labelled_rows(rows: list[tuple[str, list[Image.Image]]], padding: int = 2, max_chars: int = 48) -> Image.Image:
    """One row of equally sized images per label, the label written to the left of its row
    (cut to ``max_chars``): e.g. each prompt of a text-to-image job beside its samples."""
    if not rows or not any(images for _, images in rows):
        raise ValueError("labelled_rows needs at least one row with an image")
    font = ImageFont.load_default()
    labels = [label if len(label) <= max_chars else label[: max_chars - 1] + "…" for label, _ in rows]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(int(draw.textlength(label, font=font)) for label in labels) + 2 * padding
    columns = max(len(images) for _, images in rows)
    like = next(images for _, images in rows if images)[0]
    tiles = make_grid([tile for _, images in rows for tile in pad_row(images, columns, like)], columns, padding)
    grid = Image.new("RGB", (text_width + tiles.width, tiles.height))
    grid.paste(tiles, (text_width - padding, 0))
    draw = ImageDraw.Draw(grid)
    row_height = (tiles.height - padding) // len(rows)
    for r, label in enumerate(labels):
        draw.text((padding, padding + r * row_height + (row_height - padding) // 2), label, fill=(255, 255, 255),
                  font=font, anchor="lm")
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
