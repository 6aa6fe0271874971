"""Convert any dataset config of this project into webdataset shards.

    python scripts/make_shards.py data=coco out=data/shards/coco [split=val] [size=256] [per_shard=1000]
    python scripts/make_shards.py data=coco out=data/shards/coco_tokens tokenizer=<run or VQModel folder>

Images are written as resized/cropped JPEG (``size``), with the caption (.txt) and the label
(.cls); complete shards are kept, so an interrupted conversion resumes. Train on the result with
``data=webdataset data.train.urls=data/shards/coco``. With ``tokenizer=`` each sample also
carries its codes (``tokens.npy``), and the diffusion stage reads them instead of running the
tokenizer (``keep_images=false`` leaves the pixels out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_shards")
def main(cfg: DictConfig) -> None:
    from vqdiffusion.data.robust import DatasetNotFoundError
    from vqdiffusion.data.shards import write_shards

    out = cfg.out
    if not out:
        raise SystemExit("error: give the output folder: out=data/shards/<name>")
    split = cfg.get("split", "train")
    with open_dict(cfg):
        spec = cfg.data[split]
        if spec is None:
            raise SystemExit(f"error: data={cfg.data.train._target_} has no {split!r} split")
        if cfg.get("size"):
            spec.size = cfg.size
        if "crop" in spec:
            spec.crop = "center"  # shards hold the canonical view; training crops again
        if "flip" in spec:
            spec.flip = False
    try:
        dataset = instantiate(spec)
    except Exception as error:  # noqa: BLE001 - unwrap Hydra's wrapper for the helpful message
        cause = error.__cause__ if isinstance(error.__cause__, DatasetNotFoundError) else error
        raise SystemExit(f"error: {cause}") from None
    tokenizer = None
    if cfg.get("tokenizer"):
        import torch

        from vqdiffusion.tasks.training import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer).to("cuda" if torch.cuda.is_available() else "cpu")
    shards = write_shards(dataset, out, samples_per_shard=cfg.get("per_shard", 1000), limit=cfg.get("limit"),
                          tokenizer=tokenizer, keep_images=cfg.get("keep_images", True))
    print(f"{len(shards)} shards, {min(len(dataset), cfg.get('limit') or len(dataset))} samples in {out}")


if __name__ == "__main__":
    main()
