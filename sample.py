"""Sample images from a trained model: ``python sample.py checkpoint=... prompt="a red circle"``."""

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def discard_unused_run_folder(cfg: DictConfig) -> None:
    """Remove the run folder Hydra made for this job if the job stopped before writing into it."""
    if cfg.output_dir:
        return
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "sample.log"}:
        shutil.rmtree(folder)
        for parent in (folder.parent, folder.parent.parent):  # outputs/samples/, outputs/ if nothing else is there
            try:
                parent.rmdir()
            except OSError:
                break


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    from vqdiffusion.tasks.sample_folder import SampleFolderError
    from vqdiffusion.tasks.sampling import end_distributed, sample

    try:
        sample(cfg)
    except (ValueError, FileNotFoundError, SampleFolderError) as mistake:  # the user's to fix: no traceback
        discard_unused_run_folder(cfg)
        print(f"error: {mistake}", file=sys.stderr)
        raise SystemExit(2) from None
    end_distributed()  # under torchrun: close the process group before exit


if __name__ == "__main__":
    main()
