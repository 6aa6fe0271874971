"""Train VQ-Diffusion: ``python train.py experiment=quickstart`` (see configs/)."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vqdiffusion.data.robust import DatasetNotFoundError
    from vqdiffusion.tasks import train

    try:
        metrics = train(cfg)
    except DatasetNotFoundError as missing:
        print(f"error: dataset not found\n{missing}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get("diffusion", {}).get("train_loss")  # what a sweeper optimises


if __name__ == "__main__":
    main()
