"""Metrics of a sample folder written by ``sample.py``. Writes ``metrics.json`` (values, protocol,
settings).

- ``fid``, ``kid``: against ``eval.reference_count`` images of ``data``'s ``eval.reference_split``;
- ``is``: Inception Score from the Inception's ImageNet head (``eval.backend=torch-fidelity``);
- ``clip``: CLIP score of each image against its prompt (``eval.clip_model``);
- ``shapes``: faithfulness of shapes-dataset samples to their prompts;
- ``class_accuracy``, ``classifier_is``: class-conditional samples scored by a domain classifier
  (``eval.classifier``, from ``scripts/train_classifier.py``).

    python sample.py checkpoint=RUN prompts_from=val n=100 data=fashion_mnist eval.metrics=[fid,kid]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ..utils.atomic import atomic_write_json
from ..utils.images import indexed_png
from .distribution import (
    DistributionMetrics,
    cache_key,
    cached_features,
    config_digest,
    extract_features,
    feature_statistics,
)
from .features import backend_key, load_feature_extractor

log = logging.getLogger(__name__)
METRICS = ("fid", "kid", "is", "clip", "shapes", "class_accuracy", "classifier_is")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [-1, 1] -> uint8."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


BATCH = 50  # images per feature-extractor call


def batch_count(images: int) -> int:
    return -(-images // BATCH)


def dataset_batches(dataset, count: int, batch_size: int = BATCH):
    """uint8 batches of the first ``count`` images of a dataset (its order is fixed)."""
    for start in range(0, count, batch_size):
        yield to_uint8(torch.stack([dataset[i]["image"] for i in range(start, min(count, start + batch_size))]))


def load_pngs(folder: Path, items: list[dict]) -> torch.Tensor:
    """uint8 (N, 3, H, W) of the items' PNGs, in their order."""
    arrays = [np.asarray(Image.open(indexed_png(folder, item["index"])).convert("RGB")) for item in items]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def item_batches(items: list[dict], batch_size: int = BATCH):
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def folder_batches(folder: Path, items: list[dict], batch_size: int = BATCH):
    """uint8 batches of the job's PNGs, in index order."""
    for batch in item_batches(items, batch_size):
        yield load_pngs(folder, batch)


