"""FID floors of a dataset at the evaluation protocol: numbers no model trained here can beat.

    python bench/fid_floors.py data=fashion_mnist [--tokenizers RUN/tokenizer ...] [--count 10000] \
        [--backend fid-helper] [--no-train] [data.train.root=...]

Positional arguments are ``train.py`` overrides that pick the data (its size is the protocol's
resolution). Against the first ``--count`` images of the validation split (for Fashion-MNIST the
test set), through the same extractor, FID, KID and pixel rounding as ``sample.py eval.metrics=[fid,kid]``:

- ``train``: ``--count`` training images spread evenly through the split (a split stored source
  by source, as the emoji's, would otherwise give one source's images only): the metric's own
  floor, what two samples of the real distribution score at this size.
- ``reconstructions``: each tokenizer's encode + decode of the validation images (rFID), with
  their PSNR: a diffusion model over a tokenizer's codes cannot score below its rFID.

KID is reported beside FID because FID's bias grows as the sets shrink: at a few hundred held-out
images (the emoji set) the metric's own FID floor is far from 0, KID's is not. Rows go to
``bench/results/fid_floors.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import Results
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import Subset

from vqdiffusion.eval.distribution import DistributionMetrics, extract_features
from vqdiffusion.eval.features import load_feature_extractor
from vqdiffusion.eval.run import BATCH, dataset_batches, to_uint8
from vqdiffusion.tasks.training import load_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@torch.no_grad()
def reconstruction_batches(vqvae, dataset, count: int, device, psnr: list):
    """uint8 batches of the tokenizer's reconstructions of the first ``count`` images; appends each
    batch's (squared error sum, pixel count) to ``psnr``."""
    for start in range(0, count, BATCH):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(count, start + BATCH))]).to(device)
        recon = vqvae.decode(vqvae.encode(images)).float().clamp(-1, 1)
        psnr.append((float(((recon - images) ** 2).sum()), images.numel()))
        yield to_uint8(recon)


def distance(reference: torch.Tensor, generated: torch.Tensor, kid_subset_size: int) -> dict[str, float]:
    """FID and KID (mean, std over 100 subsets) between two sets of (N, D) features, computed as
    ``sample.py`` computes them."""
    metrics = DistributionMetrics(reference.shape[1], kid_subset_size=kid_subset_size)
    metrics.update(reference, real=True)
    metrics.update(generated, real=False)
    values = metrics.compute()
    return {"fid": values["fid"], "kid": values["kid"], "kid_std": values["kid_std"],
            "kid_subset_size": values["kid_subset_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides choosing the data, e.g. data=fashion_mnist")
    parser.add_argument("--tokenizers", nargs="*", default=[], help="tokenizer folders, run folders or hub ids")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--backend", default="fid-helper", help="fid-helper, torch-fidelity or a TorchScript path")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="capped by the set size, as in sample.py")
    parser.add_argument("--no-train", action="store_true",
                        help="only the tokenizers' rows (the training split need not be on disk)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["output_dir=.", *args.overrides])
    val_set = instantiate(cfg.data.val)
    train_set = None if args.no_train else instantiate(cfg.data.train)
    count = min(args.count, len(val_set), *([] if train_set is None else [len(train_set)]))
    size = tuple(val_set[0]["image"].shape[-2:])
    extractor = load_feature_extractor(args.backend)
    results = Results("fid_floors")
    stamp = {"data": cfg.data.train._target_.rsplit(".", 1)[-1], "size": f"{size[0]}x{size[1]}", "count": count,
             "backend": Path(args.backend).name}

    start = time.perf_counter()
    reference = extract_features(extractor, dataset_batches(val_set, count), device, progress=False)
    if train_set is not None:
        spread = torch.linspace(0, len(train_set) - 1, count).round().long().tolist()
        train = extract_features(extractor, dataset_batches(Subset(train_set, spread), count), device, progress=False)
        row = {**stamp, "set": "train", "tokenizer": "", **distance(reference, train, args.kid_subset_size),
               "seconds": time.perf_counter() - start}
        results.append(row)
        print(row)
    for path in args.tokenizers:
        start = time.perf_counter()
        vqvae = load_tokenizer(path).to(device)
        errors: list[tuple[float, int]] = []
        features = extract_features(extractor, reconstruction_batches(vqvae, val_set, count, device, errors),
                                    device, progress=False)
        mse = sum(e for e, _ in errors) / sum(n for _, n in errors)
        row = {**stamp, "set": "reconstructions", "tokenizer": path,
               **distance(reference, features, args.kid_subset_size),
               "psnr_db": float(10 * torch.log10(torch.tensor(4.0 / mse))), "codes": vqvae.num_codes,
               "tokens": "x".join(str(s // vqvae.config.downsample_factor) for s in size),
               "seconds": time.perf_counter() - start}
        results.append(row)
        print(row)


if __name__ == "__main__":
    main()
