"""Captioned 64×64 emoji that install offline: EmojiOne (1794 images, Debian ``ruby-gemojione``),
Twemoji (3786 images, npm ``emoji-datasource-twitter``) and both together (:class:`Emoji`).

Each emoji's caption is its Unicode name ("billiards", "flag for france", "raised hand tone 3");
``keywords=True`` adds a few of EmojiOne's keywords on some visits. The held-out split is fixed by a
hash of the emoji's base name, so the skin-tone variants of one emoji always fall in the same split,
an emoji held out of one set is held out of the other, and a held-out caption never has a
near-copy in training.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from .robust import DatasetNotFoundError, RobustDataset
from .transforms import ImageTransform, open_rgb

__all__ = ["Emoji", "EmojiOne", "Twemoji", "EMOJIONE_ROOT", "TWEMOJI_ROOT"]

EMOJIONE_ROOT = "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0"
TWEMOJI_ROOT = "data/twemoji/node_modules/emoji-datasource-twitter"
SPLITS = ("train", "heldout")
_TONE = re.compile(r"\s+tone\s+[\d-]+$")
# Twemoji's skin-tone modifiers, numbered as EmojiOne's caption suffixes ("tone 1" .. "tone 5")
_TONES = {"1F3FB": "1", "1F3FC": "2", "1F3FD": "3", "1F3FE": "4", "1F3FF": "5"}


def heldout(name: str, share: float) -> bool:
    """Whether the emoji of this name is held out: a stable hash of its base name (tones stripped)."""
    base = _TONE.sub("", name)
    return int(hashlib.sha1(base.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def _check_split(dataset: str, split: str, heldout_share: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"{dataset} split must be one of {SPLITS}, got {split!r}")
    if not 0 < heldout_share < 1:
        raise ValueError(f"heldout_share must be in (0, 1), got {heldout_share}")


class _EmojiImages(RobustDataset):
    """``items``: (PNG path, caption, keywords) per image; ``keywords=True`` appends up to three of
    an image's keywords to its caption on half of the visits."""

    items: list[tuple[Path, str, list[str]]]
    transform: ImageTransform
    keywords = False

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


class EmojiOne(_EmojiImages):
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
        _check_split("EmojiOne", split, heldout_share)
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


class Twemoji(_EmojiImages):
    """Twemoji at 64×64 from the npm package ``emoji-datasource-twitter``, captioned like EmojiOne:
    the lower-case Unicode name, with " tone N" (N = 1..5, or "1-3" for two people) for skin tones.

    Args:
        root: the package folder (``emoji.json`` + ``img/twitter/64/<image>``).
        split: ``train`` or ``heldout`` (``heldout_share`` of the emoji, by base name).
        size: output side in pixels (the files are 64×64).
        skin_tones: include the skin-tone variants (2 in 3 of the images).
    """

    LAYOUT = "root/\n  emoji.json\n  img/twitter/64/<unified>.png   (64x64)"
    PREPARE = "npm install --prefix data/twemoji emoji-datasource-twitter   (files go to " + TWEMOJI_ROOT + ")"

    def __init__(self, root: str = TWEMOJI_ROOT, split: str = "train", size: int = 64, heldout_share: float = 0.1,
                 skin_tones: bool = True) -> None:
        _check_split("Twemoji", split, heldout_share)
        folder = Path(root)
        index = folder / "emoji.json"
        if not index.exists():
            raise DatasetNotFoundError("twemoji", folder, self.LAYOUT, self.PREPARE)
        images = folder / "img" / "twitter" / "64"
        self.transform = ImageTransform(size)
        self.items = []
        for entry in json.loads(index.read_text(encoding="utf-8")):
            name = (entry.get("name") or entry.get("short_name") or "").lower()
            if not name or heldout(name, heldout_share) != (split == "heldout"):
                continue
            variants = [(entry.get("image"), name, entry.get("has_img_twitter"))]
            if skin_tones:
                for key, variant in (entry.get("skin_variations") or {}).items():
                    tones = "-".join(_TONES.get(part, "?") for part in key.split("-"))
                    variants.append((variant.get("image"), f"{name} tone {tones}", variant.get("has_img_twitter")))
            self.items += [(images / image, caption, []) for image, caption, has in variants
                           if image and has and (images / image).exists()]
        if not self.items:
            raise DatasetNotFoundError("twemoji", folder, self.LAYOUT, self.PREPARE)


class Emoji(RobustDataset):
    """EmojiOne and Twemoji together, the same split of each: two drawings of most captions.

    Args:
        emojione_root, twemoji_root: the two sets' folders (see :class:`EmojiOne`, :class:`Twemoji`).
        split, size, heldout_share: as for either set (one hash decides both splits).
        keywords: on half of the visits, append up to three of EmojiOne's keywords to the name, for
            the Twemoji drawing of the same caption too (Twemoji has no keywords of its own).
    """

    def __init__(self, emojione_root: str = EMOJIONE_ROOT, twemoji_root: str = TWEMOJI_ROOT, split: str = "train",
                 size: int = 64, heldout_share: float = 0.1, keywords: bool = False) -> None:
        self.sets = []
        for part, root, key in ((EmojiOne, emojione_root, "data.train.emojione_root"),
                                (Twemoji, twemoji_root, "data.train.twemoji_root")):
            try:
                self.sets.append(part(root, split, size, heldout_share))
            except DatasetNotFoundError as missing:  # name this config's key for that set's root
                raise missing.under(key) from None
        if keywords:
            emojione, twemoji = self.sets
            by_caption = {name: words for _, name, words in emojione.items}
            twemoji.items = [(path, name, by_caption.get(name, [])) for path, name, _ in twemoji.items]
            emojione.keywords = twemoji.keywords = True
        self.offsets = [0, len(self.sets[0])]

    def __len__(self) -> int:
        return sum(len(part) for part in self.sets)

    def _locate(self, index: int) -> tuple[RobustDataset, int]:
        second = index >= self.offsets[1]
        return self.sets[second], index - self.offsets[second]

    def describe(self, index: int) -> str:
        part, local = self._locate(index)
        return part.describe(local)

    def load(self, index: int) -> dict:
        part, local = self._locate(index)
        return part.load(local)

    def all_captions(self) -> list[str]:
        return sorted(set(self.sets[0].all_captions()) | set(self.sets[1].all_captions()))
