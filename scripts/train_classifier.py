"""Train the domain classifier that class_accuracy / classifier_is evaluation uses.

    python scripts/train_classifier.py data=fashion_mnist out=classifiers/fashion_mnist.pt [epochs=3]

The data config's train split must carry class labels (``label``); its val split gives the
accuracy stored in the file. The file is TorchScript: uint8 (N, 3, H, W) -> logits (N, C).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    import torch

    from vqdiffusion.data.datamodule import split_dataset
    from vqdiffusion.eval.classifier import ClassifierInfo, save_classifier, train_classifier

    if not cfg.out:
        raise SystemExit("error: give the file to write: out=classifiers/<name>.pt")
    train_set = split_dataset(cfg, "train", "the classifier trains on a dataset")
    val_set = split_dataset(cfg, "val", "the classifier is scored on the val split")
    names = list(getattr(train_set, "class_names", ()) or ())
    if not names or "label" not in train_set[0]:
        raise SystemExit(f"error: data={type(train_set).__name__} has no class labels to train a classifier on")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    network, val_accuracy = train_classifier(train_set, val_set, len(names), epochs=cfg.epochs,
                                             batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width, device=device,
                                             seed=cfg.seed)
    size = int(train_set[0]["image"].shape[-1])
    save_classifier(network, ClassifierInfo(names, size, val_accuracy, type(train_set).__name__), cfg.out)
    print(f"{cfg.out}: {len(names)} classes at {size} px, val accuracy {val_accuracy:.4f}")


if __name__ == "__main__":
    main()
