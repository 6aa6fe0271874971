"""Pipeline components from a training checkpoint (a Lightning ``.ckpt`` of the diffusion stage).

The checkpoint carries the module's hyperparameters (every shape) and all weights but the frozen
text encoder's, which loads from the path or hub id it was trained with. Read with
``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..components import build_components
from .state_dict import load_checked

__all__ = ["is_training_checkpoint", "load_checkpoint_components"]

# What a diffusion-stage checkpoint's hyperparameters must hold to rebuild its components.
REQUIRED_HYPERPARAMETERS = ("transformer", "tokenizer", "condition")


def is_training_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.suffix == ".ckpt" and path.is_file()


def load_checkpoint_components(path: str | os.PathLike, ema: bool = True, text_encoder: str | None = None) -> dict:
    """Components for ``VQDiffusionPipeline(**components)`` from a diffusion-stage ``.ckpt``.

    Args:
        path: the checkpoint file (e.g. ``checkpoints/step_0001000.ckpt`` or ``last.ckpt``).
        ema: the EMA weights (what validation and the exported pipeline use); False for the
            weights the optimiser holds.
        text_encoder: load the text encoder from here instead of the path recorded in the
            checkpoint (a checkpoint moved to another machine).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable training checkpoint: {error}") from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or any(key not in hparams for key in REQUIRED_HYPERPARAMETERS):
        raise ValueError(f"{path} is not a diffusion-stage checkpoint: its hyperparameters lack "
                         f"{list(REQUIRED_HYPERPARAMETERS)} (a tokenizer-stage checkpoint cannot sample)")
    components = build_components(hparams["transformer"], hparams["tokenizer"], hparams["condition"],
                                  hparams.get("schedule"), text_encoder=text_encoder)
    state = checkpoint["state_dict"]
    weights = "ema_" if ema else ""
    load_checked(components["vqvae"], _part(state, "tokenizer."), "tokenizer")
    load_checked(components["transformer"], _part(state, f"{weights}transformer."), f"{weights}transformer")
    if components["null_embedding"] is not None:
        load_checked(components["null_embedding"], _part(state, f"{weights}null_embedding."),
                     f"{weights}null_embedding")
    cached = components["text_encoder"]
    return {**components, "vqvae": components["vqvae"].eval(), "transformer": components["transformer"].eval(),
            "text_encoder": cached.encoder if cached is not None else None}


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
