"""Sample images from a trained model: ``python sample.py checkpoint=... prompt="a red circle"``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    from vqdiffusion.tasks.sampling import end_distributed, sample

    sample(cfg)
    end_distributed()  # under torchrun: close the process group before exit


if __name__ == "__main__":
    main()
