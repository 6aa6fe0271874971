"""Import and export: diffusers-format folders and the authors' original checkpoints."""

from .diffusers_format import load_pipeline_components, save_pipeline
from .state_dict import load_checked

__all__ = ["load_checked", "load_pipeline_components", "save_pipeline"]
