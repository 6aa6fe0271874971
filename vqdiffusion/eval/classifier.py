"""A domain classifier for class-conditional evaluation: class accuracy and a classifier IS.

Inception's 1000 ImageNet classes say little about Fashion-MNIST or MNIST samples; a small
classifier trained on the dataset itself tells whether a sample drawn for class c looks like
class c. ``scripts/train_classifier.py data=<name>`` trains one and writes a traced TorchScript
file: input float ``(N, 3, size, size)`` in [-1, 1], output logits ``(N, C)``, with its class
names, input size and validation accuracy stored in the file (``classifier.json``). Evaluation
feeds it uint8 images of any size through :class:`UInt8Classifier`. Any TorchScript module with
that contract can stand in (e.g. an ImageNet classifier).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.atomic import atomic_write_bytes

__all__ = ["SmallClassifier", "UInt8Classifier", "ClassifierInfo", "train_classifier", "save_classifier",
           "load_classifier"]

META_FILE = "classifier.json"


class SmallClassifier(nn.Module):
    """Three conv stages (BatchNorm, ReLU, 2x max-pool after the first two) and a linear head over
    global average pooling: (N, 3, H, W) in [-1, 1] -> (N, C) logits. 0.14 M parameters at width 32."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(
            *stage(3, w), *stage(w, w), nn.MaxPool2d(2),
            *stage(w, 2 * w), *stage(2 * w, 2 * w), nn.MaxPool2d(2),
            *stage(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class UInt8Classifier(nn.Module):
    """What evaluation calls: uint8 (N, 3, H, W) -> logits (N, C); other sizes are resized to the
    training size (bilinear, antialiased, as the dataset transform does). ``size`` 0: no resize."""

    def __init__(self, network: nn.Module, size: int) -> None:
        super().__init__()
        self.network, self.size = network, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        if self.size and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.network(x)


@dataclass
class ClassifierInfo:
    """What the file says about itself."""

    class_names: list[str]
    size: int
    val_accuracy: float | None = None
    dataset: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _evaluate(network: nn.Module, loader, device) -> float:
    network.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in loader:
            logits = network(batch["image"].to(device))
            hits += int((logits.argmax(1).cpu() == batch["label"]).sum())
            total += len(batch["label"])
    return hits / max(total, 1)


def train_classifier(train_set, val_set, num_classes: int, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3,
                     width: int = 32, device: str = "cpu", seed: int = 0, num_workers: int = 0,
                     progress: bool = True) -> tuple[nn.Module, float]:
    """Train :class:`SmallClassifier` with AdamW and a one-cycle LR; returns it (eval mode, on the
    CPU) and its validation accuracy. Datasets yield {"image": (3, H, W) in [-1, 1], "label"}."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    network = SmallClassifier(num_classes, width).to(device)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val_set, batch_size=512, num_workers=num_workers)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        network.train()
        bar = tqdm(loader, desc=f"classifier epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress)
        for batch in bar:
            loss = F.cross_entropy(network(batch["image"].to(device)), batch["label"].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    val_accuracy = _evaluate(network, val_loader, device)
    return network.cpu().eval(), val_accuracy


def save_classifier(network: nn.Module, info: ClassifierInfo, path: str | Path) -> None:
    """Write the network as traced TorchScript (float (N, 3, size, size) in [-1, 1] -> logits)
    with ``info`` inside, atomically. Traced, not scripted: a trace holds only aten ops, so the
    file loads in other torch versions (scripted ``F.interpolate`` source does not)."""
    network = network.cpu().eval()
    with torch.no_grad():
        traced = torch.jit.trace(network, torch.zeros(2, 3, info.size, info.size))
    buffer = io.BytesIO()
    meta = {"class_names": info.class_names, "size": info.size, "val_accuracy": info.val_accuracy,
            "dataset": info.dataset, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    torch.jit.save(traced, buffer, _extra_files={META_FILE: json.dumps(meta)})
    atomic_write_bytes(path, buffer.getvalue())


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[UInt8Classifier, ClassifierInfo]:
    """The classifier at ``path`` wrapped to take uint8 images, and what it says about itself.
    Files without a stated size get images at their own size."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classifier {str(path)!r} does not exist; train one with "
                                f"`python scripts/train_classifier.py data=<name> out={path}`")
    extra = {META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as error:
        raise ValueError(f"{str(path)!r} is not a TorchScript classifier (float (N, 3, H, W) in [-1, 1] -> "
                         f"logits): {error}") from None
    meta = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    info = ClassifierInfo(class_names=list(meta.get("class_names") or []), size=int(meta.get("size") or 0),
                          val_accuracy=meta.get("val_accuracy"), dataset=meta.get("dataset"))
    return UInt8Classifier(module.eval(), info.size).eval(), info
