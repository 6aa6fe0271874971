"""The model card (``README.md``) of a saved pipeline folder, as the hub shows it.

Written from the folder's own component configs, so it describes what the folder holds, plus
what only the caller knows: the model it started from, the training data, the sampler settings
it was validated with and the numbers measured on it (a training run's ``metrics.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.atomic import atomic_write_bytes
from ..version import __version__
from .diffusers_format import (
    read_json,
    schedule_config_from_diffusers,
    transformer_config_from_folder,
    vqvae_config_from_diffusers,
)

__all__ = ["model_card", "write_model_card"]

CARD_FILE = "README.md"


def _condition(folder: Path, transformer) -> tuple[str, str, str]:
    """(pipeline tag, a line on the condition, how to call it)."""
    if transformer.context_dim is not None:
        encoder = read_json(folder / "text_encoder" / "config.json") if (folder / "text_encoder").is_dir() else {}
        name = encoder.get("_name_or_path") or encoder.get("model_type", "a text model")
        return ("text-to-image", f"text, through the frozen encoder `{name}` (width {transformer.context_dim})",
                'pipe("a red circle", ')
    if transformer.num_classes is not None:
        return ("unconditional-image-generation", f"class labels 0..{transformer.num_classes - 1}",
                "pipe(class_labels=[0, 1, 2], ")
    return "unconditional-image-generation", "none (unconditional)", "pipe(batch_size=4, "


def _front_matter(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {json.dumps(item)}" for item in value)
        elif value is not None:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join([*lines, "---"])


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((f"{prefix}{key}", value))
    return rows


def model_card(folder: str | Path, *, base_model: str | None = None, training_data: str | None = None,
               sampler: dict | None = None, metrics: dict | None = None) -> str:
    """The card's text for the pipeline folder ``folder``.

    Args:
        base_model: the model this one started from (a hub id or path), if any.
        training_data: a line naming the training data.
        sampler: the call settings the model is meant for, e.g. ``{"num_inference_steps": 50,
            "guidance_scale": 3.0, "truncation_rate": 0.86, "sampler": "maskgit", "sampler_options":
            {"order": "halton"}}``.
        metrics: numbers measured on the model (nested dicts are flattened; non-numbers skipped).
    """
    folder = Path(folder)
    transformer = transformer_config_from_folder(read_json(folder / "transformer" / "config.json"))
    vqvae = vqvae_config_from_diffusers(read_json(folder / "vqvae" / "config.json"))
    _, schedule = schedule_config_from_diffusers(read_json(folder / "scheduler" / "scheduler_config.json"))
    tag, condition, call = _condition(folder, transformer)
    factor = vqvae.downsample_factor
    size = f"{transformer.height * factor}×{transformer.width * factor}"
    settings = {"num_inference_steps": 100, "guidance_scale": 5.0, "truncation_rate": 1.0, **(sampler or {})}
    arguments = ", ".join(f"{key}={value!r}" for key, value in settings.items())
    parts = [
        _front_matter({"library_name": "vqdiffusion", "pipeline_tag": tag, "base_model": base_model,
                       "tags": ["vq-diffusion", "discrete-diffusion", "vqdiffusion"]}),
        "",
        f"# VQ-Diffusion, {size} pixels",
        "",
        "A VQ-Diffusion model (mask-and-replace discrete diffusion over VQ-VAE tokens) in the diffusers "
        f"folder layout, saved by vqdiffusion {__version__}.",
        "",
        "| | |",
        "|---|---|",
        f"| images | {size} pixels, {transformer.height}×{transformer.width} tokens of a "
        f"{vqvae.num_vq_embeddings}-code VQ-VAE (f{factor}) |",
        f"| transformer | {transformer.num_layers} layers, width {transformer.width_model}, "
        f"{transformer.num_embeds} codes + [MASK] |",
        f"| noise schedule | T = {schedule.num_timesteps}, mask share {schedule.gamma_cum_start:g} → "
        f"{schedule.gamma_cum_end:g}, kept share {schedule.alpha_cum_start:g} → {schedule.alpha_cum_end:g} |",
        f"| condition | {condition} |",
    ]
    if base_model:
        parts.append(f"| started from | `{base_model}` |")
    if training_data:
        parts.append(f"| training data | {training_data} |")
    parts += [
        "",
        "## Use",
        "",
        "```python",
        "from vqdiffusion import VQDiffusionPipeline",
        "",
        'pipe = VQDiffusionPipeline.from_pretrained("<this folder or hub id>")',
        f"images = {call}{arguments}).images",
        "```",
    ]
    rows = _flatten(metrics or {})
    if rows:
        parts += ["", "## Measured", "", "| metric | value |", "|---|---|"]
        parts += [f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
                  for name, value in rows]
    return "\n".join(parts) + "\n"


def write_model_card(folder: str | Path, **fields) -> Path:
    """Write ``README.md`` into the pipeline folder (atomically); ``fields`` as :func:`model_card`."""
    path = Path(folder) / CARD_FILE
    atomic_write_bytes(path, model_card(folder, **fields).encode())
    return path
