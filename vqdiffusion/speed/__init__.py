"""The speed layer: ``torch.compile`` and CUDA graphs, FP8 matmuls (sampling and training), the SDPA
kernel choice, and the fast path that applies them to a pipeline's networks. Imports nothing of the
package above it, so the samplers and the loss can compile their step math through it."""

from .attention import ATTENTION_BACKENDS, attention_backend
from .compile import COMPILE_MODES, begin_graph_step, compile_fast, compiled, inductor_options, uses_cuda_graphs
from .fast_path import FastPath, SpeedSettings
from .fp8 import E4M3_MAX, FP8_SCALINGS, Float8Linear, to_float8
from .fp8_training import FP8_TRAINING_RECIPES, Float8TrainingLinear, float8_linear, to_float8_training

__all__ = [
    "ATTENTION_BACKENDS",
    "COMPILE_MODES",
    "E4M3_MAX",
    "FP8_SCALINGS",
    "FP8_TRAINING_RECIPES",
    "FastPath",
    "Float8Linear",
    "Float8TrainingLinear",
    "SpeedSettings",
    "attention_backend",
    "begin_graph_step",
    "compile_fast",
    "compiled",
    "float8_linear",
    "inductor_options",
    "to_float8",
    "to_float8_training",
    "uses_cuda_graphs",
]
