"""Checkpoints written so that a kill never leaves a partial one, and resumes that skip any."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..utils.atomic import atomic_file

__all__ = ["AtomicCheckpointIO", "newest_valid_checkpoint"]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file beside the checkpoint and one
    rename: a kill during the write leaves the previous file (or none), never a truncated one,
    and no partial copy in the system's temporary folder."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_file(path) as f:
            torch.save(checkpoint, f)


def is_complete(path: Path) -> bool:
    """Whether a torch checkpoint file is whole: its zip directory, written last, reads back."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def newest_valid_checkpoint(runs: Path, pattern: str = "*/checkpoints/*.ckpt") -> Path | None:
    """The most recently written complete checkpoint matching ``pattern`` under ``runs`` (by
    default any run's ``checkpoints/``: its ``last.ckpt`` or its step checkpoints); incomplete
    files are passed over, with a warning."""
    candidates = sorted(runs.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if is_complete(candidate):
            return candidate
        log.warning("skipping %s: not a complete checkpoint (a write was cut off)", candidate)
    return None
