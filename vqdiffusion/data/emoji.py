"""EmojiOne: 1794 captioned 64×64 emoji images that install offline (Debian ``ruby-gemojione``).

Each emoji's caption is its Unicode name ("billiards", "flag for france", "raised hand tone 3");
``keywords=True`` adds a few of its keywords on some visits. The held-out split is fixed by a hash
of the emoji's base name, so the skin-tone variants of one emoji always fall in the same split and
a held-out caption never has a near-copy in training.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from .robust import DatasetNotFoundError, RobustDataset
from .transforms import ImageTransform, open_rgb

__all__ = ["EmojiOne", "EMOJIONE_ROOT"]

EMOJIONE_ROOT = "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0"
SPLITS = ("train", "heldout")
_TONE = re.compile(r"\s+tone\s+\d+$")


def heldout(name: str, share: float) -> bool:
    """Whether the emoji of this name is held out: a stable hash of its base name (tones stripped)."""
    base = _TONE.sub("", name)
    return int(hashlib.sha1(base.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


class EmojiOne(RobustDataset):
    """EmojiOne emoji with their names as captions; transparent pixels composite onto black.

    Args:
        root: the gem's folder (``config/index.json`` + ``assets/png/<unicode>.png``).
        split: ``train`` or ``heldout`` (``heldout_share`` of the emoji, by base name).
        size: output side in pixels (the files are 64×64).
        keywords: on half of the visits, append up to three of the emoji's keywords to its name.
    """

    LAYOUT = "root/\n  config/index.json\n  assets/png/<unicode>.png   (64x64)"
    PREPARE = f"sudo apt-get install ruby-gemojione   (Debian/Ubuntu; files go to {EMOJIONE_ROOT})"

    def __init__(self, root: str = EMOJIONE_ROOT, split: str = "train", size: int = 64, heldout_share: float = 0.1,
                 keywords: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"EmojiOne split must be one of {SPLITS}, got {split!r}")
        if not 0 < heldout_share < 1:
            raise ValueError(f"heldout_share must be in (0, 1), got {heldout_share}")
        folder = Path(root)
        index = folder / "config" / "index.json"
        if not index.exists():
            raise DatasetNotFoundError("emojione", folder, self.LAYOUT, self.PREPARE)
        entries = json.loads(index.read_text(encoding="utf-8"))
        self.transform, self.keywords = ImageTransform(size), keywords
        self.items = []
        for key in sorted(entries):
            entry = entries[key]
            path = folder / "assets" / "png" / f"{entry['unicode']}.png"
            if path.exists() and heldout(entry["name"], heldout_share) == (split == "heldout"):
                self.items.append((path, entry["name"].lower(), [k for k in entry.get("keywords", []) if k]))
        if not self.items:
            raise DatasetNotFoundError("emojione", folder, self.LAYOUT, self.PREPARE)

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int) -> dict:
        path, name, keywords = self.items[index]
        caption = name
        if self.keywords and keywords and random.random() < 0.5:
            caption = f"{name}, {', '.join(keywords[:3])}"
        return {"image": self.transform(open_rgb(path)), "caption": caption, "label": -1}

    def all_captions(self) -> list[str]:
        """Every caption the dataset can return (the text encoder's cache is filled with them)."""
        captions = {name for _, name, _ in self.items}
        if self.keywords:
            captions |= {f"{name}, {', '.join(words[:3])}" for _, name, words in self.items if words}
        return sorted(captions)
