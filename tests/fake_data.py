"""Small on-disk datasets in the official layouts, with one corrupt file each where it matters."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def write_image(path: Path, index: int, size: tuple[int, int] = (40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, COLOURS[index % len(COLOURS)])
    image.save(path)


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


def make_caption_folder(root: Path, count: int = 6) -> Path:
    for i in range(count):
        write_image(root / f"sub{i % 2}" / f"img{i}.png", i)
        (root / f"sub{i % 2}" / f"img{i}.txt").write_text(f"a picture number {i}\nanother caption {i}\n")
    write_corrupt(root / "sub0" / "broken.jpg")
    (root / "sub0" / "broken.txt").write_text("a broken image\n")
    write_image(root / "sub1" / "nocaption_text.png", 1)
    (root / "sub1" / "nocaption_text.txt").write_bytes(b"")  # malformed: empty caption file
    write_image(root / "sub1" / "orphan.png", 2)  # no caption file at all: left out
    return root


def make_coco(root: Path, count: int = 6) -> Path:
    for split in ("train2014", "val2014"):
        images, annotations = [], []
        for i in range(count):
            name = f"COCO_{split}_{i:012d}.jpg"
            write_image(root / split / name, i)
            images.append({"id": i, "file_name": name})
            annotations += [{"image_id": i, "id": 10 * i + k, "caption": f"a {split} photo {i} take {k}"}
                            for k in range(5)]
        write_corrupt(root / split / "COCO_broken.jpg")
        images.append({"id": 999, "file_name": "COCO_broken.jpg"})
        annotations.append({"image_id": 999, "id": 9990, "caption": "broken"})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations}))
    return root


def make_cub(root: Path, per_class: int = 3) -> Path:
    names = []
    for c, species in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross"]):
        for i in range(per_class):
            name = f"{species}/{species.split('.')[1]}_{i:04d}"
            write_image(root / "CUB_200_2011" / "images" / f"{name}.jpg", c)
            text = root / "text" / f"{name}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("".join(f"this bird {c} has feature {k}\n" for k in range(10)))
            names.append(name)
    for split, chosen in (("train", names[::2] + names[1::2][:1]), ("test", names[1::2][1:])):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(chosen))
    return root


def make_class_folders(root: Path, classes: tuple[str, ...] = ("n01440764", "n01443537"), per_class: int = 3) -> Path:
    for c, wnid in enumerate(classes):
        for i in range(per_class):
            write_image(root / wnid / f"{wnid}_{i}.JPEG", c)
    write_corrupt(root / classes[0] / "broken.JPEG")
    return root


def make_image_folder(root: Path, count: int = 5) -> Path:
    for i in range(count):
        write_image(root / f"{i // 3:05d}" / f"{i:05d}.png", i, size=(32, 32))
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root: Path, count: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return root


def make_mnist_pickle(path: Path, count: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    split = lambda: (rng.random((count, 784), dtype=np.float32), np.arange(count, dtype=np.int64) % 10)  # noqa: E731
    with gzip.open(path, "wb") as f:
        pickle.dump((split(), split(), split()), f)
    return path


def make_emojione(root: Path, names: tuple[str, ...] = ("grinning face", "raised hand", "raised hand tone 1",
                                                          "raised hand tone 2", "billiards", "flag for france",
                                                          "red apple", "snowman", "rocket", "crab")) -> Path:
    """The gem's layout: config/index.json and assets/png/<unicode>.png (transparent 64x64 RGBA)."""
    (root / "config").mkdir(parents=True)
    (root / "assets" / "png").mkdir(parents=True)
    index = {}
    for i, name in enumerate(names):
        code = f"1F{600 + i:03X}"
        index[name.replace(" ", "_")] = {"unicode": code, "name": name, "category": "people",
                                         "keywords": ["happy", "", "test"]}
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((200, 40 + 10 * i, 30, 255), (16, 16, 48, 48))
        image.save(root / "assets" / "png" / f"{code}.png")
    (root / "config" / "index.json").write_text(json.dumps(index))
    return root


def make_twemoji(root: Path, names: tuple[str, ...] = ("GRINNING FACE", "RAISED HAND", "BILLIARDS", "SNOWMAN",
                                                        "ROCKET", "CRAB", "RED APPLE", "COUPLE")) -> Path:
    """The npm package's layout: emoji.json and img/twitter/64/<unified>.png; RAISED HAND has two
    skin tones, COUPLE one two-person tone, SNOWMAN an entry whose image is missing."""
    images = root / "img" / "twitter" / "64"
    images.mkdir(parents=True)
    entries = []
    for i, name in enumerate(names):
        code = f"1f{700 + i:03x}"
        entry = {"name": name, "short_name": name.lower().replace(" ", "_"), "image": f"{code}.png",
                 "has_img_twitter": name != "SNOWMAN"}
        if name == "RAISED HAND":
            entry["skin_variations"] = {tone: {"image": f"{code}-{tone.lower()}.png", "has_img_twitter": True}
                                        for tone in ("1F3FB", "1F3FD")}
        if name == "COUPLE":
            entry["skin_variations"] = {"1F3FB-1F3FF": {"image": f"{code}-mixed.png", "has_img_twitter": True}}
        entries.append(entry)
        files = [entry["image"]] + [v["image"] for v in entry.get("skin_variations", {}).values()]
        for file in files if entry["has_img_twitter"] else []:
            image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            image.paste((30, 40 + 10 * i, 200, 255), (8, 8, 56, 56))
            image.save(images / file)
    (root / "emoji.json").write_text(json.dumps(entries))
    return root
