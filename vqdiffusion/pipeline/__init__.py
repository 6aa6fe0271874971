"""The user-facing pipeline (diffusers' ``VQDiffusionPipeline`` call) and the checks of its inputs."""

from ..speed import SpeedSettings
from .pipeline import ImagePipelineOutput, VQDiffusionPipeline

__all__ = ["ImagePipelineOutput", "SpeedSettings", "VQDiffusionPipeline"]
