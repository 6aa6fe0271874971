"""Metrics over a classifier's logits: Inception Score and class accuracy (torchmetrics ``Metric``s,
so their states synchronise across ranks like FID's).

- ``InceptionScore``: exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` disjoint splits
  of a seeded permutation (Salimans et al. 2016). With the Inception's ImageNet head it is the
  published IS; with a domain classifier it is the "classifier IS" of MNIST-like papers.
- ``ClassAccuracy``: the share of samples drawn for class c that the classifier calls c, overall
  and per class.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["InceptionScore", "ClassAccuracy", "inception_score"]


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) IS of (N, C) logits over ``splits`` splits of a permutation seeded by ``seed``."""
    count = logits.shape[0]
    if count < splits:
        raise ValueError(f"the Inception Score over {splits} splits needs at least {splits} images, got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    log_p = torch.log_softmax(logits.double()[order.to(logits.device)], dim=1)  # (N, C) log p(y|x)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(part, dim=0) - torch.log(torch.tensor(float(len(part)), dtype=part.dtype))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False)) if splits > 1 else 0.0


class InceptionScore(Metric):
    """Streaming IS; ``update(logits (N, C))``. Logits are kept (float32) until ``compute``."""

    full_state_update = False

    def __init__(self, splits: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.splits, self.seed = splits, seed
        self.add_state("logits", [], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"expected (N, C) logits, got shape {tuple(logits.shape)}")
        self.logits.append(logits.float())

    def compute(self) -> dict[str, float]:
        mean, std = inception_score(dim_zero_cat(self.logits), self.splits, self.seed)
        return {"mean": mean, "std": std}


class ClassAccuracy(Metric):
    """Streaming class accuracy; ``update(logits (N, C), wanted classes (N,))``."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("hits", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected (N, {self.num_classes}) logits, got shape {tuple(logits.shape)}")
        labels = labels.to(logits.device).long()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}], got {labels.unique().tolist()}")
        hit = (logits.argmax(1) == labels).double()
        self.hits += torch.bincount(labels, weights=hit, minlength=self.num_classes).round().long()
        self.count += torch.bincount(labels, minlength=self.num_classes)

    def compute(self) -> dict:
        per_class = self.hits.double() / self.count.clamp_min(1)
        seen = self.count > 0
        return {"accuracy": float(self.hits.sum() / self.count.sum().clamp_min(1)),
                "per_class": [float(v) if s else None for v, s in zip(per_class, seen)]}
