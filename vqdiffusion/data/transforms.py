"""Image decoding and the standard augmentations, without torchvision (PIL + torch only)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "ImageTransform", "open_rgb"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CROPS = ("center", "random")


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """An RGB PIL image from a path or encoded bytes; fully decoded here, so a truncated file
    fails now (inside the skip-and-count guard) and not later in a collate."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    if image.mode.startswith("I"):
        # 16-bit grey (PNG): PIL's convert("RGB") clips every value above 255 to white instead of
        # scaling; integer images whose values exceed 8 bits are taken as 16-bit
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels (clip-art, emoji) go on black like the shapes dataset, not on noise.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


class ImageTransform:
    """Resize the shorter side to ``size`` (bicubic), crop ``size``×``size``, optionally flip.

    Returns (3, size, size) float32 in [-1, 1]. ``crop="random"`` and ``flip`` draw from
    Python's ``random`` (Lightning seeds it per worker), so they vary between epochs.
    """

    def __init__(self, size: int, crop: str = "center", flip: bool = False) -> None:
        if size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.size, self.crop, self.flip = size, crop, flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.size / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        if self.crop == "random":
            left, top = random.randint(0, new_w - self.size), random.randint(0, new_h - self.size)
        else:
            left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip and random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
