"""Train VQ-Diffusion: ``python train.py experiment=quickstart`` (see configs/)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vqdiffusion.tasks import train

    metrics = train(cfg)
    return metrics.get("diffusion", {}).get("train_loss")  # what a sweeper optimises


if __name__ == "__main__":
    main()
