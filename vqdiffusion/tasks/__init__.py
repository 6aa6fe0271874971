"""What ``train.py`` and ``sample.py`` run: build from the composed config, fit or sample, report."""

from .sampling import load_pipeline, release_pipeline, sample
from .training import train

__all__ = ["load_pipeline", "release_pipeline", "sample", "train"]
