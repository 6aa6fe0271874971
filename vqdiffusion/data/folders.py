"""Folder datasets: image + caption pairs, ImageNet-style class folders, unconditional folders."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from .robust import DatasetNotFoundError, RobustDataset, require_path
from .transforms import IMAGE_SUFFIXES, ImageTransform, open_rgb

__all__ = ["CaptionFolder", "ClassFolders", "ImageFolder", "list_images", "read_captions"]

log = logging.getLogger(__name__)


def list_images(root: Path) -> list[Path]:
    """Every image file under ``root``, recursively, in a stable (sorted) order."""
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        found.extend(Path(directory) / f for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES))
    return found


def read_captions(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 caption file; an empty or undecodable file is an error."""
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"caption file {path.name} is empty")
    return captions


class _FolderBase(RobustDataset):
    def __init__(self, size: int, crop: str, flip: bool) -> None:
        self.transform = ImageTransform(size, crop, flip)
        self.paths: list[Path] = []

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return str(self.paths[index])


class CaptionFolder(_FolderBase):
    """Images with a caption file of the same name: ``a/b/x.jpg`` + ``a/b/x.txt``.

    A caption file may hold several captions, one per line (CUB-style); one is drawn per visit.
    Images without a caption file are left out (counted in ``missing_captions``).
    """

    LAYOUT = "root/\n  any/depth/name.jpg   (or .png, .webp, ...)\n  any/depth/name.txt   one caption per line"

    def __init__(self, root: str, size: int = 256, crop: str = "center", flip: bool = False) -> None:
        super().__init__(size, crop, flip)
        self.root = require_path(Path(root), "caption folder", self.LAYOUT, "put image + .txt pairs under it")
        images = list_images(self.root)
        self.paths = [p for p in images if p.with_suffix(".txt").exists()]
        self.missing_captions = len(images) - len(self.paths)
        if not self.paths:
            raise DatasetNotFoundError("caption folder", self.root, self.LAYOUT,
                                       f"found {len(images)} images but no .txt captions beside them")
        if self.missing_captions:
            log.warning("%d of %d images under %s have no caption file beside them (name.txt) and are left out, "
                        "e.g. %s", self.missing_captions, len(images), self.root,
                        next(p for p in images if not p.with_suffix(".txt").exists()))

    def load(self, index: int) -> dict:
        path = self.paths[index]
        caption = random.choice(read_captions(path.with_suffix(".txt")))
        return {"image": self.transform(open_rgb(path)), "caption": caption, "label": -1}


class ClassFolders(_FolderBase):
    """ImageNet-style ``root/<class folder>/*.jpg``; classes are the sorted folder names.

    ``class_names`` (optional) maps folder names to readable names used as captions: a JSON
    object ``{"n01440764": "tench", ...}`` or a text file of ``folder name`` lines. Without it the
    folder name (underscores as spaces) is the caption.
    """

    LAYOUT = "root/\n  <class_a>/*.jpg\n  <class_b>/*.jpg\n  ...  (one folder per class, sorted order = label)"

    def __init__(self, root: str, size: int = 256, crop: str = "center", flip: bool = False,
                 class_names: str | None = None, name: str = "class folders",
                 prepare: str = "one sub-folder of images per class") -> None:
        super().__init__(size, crop, flip)
        self.root = require_path(Path(root), name, self.LAYOUT, prepare)
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        names = _read_class_names(class_names) if class_names else {}
        self.class_names = [names.get(c, c.replace("_", " ")) for c in self.classes]
        self.labels: list[int] = []
        for label, folder in enumerate(self.classes):
            files = list_images(self.root / folder)
            self.paths.extend(files)
            self.labels.extend([label] * len(files))
        if not self.paths:
            raise DatasetNotFoundError(name, self.root, self.LAYOUT, prepare)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> dict:
        label = self.labels[index]
        return {"image": self.transform(open_rgb(self.paths[index])), "caption": self.class_names[label],
                "label": label}


def _read_class_names(path: str) -> dict[str, str]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    pairs = (line.split(maxsplit=1) for line in text.splitlines() if line.strip())
    return {p[0]: p[1].split(",")[0].strip() if len(p) > 1 else p[0] for p in pairs}


class ImageFolder(_FolderBase):
    """Every image under ``root`` (FFHQ-style, unconditional): caption "" and label -1."""

    LAYOUT = "root/\n  any/depth/*.png   (e.g. FFHQ's images1024x1024/00000/00000.png)"

    def __init__(self, root: str, size: int = 256, crop: str = "center", flip: bool = False,
                 name: str = "image folder", prepare: str = "copy or link the images under it") -> None:
        super().__init__(size, crop, flip)
        self.root = require_path(Path(root), name, self.LAYOUT, prepare)
        self.paths = list_images(self.root)
        if not self.paths:
            raise DatasetNotFoundError(name, self.root, self.LAYOUT, prepare)

    def load(self, index: int) -> dict:
        return {"image": self.transform(open_rgb(self.paths[index])), "caption": "", "label": -1}
