"""A sample folder's promise: every image in it was drawn with the settings it records.

``fingerprint.json`` holds everything that determines the images (the checkpoint's files, the
sampler and its settings, dtype and speed options, the device kind, and each image's prompt or
class and seed). A run into a folder with another fingerprint is refused, naming what differs,
instead of mixing its images with the folder's; ``fresh=true`` clears the folder's images and
records first. A lock file keeps two jobs from writing one folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils.atomic import atomic_write_json

__all__ = ["FINGERPRINT", "SampleFolderError", "checkpoint_identity", "claim_folder", "folder_lock"]

FINGERPRINT = "fingerprint.json"
LOCK = ".sample.lock"
RECORDS = ("samples.jsonl", "grid.png", "prompt_grid.png", "metrics.json", FINGERPRINT)
RECORD_FOLDERS = ("class_grids",)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")


class SampleFolderError(RuntimeError):
    """The output folder holds another job's images, or another job is writing to it."""


def checkpoint_identity(checkpoint: str) -> dict:
    """What identifies a model's weights without reading them: each file's name, size and
    modification time (a retrained or overwritten checkpoint changes them), or the hub id."""
    path = Path(checkpoint)
    if not path.exists():
        return {"hub_id": str(checkpoint)}
    root = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"name": path.name, "files": digest.hexdigest()[:20]}


def fingerprint(identity: dict, settings: dict, items: list[dict]) -> dict:
    """The fingerprint of a job: model identity, call settings and a digest of the per-image items."""
    encoded = json.dumps(items, sort_keys=True).encode()
    return {"checkpoint": identity, **settings, "images": len(items),
            "items": hashlib.sha256(encoded).hexdigest()[:20]}


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.png") if p.stem.isdigit()]


def claim_folder(folder: Path, expected: dict, fresh: bool = False) -> int:
    """Make ``folder`` this job's: write its fingerprint, or check the one there. Returns how
    many images were cleared (``fresh``).

    Raises SampleFolderError when the folder holds images of another fingerprint, or images
    without one, naming the keys that differ."""
    cleared = 0
    path = folder / FINGERPRINT
    if fresh:
        for image in _images(folder):
            image.unlink()
            cleared += 1
        for name in RECORDS:
            (folder / name).unlink(missing_ok=True)
        for name in RECORD_FOLDERS:  # grids of the old images must not outlive them
            shutil.rmtree(folder / name, ignore_errors=True)
    elif path.exists():
        recorded = json.loads(path.read_text())
        differing = sorted(key for key in set(recorded) | set(expected) if recorded.get(key) != expected.get(key))
        if differing:
            details = "; ".join(f"{key}: {recorded.get(key)!r} there, {expected.get(key)!r} now" for key in differing)
            raise SampleFolderError(
                f"{folder} holds images of another job ({details}): its images would not match this job's "
                f"records. Write to another output_dir, or pass fresh=true to delete its images and start again")
        return 0
    elif unrecorded := _images(folder):
        raise SampleFolderError(
            f"{folder} holds {len(unrecorded)} images but no {FINGERPRINT}, so nothing says how they were "
            f"drawn: write to another output_dir, or pass fresh=true to delete them and start again")
    atomic_write_json(path, expected, sort_keys=True)
    return cleared


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for this process (released on exit, and by the OS
    when the process dies, so a killed job never leaves the folder locked)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise SampleFolderError(f"{folder} is being written by another sample.py job ({owner}); wait for it "
                                    f"or write to another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
