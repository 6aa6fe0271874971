"""One LightningDataModule for every dataset: train / validation datasets and loaders."""

from __future__ import annotations

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

__all__ = ["DataModule", "StepSampler", "split_dataset"]


class StepSampler(Sampler[int]):
    """Shuffled indices as a pure function of (seed, position in the stream).

    Position p draws from a fresh permutation of the dataset every ``len(dataset)`` positions.
    Starting at ``start`` (the global step times the batch size) makes a resumed run read the
    very batches the interrupted run would have read next; on several ranks each takes every
    ``num_replicas``-th position, so ranks never overlap.
    """

    def __init__(self, length: int, seed: int = 0, start: int = 0, rank: int = 0, num_replicas: int = 1) -> None:
        self.length, self.seed, self.position = length, seed, start
        self.rank, self.num_replicas = rank, num_replicas
        self._chunk, self._perm = -1, None

    def __len__(self) -> int:
        return self.length // self.num_replicas

    def _index(self, global_position: int) -> int:
        chunk, offset = divmod(global_position, self.length)
        if chunk != self._chunk:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk)
            self._perm, self._chunk = torch.randperm(self.length, generator=generator), chunk
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[int]:
        for _ in range(len(self)):
            yield self._index(self.position * self.num_replicas + self.rank)
            self.position += 1


def split_dataset(cfg, split: str, purpose: str) -> Dataset:
    """The dataset of ``cfg.data``'s ``split`` (``train`` or ``val``) outside training, e.g. for
    sample.py; ``purpose`` starts the error message when the config has no such data or split."""
    from hydra.utils import instantiate

    if cfg.get("data") is None:
        raise ValueError(f"{purpose}: add data=<name> (e.g. data=fashion_mnist)")
    if split not in cfg.data:
        raise ValueError(f"{purpose}: split {split!r} is not in the data config, which has "
                         f"{[k for k in ('train', 'val') if k in cfg.data]}")
    return instantiate(cfg.data[split])


class DataModule(pl.LightningDataModule):
    """Wraps already-built datasets (Hydra instantiates them from ``configs/data/*``).

    Batches are dicts: ``image`` (B, 3, H, W) in [-1, 1], ``caption`` (list of str) and/or
    ``label`` (B,) depending on the dataset, and for file datasets ``skipped`` (list of str: the
    bad samples replaced in this batch). Training order of map-style datasets is resumable (see
    StepSampler).
    """

    def __init__(self, train: Dataset, val: Dataset | None = None, batch_size: int = 64, num_workers: int = 0,
                 val_batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batch_size = val_batch_size or batch_size

    def split(self, name: str) -> Dataset:
        """The ``train`` or ``val`` dataset by name (what validation grids draw their prompts from)."""
        if name not in ("train", "val"):
            raise ValueError(f"a data split is 'train' or 'val', got {name!r}")
        if name == "val" and self.val_set is None:
            raise ValueError("this data config has no validation split (data.val is null): draw from 'train'")
        return self.train_set if name == "train" else self.val_set

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.train_set, IterableDataset):
            # Streams (webdataset) order themselves per rank and worker; they resume approximately.
            return DataLoader(self.train_set, batch_size=self.batch_size, num_workers=self.num_workers,
                              drop_last=True, persistent_workers=self.num_workers > 0)
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        replicas = trainer.world_size if trainer is not None else 1
        sampler = StepSampler(len(self.train_set), self.seed, start=step * self.batch_size, rank=rank,
                              num_replicas=replicas)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=True, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.val_batch_size, num_workers=self.num_workers)
