"""Sanity check of a FID backend on real pixels: two disjoint halves of the Fashion-MNIST test set
must be far closer to each other than either is to noise.

    python scripts/fid_sanity.py [--backend fid-helper] [--count 2500] [--out docs/fid_sanity.json]

Each set holds ``--count`` images (28x28 grey as RGB, resized to 299 by the backend); the noise
set is uniform random pixels of the same size. Writes the values, protocol and timing as JSON and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vqdiffusion.data.digits import FASHION_ROOT, read_idx
from vqdiffusion.eval import DistributionMetrics, extract_features, load_feature_extractor


def batches(images: np.ndarray, size: int = 50):
    """uint8 (N, 28, 28) grey -> uint8 (B, 3, 28, 28) RGB batches."""
    for start in range(0, len(images), size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + size]))
        yield chunk[:, None].expand(-1, 3, -1, -1).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="fid-helper")
    parser.add_argument("--root", default=FASHION_ROOT)
    parser.add_argument("--count", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=Path("docs/fid_sanity.json"))
    args = parser.parse_args()
    images = read_idx(Path(args.root) / "t10k-images-idx3-ubyte.gz")
    if 2 * args.count > len(images):
        raise ValueError(f"--count {args.count}: the test set has {len(images)} images, so at most {len(images) // 2}")
    noise = np.random.default_rng(0).integers(0, 256, (args.count, 28, 28), dtype=np.uint8)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = load_feature_extractor(args.backend)
    start = time.perf_counter()
    sets = {name: extract_features(extractor, batches(array), device, total=-(-len(array) // 50))
            for name, array in (("half A", images[:args.count]), ("half B", images[args.count:2 * args.count]),
                                ("noise", noise))}
    seconds = time.perf_counter() - start
    rows = {}
    for pair in (("half A", "half B"), ("half A", "noise"), ("half B", "noise")):
        metrics = DistributionMetrics(sets[pair[0]].shape[1], kid_subsets=100, kid_subset_size=1000)
        metrics.update(sets[pair[0]], real=True)
        metrics.update(sets[pair[1]], real=False)
        rows[" vs ".join(pair)] = metrics.compute()
    result = {"backend": args.backend, "count_per_set": args.count, "dataset": "Fashion-MNIST test (t10k)",
              "resize": "28 -> 299 bilinear, no antialias", "feature_seconds": seconds,
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "pairs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| pair ({args.count} images each, {args.backend}) | FID | KID × 1000 |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {values['fid']:.2f} | {1000 * values['kid']:.2f} ± {1000 * values['kid_std']:.2f} |")


if __name__ == "__main__":
    main()
