"""LPIPS (Zhang et al. 2018, VGG variant) as the tokenizer's perceptual loss, from local weights.

Two files are needed, neither downloaded here:
- the VGG16 ImageNet weights in torchvision's layout (``vgg16-397923af.pth``; keys
  ``features.N.weight``/``bias``; the classifier keys are ignored), and
- LPIPS's learned channel weights for VGG (``lpips/weights/v0.1/vgg.pth`` of the ``lpips``
  package; keys ``linK.model.1.weight``, K = 0..4).

The VGG trunk is built here (no torchvision): 13 3x3 convolutions in five blocks; LPIPS reads
the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3. The distance between images x, y
in [-1, 1] is, summed over those five layers, the spatial mean of ``w_k . (f_k(x)/|f_k(x)| -
f_k(y)/|f_k(y)|)^2``, with the features unit-normalised over channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# VGG16 "D": channels per conv, "M" = 2x2 max-pool; LPIPS taps the ReLU before each pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2 .. relu5_3 in torchvision's vgg16().features
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input scaling: images in [-1, 1] mapped to ImageNet-normalised inputs
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` layout (same indices, so its state dict loads)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance: ``forward(x, y)`` with (B, 3, H, W) images in [-1, 1] -> (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> LPIPS:
        """Load the two weight files (see the module docstring); a missing file or key is named."""
        for name, path in (("tokenizer_training.lpips_vgg", vgg_path), ("tokenizer_training.lpips_lin", lin_path)):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(
                    f"perceptual_weight > 0 needs local LPIPS weights: {name}={path!r} is not a file. Give the "
                    "VGG16 weights in torchvision's layout (vgg16-397923af.pth) and LPIPS's v0.1 vgg.pth, or set "
                    "tokenizer_training.perceptual_weight=0")
        module = cls()
        vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
        vgg = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
        module.features.load_state_dict(vgg, strict=True)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        expected = [f"lin{k}.model.1.weight" for k in range(len(TAPS))]
        missing = [k for k in expected if k not in lin]
        if missing:
            raise KeyError(f"{lin_path} is not LPIPS's vgg.pth: missing {missing}")
        for conv, key in zip(module.lins, expected):
            conv.weight.copy_(lin[key])
        return module

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised ReLU feature maps of (B, 3, H, W) images in [-1, 1]."""
        x = (images - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                outputs.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if index == TAPS[-1]:
                break
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for lin, fx, fy in zip(self.lins, self.taps(x), self.taps(y)):
            distance = distance + lin((fx - fy) ** 2).mean((1, 2, 3))
        return distance

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen: never leaves eval mode
