"""FID and KID between generated and reference images, computed from features.

The metrics are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` fed with
features instead of images (a pass-through "network"), so one Inception pass serves both, and
their states (feature sums and covariance for FID, feature lists for KID) synchronise across DDP
ranks the torchmetrics way. Reference features are computed once per (dataset, split,
resolution, count, backend) and cached on disk; when only FID is asked for, the cache holds the
reference's feature sums instead (O(D^2) whatever the count: the full ImageNet train set fits).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..utils.atomic import atomic_write_bytes


class _Passthrough(nn.Module):
    """Stands in for the network inside torchmetrics: the "images" given are already features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class DistributionMetrics(nn.Module):
    """Streaming FID and KID over (N, D) features of real and generated images.

    KID uses ``kid_subsets`` random subsets of ``kid_subset_size`` (capped by the smaller set) drawn
    from a generator seeded with ``seed``, so the value is reproducible.
    """

    def __init__(self, num_features: int, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                 kid: bool = True) -> None:
        super().__init__()
        feature = _Passthrough(num_features)
        self.num_features = num_features
        self.fid = FrechetInceptionDistance(feature=feature, reset_real_features=False)
        # KID keeps every feature (FID only sums): leave it out when it is not wanted
        self.kid = KernelInceptionDistance(feature=feature, subsets=kid_subsets, subset_size=kid_subset_size,
                                           reset_real_features=False) if kid else None
        self.kid_subset_size, self.seed = kid_subset_size, seed

    def update(self, features: torch.Tensor, real: bool) -> None:
        """Add (N, D) features of real (reference) or generated images."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}) features, got shape {tuple(features.shape)}")
        features = features.double()
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features, real=real)

    def add_statistics(self, statistics: dict[str, torch.Tensor], real: bool = True) -> None:
        """Add real (reference) or generated images by their feature sums (see
        :func:`feature_statistics`); FID only."""
        if self.kid is not None:
            raise ValueError("KID needs the features themselves, not their sums")
        side = "real" if real else "fake"
        device = self.fid.real_features_sum.device
        getattr(self.fid, f"{side}_features_sum").add_(statistics["sum"].to(device))
        getattr(self.fid, f"{side}_features_cov_sum").add_(statistics["cov_sum"].to(device))
        getattr(self.fid, f"{side}_features_num_samples").add_(int(statistics["count"]))
        self.fid.orig_dtype = torch.float64  # what update() records of the features (compute() casts to it)
        # What torchmetrics' update() wrapper does besides: count the update (compute() warns of "no
        # update" otherwise) and drop a cached result, which would hide the added images.
        self.fid._update_count += 1
        self.fid._computed = None

    def counts(self) -> tuple[int, int]:
        """(real, generated) images seen on all ranks."""
        return int(self.fid.real_features_num_samples), int(self.fid.fake_features_num_samples)

    def compute(self) -> dict[str, float]:
        """The values over every rank's states (torchmetrics gathers them; call on all ranks)."""
        self._one_tensor_per_kid_list()
        fid = float(self.fid.compute())
        real, fake = self._synced_counts()
        if self.kid is None:
            return {"fid": fid, "num_real": real, "num_generated": fake}
        subset = min(self.kid_subset_size, real, fake)
        self.kid.subset_size = subset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # torchmetrics draws the KID subsets from the global RNG
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        return {"fid": fid, "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": subset,
                "num_real": real, "num_generated": fake}

    def _one_tensor_per_kid_list(self) -> None:
        # KID keeps lists of tensors and gathers them element by element: ranks must hold the same
        # number of tensors, so each list becomes one (possibly empty) tensor before syncing.
        if self.kid is None:
            return
        for name in ("real_features", "fake_features"):
            parts = getattr(self.kid, name)
            empty = torch.zeros(0, self.num_features, dtype=torch.float64, device=self.fid.device)
            setattr(self.kid, name, [torch.cat(parts) if parts else empty])

    def _synced_counts(self) -> tuple[int, int]:
        # FID's count states are sum-reduced when compute() syncs; read them synced as well
        with self.fid.sync_context():
            return self.counts()


def cache_key(**fields) -> str:
    """A file-name-safe key, e.g. ``dataset=fashion_mnist-split=test-resolution=28-count=5000-backend=fid-helper``."""
    text = "-".join(f"{name}={value}" for name, value in fields.items())
    return re.sub(r"[^A-Za-z0-9=._-]+", "_", text)


def config_digest(config: dict) -> str:
    """12 hex digits of a resolved config. The reference split's config (class, files, split, size)
    enters the cache key: ``data.val.split=test`` and ``split=val`` of the same data config are
    different images, and must not share a cached reference."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _features_per_batch(extractor: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str,
                        progress: bool, total: int | None) -> Iterator[torch.Tensor]:
    """Features of each uint8 image batch (N, 3, H, W), on ``device``, with a progress bar."""
    from tqdm.auto import tqdm

    extractor = extractor.to(device).eval()
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc="features", unit="batch", disable=not progress):
            yield extractor(batch.to(device))


def extract_features(extractor: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu",
                     progress: bool = True, total: int | None = None) -> torch.Tensor:
    """(N, D) float32 features of uint8 image batches (N, 3, H, W), on the CPU."""
    parts = [features.float().cpu() for features in _features_per_batch(extractor, batches, device, progress, total)]
    if not parts:
        raise ValueError("no images to extract features from")
    return torch.cat(parts)


def feature_statistics(extractor: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu",
                       progress: bool = True, total: int | None = None) -> dict[str, torch.Tensor]:
    """Float64 feature sum (D,), sum of outer products (D, D) and count of uint8 image batches,
    accumulated batch by batch (memory does not grow with the number of images)."""
    total_sum = cov_sum = None
    count = 0
    for features in _features_per_batch(extractor, batches, device, progress, total):
        features = features.double()
        if total_sum is None:
            total_sum = features.new_zeros(features.shape[1])
            cov_sum = features.new_zeros(features.shape[1], features.shape[1])
        total_sum += features.sum(0)
        cov_sum += features.T @ features
        count += len(features)
    if total_sum is None:
        raise ValueError("no images to extract features from")
    return {"sum": total_sum.cpu(), "cov_sum": cov_sum.cpu(), "count": torch.tensor(count)}


def cached_features(path: Path, compute: Callable[[], torch.Tensor | dict], key: str = "features"):
    """The tensor (or dict of tensors) stored at ``path`` (``.pt``) under ``key``, computed and
    written atomically on the first call."""
    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)[key]
    value = compute()
    buffer = io.BytesIO()
    torch.save({key: value}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return value
