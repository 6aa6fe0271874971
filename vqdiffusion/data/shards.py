"""webdataset shards: streamed, split across ranks and workers, and written by scripts/make_shards.py.

A sample in a shard is ``<key>.jpg|png|webp`` plus any of ``<key>.txt`` (caption),
``<key>.json`` (``{"caption": ..., "label": ...}``), ``<key>.cls`` (integer label) and
``<key>.tokens.npy`` (the frozen tokenizer's codes, (h, w) int16: pre-tokenised shards let the
diffusion stage skip the tokenizer; the image may then be left out).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .robust import DatasetNotFoundError
from .transforms import ImageTransform, open_rgb

__all__ = ["ShardDataset", "expand_shards", "write_shards"]

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TOKENIZE_CHUNK = 64  # samples decoded (and encoded by the tokenizer) at a time when writing shards
SHARD_LAYOUT = "root/\n  shard-000000.tar  shard-000001.tar ...   (each: <key>.jpg + <key>.txt|json|cls)"


def expand_shards(urls: str | list[str]) -> list[str]:
    """Shard paths from a list, a brace pattern (``shard-{000000..000099}.tar``), a folder or a glob."""
    import braceexpand

    if isinstance(urls, (list, tuple)):
        return [str(u) for u in urls]
    path = Path(urls)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
    elif any(c in urls for c in "*?["):
        found = sorted(glob.glob(urls))
    else:
        found = list(braceexpand.braceexpand(urls))
        if not urls.startswith(("http://", "https://", "pipe:", "s3://", "gs://")):
            found = [u for u in found if Path(u).exists()]
    if not found:
        raise DatasetNotFoundError("webdataset shards", urls, SHARD_LAYOUT,
                                   "python scripts/make_shards.py data=<dataset> out=<folder>",
                                   config_key="data.train.urls", placeholder="shards")
    return found


class ShardDataset(IterableDataset):
    """Streams samples from shards. ``resampled=True`` (training) draws shards with replacement
    forever, seeded per (seed, rank, worker), so ranks never run out unevenly; ``False`` reads
    each shard once, split across ranks then workers (validation, conversion).

    Bad samples and truncated shards are skipped with a warning and reported in the next
    sample's ``skipped`` field (see ``lit.callbacks.BadSampleReport``).
    """

    def __init__(self, urls: str | list[str], size: int = 256, crop: str = "center", flip: bool = False,
                 resampled: bool = True, shuffle_buffer: int = 1000, seed: int = 0, length: int | None = None) -> None:
        self.urls = expand_shards(urls)
        self.transform = ImageTransform(size, crop, flip)
        self.resampled, self.shuffle_buffer, self.seed, self.length = resampled, shuffle_buffer, seed, length
        self._pending: list[str] = []

    def _on_error(self, error: Exception) -> bool:
        message = f"{type(error).__name__}: {error}"
        log.warning("webdataset: skipping after %s", message)
        self._pending.append(message)
        return True  # keep going

    def _skip_truncated(self, shards: Iterator[dict]) -> Iterator[dict]:
        """Local shards that end mid-record are skipped whole (tarfile's stream mode would silently
        hand over the cut-off member); remote ones are trusted to the reader's error handling."""
        for shard in shards:
            if is_truncated_tar(shard["url"]):
                self._on_error(OSError(f"truncated shard {shard['url']} (not a whole number of 512-byte "
                                       "records or no end-of-archive marker)"))
                continue
            yield shard

    def _pipeline(self):
        import webdataset as wds

        if self.resampled:
            stages = [wds.ResampledShards(self.urls, seed=self.seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(self.urls), wds.split_by_node, wds.split_by_worker]
        stages += [self._skip_truncated, wds.tarfile_to_samples(handler=self._on_error)]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, rng=random.Random(self.seed)))
        return wds.DataPipeline(*stages)

    def decode(self, raw: dict) -> dict:
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        if image_key is None and "tokens.npy" not in raw:
            raise ValueError(f"no image ({'/'.join(IMAGE_KEYS)}) or tokens.npy in sample {raw.get('__key__')!r}")
        caption, label = "", -1
        if "json" in raw:
            meta = json.loads(raw["json"])
            caption, label = str(meta.get("caption", "")), int(meta.get("label", -1))
        if "txt" in raw:
            caption = raw["txt"].decode("utf-8").strip()
        if "cls" in raw:
            label = int(raw["cls"].decode().strip())
        sample = {"caption": caption, "label": label}
        if image_key is not None:
            sample["image"] = self.transform(open_rgb(raw[image_key]))
        if "tokens.npy" in raw:
            sample["tokens"] = torch.from_numpy(np.load(io.BytesIO(raw["tokens.npy"])).astype(np.int64))
        return sample

    def __iter__(self) -> Iterator[dict]:
        for raw in self._pipeline():
            try:
                sample = self.decode(raw)
            except Exception as error:  # noqa: BLE001 - one bad sample never ends the stream
                self._on_error(ValueError(f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}: {error}"))
                continue
            sample["skipped"] = "; ".join(self._pending)
            self._pending.clear()
            yield sample

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("ShardDataset has no length unless `length` is given")
        return self.length


def is_truncated_tar(url: str) -> bool:
    """True for a local tar file that is cut short: its size is not a multiple of 512 bytes or it
    lacks the two zero blocks that end every complete archive."""
    path = Path(url.removeprefix("file:"))
    if "://" in url or url.startswith("pipe:") or not path.is_file():
        return False
    size = path.stat().st_size
    if size < 1024 or size % 512:
        return True
    with open(path, "rb") as f:
        f.seek(-1024, 2)
        tail = f.read()
    # Archives are padded to 10 kB records, so the marker may sit before trailing zeros: checking
    # that the final 1024 bytes are zero is enough (a cut through a member leaves data there).
    return any(tail)


def write_shards(dataset, out: str | Path, samples_per_shard: int = 1000, limit: int | None = None,
                 image_format: str = "jpg", progress: bool = True, tokenizer=None,
                 keep_images: bool = True) -> list[Path]:
    """Writes ``dataset`` (map-style, samples as dicts) into ``out/shard-%06d.tar``.

    With a ``tokenizer`` (a VQVAE), each sample also gets its codes (``tokens.npy``), encoded
    from the exact pixels of the sample; ``keep_images=False`` then leaves the images out.
    Each shard is written under a temporary name and renamed when complete, and existing
    complete shards are kept: an interrupted conversion resumes where it stopped.
    """
    import tarfile

    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    shards = []
    bar = tqdm(total=total, desc="shards", disable=not progress)
    for shard_index, start in enumerate(range(0, total, samples_per_shard)):
        final = out / f"shard-{shard_index:06d}.tar"
        stop = min(start + samples_per_shard, total)
        shards.append(final)
        if final.exists():
            bar.update(stop - start)
            continue
        partial = final.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            # Chunks of TOKENIZE_CHUNK samples: batched encoding without holding a whole shard of
            # decoded float images in memory.
            for chunk_start in range(start, stop, TOKENIZE_CHUNK):
                indices = range(chunk_start, min(chunk_start + TOKENIZE_CHUNK, stop))
                samples = [dataset[index] for index in indices]
                tokens = _tokenize([s["image"] for s in samples], tokenizer) if tokenizer is not None else None
                for offset, (index, sample) in enumerate(zip(indices, samples)):
                    files = _encode(sample, image_format)
                    if tokens is not None:
                        buffer = io.BytesIO()
                        np.save(buffer, tokens[offset])
                        files["tokens.npy"] = buffer.getvalue()
                        if not keep_images:
                            del files[image_format]
                    for name, payload in files.items():
                        info = tarfile.TarInfo(f"{index:09d}.{name}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    bar.update(1)
        partial.replace(final)
    bar.close()
    return shards


@torch.no_grad()
def _tokenize(images: list[torch.Tensor], tokenizer) -> np.ndarray:
    """(n, h, w) int16 codes of the images, encoded as one batch on the tokenizer's device."""
    device = next(tokenizer.parameters()).device
    return tokenizer.encode(torch.stack(images).to(device)).cpu().numpy().astype(np.int16)


def _encode(sample: dict, image_format: str) -> dict[str, bytes]:
    from ..utils.images import signed_to_pil

    image = signed_to_pil(sample["image"].unsqueeze(0))[0]
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if image_format == "jpg" else image_format.upper(), quality=95)
    label = sample.get("label", -1)
    label = int(label.item() if isinstance(label, torch.Tensor) else label)
    files = {image_format: buffer.getvalue(), "txt": str(sample.get("caption", "")).encode()}
    if label >= 0:
        files["cls"] = str(label).encode()
    return files
