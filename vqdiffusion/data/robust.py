"""Skip-and-count for file datasets: one unreadable sample never ends a run.

A sample that fails to load is replaced by the next readable index, and the failure travels in
the batch (``batch["skipped"]``: one string per sample, "" when nothing was skipped) so that the
count survives DataLoader worker processes; ``lit.callbacks.BadSampleReport`` reports it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

__all__ = ["DatasetNotFoundError", "RobustDataset", "require_path"]

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 50


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing: says where we looked, the layout, and how to prepare it."""

    def __init__(self, name: str, path: Path | str, layout: str, prepare: str,
                 config_key: str = "data.train.root", placeholder: str | None = None) -> None:
        self.name, self.path, self.layout, self.prepare = name, str(path), layout, prepare
        self.placeholder = placeholder or name
        super().__init__(
            f"{name}: nothing usable at {Path(path).resolve()}\n"
            f"Expected layout:\n{layout.rstrip()}\n"
            f"Prepare it with:\n  {prepare}\n"
            f"or point the config at it: {config_key}=/path/to/{self.placeholder}")

    def under(self, config_key: str) -> DatasetNotFoundError:
        """The same error naming another config key (a dataset read as part of another)."""
        return DatasetNotFoundError(self.name, self.path, self.layout, self.prepare, config_key, self.placeholder)


def require_path(path: Path, name: str, layout: str, prepare: str) -> Path:
    """``path`` if it exists, else a DatasetNotFoundError explaining the layout."""
    if not path.exists():
        raise DatasetNotFoundError(name, path, layout, prepare)
    return path


class RobustDataset(Dataset):
    """Base for map-style file datasets. Subclasses implement ``__len__``, ``load(index) -> dict``
    (keys ``image``, ``caption``, ``label``) and ``describe(index) -> str`` (a file name for
    messages)."""

    def load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def __getitem__(self, index: int) -> dict:
        skipped = ""
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            candidate = (index + attempt) % len(self)
            try:
                sample = self.load(candidate)
            except Exception as error:  # noqa: BLE001 - any decoding error means "bad sample"
                if attempt == 0:
                    # Counted only where it is the requested index: once per bad file per epoch.
                    skipped = f"{self.describe(candidate)} ({type(error).__name__}: {error})"
                    log.debug("skipping %s", skipped)
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(f"{MAX_CONSECUTIVE_FAILURES} consecutive samples from index {index} failed to load "
                           f"(last: {self.describe(candidate)}); the dataset looks broken, not one bad file")
