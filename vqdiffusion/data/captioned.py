"""Caption datasets in their official layouts: MS-COCO captions and CUB-200 with 10 captions."""

from __future__ import annotations

import io
import json
import pickle
import random
from collections import defaultdict
from pathlib import Path

from .folders import read_captions
from .robust import DatasetNotFoundError, RobustDataset, require_path
from .transforms import ImageTransform, open_rgb

__all__ = ["CocoCaptions", "CUB200"]

COCO_LAYOUT = """root/
  annotations/captions_train2014.json   (captions_<split>.json, from annotations_trainval2014.zip)
  train2014/COCO_train2014_000000000009.jpg ...   (the <split>/ image folder)"""
COCO_PREPARE = ("python scripts/prepare_data.py coco --root data/coco   "
                "(downloads train/val 2014 images + annotations from cocodataset.org, ~20 GB)")

CUB_LAYOUT = """root/
  CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
  text/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.txt   (10 captions, one per line)
  train/filenames.pickle, test/filenames.pickle   (or filenames.txt; optional: all images otherwise)"""
CUB_PREPARE = ("python scripts/prepare_data.py cub200 --root data/cub200   "
               "(CUB_200_2011.tgz from data.caltech.edu + the Reed et al. captions, birds.zip)")


class _ItemList(RobustDataset):
    """A dataset over ``self.items``: tuples whose first entry is the image path."""

    items: list[tuple]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index][0])


class CocoCaptions(_ItemList):
    """MS-COCO images with their ~5 captions each; one caption is drawn per visit."""

    def __init__(self, root: str, split: str = "train2014", size: int = 256, crop: str = "center",
                 flip: bool = False) -> None:
        self.root = require_path(Path(root), "coco", COCO_LAYOUT, COCO_PREPARE)
        annotation_file = self.root / "annotations" / f"captions_{split}.json"
        image_folder = self.root / split
        for needed in (annotation_file, image_folder):
            require_path(needed, "coco", COCO_LAYOUT, COCO_PREPARE)
        try:
            annotations = json.loads(annotation_file.read_text(encoding="utf-8"))
            captions: dict[int, list[str]] = defaultdict(list)
            for entry in annotations["annotations"]:
                captions[entry["image_id"]].append(entry["caption"].strip())
            images = sorted(annotations["images"], key=lambda e: e["id"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{annotation_file} is not a COCO captions file ({type(error).__name__}: {error}); "
                             f"expected {{'images': [{{'id', 'file_name'}}], 'annotations': "
                             f"[{{'image_id', 'caption'}}]}}") from error
        self.items = [(image_folder / e["file_name"], captions[e["id"]]) for e in images if captions.get(e["id"])]
        if not self.items:
            raise DatasetNotFoundError("coco", annotation_file, COCO_LAYOUT, COCO_PREPARE)
        self.transform = ImageTransform(size, crop, flip)

    def load(self, index: int) -> dict:
        path, captions = self.items[index]
        return {"image": self.transform(open_rgb(path)), "caption": random.choice(captions), "label": -1}


class _ListOnlyUnpickler(pickle.Unpickler):
    """filenames.pickle holds a list of strings: refuse anything that would import code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"filenames.pickle refers to {module}.{name}; expected a list of strings")


def _read_split(folder: Path) -> list[str] | None:
    if (folder / "filenames.txt").exists():
        return [line.strip() for line in (folder / "filenames.txt").read_text().splitlines() if line.strip()]
    if (folder / "filenames.pickle").exists():
        names = _ListOnlyUnpickler(io.BytesIO((folder / "filenames.pickle").read_bytes()), encoding="latin1").load()
        return [str(n) for n in names]
    return None


class CUB200(_ItemList):
    """Caltech-UCSD Birds with Reed et al.'s 10 captions per image; label = species (0..199)."""

    def __init__(self, root: str, split: str = "train", size: int = 256, crop: str = "center",
                 flip: bool = False) -> None:
        self.root = require_path(Path(root), "cub200", CUB_LAYOUT, CUB_PREPARE)
        images = require_path(self.root / "CUB_200_2011" / "images", "cub200", CUB_LAYOUT, CUB_PREPARE)
        texts = require_path(self.root / "text", "cub200", CUB_LAYOUT, CUB_PREPARE)
        names = _read_split(self.root / split)
        if names is None:  # no split files: every image that has captions
            names = sorted(str(p.relative_to(texts).with_suffix("")) for p in texts.glob("*/*.txt"))
        self.classes = sorted(d.name for d in images.iterdir() if d.is_dir())
        index_of = {c: i for i, c in enumerate(self.classes)}
        self.items = [(images / f"{n}.jpg", texts / f"{n}.txt", index_of.get(n.split("/")[0], -1)) for n in names]
        if not self.items:
            raise DatasetNotFoundError("cub200", self.root, CUB_LAYOUT, CUB_PREPARE)
        self.transform = ImageTransform(size, crop, flip)

    def load(self, index: int) -> dict:
        image, text, label = self.items[index]
        caption = random.choice(read_captions(text))
        return {"image": self.transform(open_rgb(image)), "caption": caption, "label": label}
