"""vqdiffusion: training and sampling VQ-Diffusion models (Gu et al. 2022; Tang et al. 2022)."""

from .pipeline import ImagePipelineOutput, VQDiffusionPipeline
from .version import __version__

__all__ = ["ImagePipelineOutput", "VQDiffusionPipeline", "__version__"]