def evaluate_folder(cfg: DictConfig, out: Path, items: list[dict], extra: dict | None = None,
                    device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> dict:
    """Compute ``cfg.eval.metrics`` over the job's images; returns them, and rank 0 writes
    ``metrics.json``. With several ranks each extracts the features of its own images (index
    modulo world size) and torchmetrics gathers the states; every PNG must already be written.
    The feature networks run on ``device`` (the sampling pipeline's)."""
    wanted = list(cfg.eval.metrics or [])
    unknown = sorted(set(wanted) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown eval.metrics {unknown}; expected any of {list(METRICS)}")
    result: dict = {"num_images": len(items), **(extra or {})}
    if cfg.eval.get("protocol"):
        result["protocol_name"] = str(cfg.eval.protocol)
    if "shapes" in wanted:
        result.update(_shapes_faithfulness(out, items))  # cheap: every rank scores all images
    if "fid" in wanted or "kid" in wanted:
        result.update(_distribution(cfg, out, items, device, rank, world, kid="kid" in wanted))
    if "is" in wanted:
        result.update(_inception_score(cfg, out, items, device, rank, world))
    if "clip" in wanted:
        result.update(_clip_score(cfg, out, items, device, rank, world))
    if "class_accuracy" in wanted or "classifier_is" in wanted:
        result.update(_classifier_metrics(cfg, out, items, device, rank, world, wanted))
    if rank == 0:
        atomic_write_json(out / "metrics.json", result)
    return result


def _shapes_faithfulness(out: Path, items: list[dict]) -> dict:
    from ..data.shapes import score_image

    if not items or "prompt" not in items[0]:
        raise ValueError("eval.metrics=[shapes] scores shapes prompts: this job has no prompts")
    hits = [score_image(Image.open(indexed_png(out, item["index"])), item["prompt"])["relation"] for item in items]
    return {"shapes_faithfulness": sum(hits) / len(hits)}


def _clip_score(cfg: DictConfig, out: Path, items: list[dict], device, rank: int, world: int) -> dict:
    from .clip_score import CLIPScore, load_clip

    if not items or "prompt" not in items[0]:
        raise ValueError("eval.metrics=[clip] scores images against their prompts: this job has no prompts")
    if not cfg.eval.get("clip_model"):
        raise ValueError("eval.metrics=[clip] needs eval.clip_model=<local CLIP folder or hub id>")
    metric = CLIPScore(*load_clip(cfg.eval.clip_model)).to(device)
    for batch in item_batches(items[rank::world]):
        metric.update(load_pngs(out, batch), [item["prompt"] for item in batch])
    return {"clip_score": float(metric.compute()), "clip_model": str(cfg.eval.clip_model)}


def reference_count(setting, generated: int, available: int) -> int:
    """``eval.reference_count``: a number, ``all`` (the whole split) or null (as many as generated)."""
    if setting in (None, "null"):
        count = generated
    elif str(setting) == "all":
        count = available
    elif isinstance(setting, int) and setting > 0:
        count = setting
    else:
        raise ValueError(f"eval.reference_count must be a positive integer, 'all' or null, got {setting!r}")
    if count > available:
        raise ValueError(f"the reference split holds {available} images, fewer than the {count} asked for "
                         "(set eval.reference_count to a smaller number or to all)")
    return count


def _distribution(cfg: DictConfig, out: Path, items: list[dict], device, rank: int, world: int, kid: bool) -> dict:
    from ..data.datamodule import split_dataset

    ev = cfg.eval
    dataset = split_dataset(cfg, ev.reference_split, "eval.metrics fid/kid compare the samples with a dataset "
                            "split (eval.reference_split=train|val)")
    count = reference_count(ev.reference_count, len(items), len(dataset))
    resolution = tuple(dataset[0]["image"].shape[-2:])
    extractor = load_feature_extractor(ev.backend)
    # KID needs the reference features; FID alone needs only their sums (constant size on disk)
    kind = "features" if kid else "statistics"
    data_config = OmegaConf.to_container(cfg.data[ev.reference_split], resolve=True)
    key = cache_key(dataset=type(dataset).__name__, split=ev.reference_split, resolution=f"{resolution[0]}x"
                    f"{resolution[1]}", count=count, backend=backend_key(ev.backend),
                    config=config_digest(data_config))
    cache = Path(ev.cache_dir).expanduser() / (f"{key}.pt" if kid else f"{key}-statistics.pt")
    if rank == 0:  # the reference is computed (or read) once, by rank 0, and enters its states only
        compute = extract_features if kid else feature_statistics
        reference = cached_features(cache, lambda: compute(
            extractor, dataset_batches(dataset, count), device, total=batch_count(count)), key=kind)
    mine = items[rank::world]
    generated = extract_features(extractor, folder_batches(out, mine), device, total=batch_count(len(mine)))
    metrics = DistributionMetrics(generated.shape[1], kid_subsets=ev.kid_subsets,
                                  kid_subset_size=ev.kid_subset_size, kid=kid).to(device)
    if rank == 0:
        if kid:
            metrics.update(reference.to(device), real=True)
        else:
            metrics.add_statistics(reference)
    metrics.update(generated.to(device), real=False)
    values = metrics.compute()  # torchmetrics gathers every rank's states here
    values["protocol"] = {"reference": reference_label(type(dataset).__name__, ev.reference_split, data_config),
                          "reference_count": count,
                          "reference_resolution": list(resolution), "reference_data": data_config,
                          "backend": ev.backend, "reference_cache": str(cache)}
    return values


def reference_label(dataset: str, split_key: str, data_config: dict) -> str:
    """``MNIST val``, or ``MNIST test (data.val)`` where the config's own ``split`` names other images."""
    split = data_config.get("split")
    if isinstance(split, str) and split != split_key:
        return f"{dataset} {split} (data.{split_key})"
    return f"{dataset} {split_key}"


@torch.no_grad()
def _inception_score(cfg: DictConfig, out: Path, items: list[dict], device, rank: int, world: int) -> dict:
    from .class_metrics import InceptionScore
    from .features import load_inception_logits

    network = load_inception_logits(cfg.eval.backend).to(device).eval()
    metric = InceptionScore(splits=int(cfg.eval.get("is_splits", 10))).to(device)
    for batch in folder_batches(out, items[rank::world]):
        metric.update(network(batch.to(device)))
    value = metric.compute()
    return {"is": value["mean"], "is_std": value["std"], "is_splits": metric.splits}


@torch.no_grad()
def _classifier_metrics(cfg: DictConfig, out: Path, items: list[dict], device, rank: int, world: int,
                        wanted: list[str]) -> dict:
    from .class_metrics import ClassAccuracy, InceptionScore
    from .classifier import load_classifier

    if not cfg.eval.get("classifier"):
        raise ValueError("eval.metrics class_accuracy/classifier_is need eval.classifier=<TorchScript classifier>; "
                         "train one with `python scripts/train_classifier.py data=<name> out=<file>`")
    if "class_accuracy" in wanted and (not items or "class_label" not in items[0]):
        raise ValueError("eval.metrics=[class_accuracy] scores class-conditional samples: this job has no classes")
    network, info = load_classifier(cfg.eval.classifier, device)
    logits = [network(load_pngs(out, batch).to(device)).float() for batch in item_batches(items[rank::world])]
    classes = info.num_classes or (logits[0].shape[1] if logits else 0)
    if not classes:
        raise ValueError(f"{cfg.eval.classifier}: the file names no classes and this rank has no images")
    accuracy = ClassAccuracy(classes).to(device)
    inception = InceptionScore(splits=int(cfg.eval.get("is_splits", 10))).to(device)
    for batch, batch_logits in zip(item_batches(items[rank::world]), logits):
        if "class_accuracy" in wanted:
            accuracy.update(batch_logits, torch.tensor([item["class_label"] for item in batch]))
        inception.update(batch_logits)
    result: dict = {"classifier": str(cfg.eval.classifier), "classifier_val_accuracy": info.val_accuracy}
    if "class_accuracy" in wanted:
        value = accuracy.compute()
        result.update(class_accuracy=value["accuracy"], class_accuracy_per_class=value["per_class"])
    if "classifier_is" in wanted:
        value = inception.compute()
        result.update(classifier_is=value["mean"], classifier_is_std=value["std"])
    return result
