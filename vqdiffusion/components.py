"""The sampling components of a diffusion model, built from its hyperparameters.

One builder for the training module (which then trains them) and for loading a training
checkpoint as a pipeline (which then fills them with the checkpoint's weights), so both agree
on every shape.
"""

from __future__ import annotations

from .diffusion.schedule import NoiseSchedule, ScheduleConfig
from .models.conditioning import CachedTextEncoder, LearnedNullEmbedding
from .models.transformer import TransformerConfig, VQDiffusionTransformer
from .models.vqvae import VQVAE, VQVAEConfig

__all__ = ["CONDITION_KINDS", "build_components", "condition_kind", "schedule_config"]

CONDITION_KINDS = ("text", "class", "none")


def condition_kind(condition: dict) -> str:
    """``condition["kind"]`` (text when absent), checked against :data:`CONDITION_KINDS`."""
    kind = condition.get("kind", "text")
    if kind not in CONDITION_KINDS:
        raise ValueError(f"condition.kind must be one of {CONDITION_KINDS}, got {kind!r}")
    return kind


def schedule_config(schedule: dict | None) -> ScheduleConfig:
    """``ScheduleConfig`` fields, or ``{"preset": name, **overrides}``."""
    schedule = dict(schedule or {})
    preset = schedule.pop("preset", None)
    return ScheduleConfig.preset(preset, **schedule) if preset else ScheduleConfig(**schedule)


def build_components(transformer: dict, tokenizer: dict, condition: dict, schedule: dict | None = None,
                     text_encoder: str | None = None) -> dict:
    """Freshly initialised components: ``vqvae``, ``transformer``, ``schedule``, and for text
    models a cached ``text_encoder`` (loaded: it is frozen) and a zero ``null_embedding``.

    Args:
        transformer: ``TransformerConfig`` fields; ``num_embeds``, ``height``, ``width``,
            ``context_dim`` / ``num_classes`` and ``num_timesteps`` come from the others.
        tokenizer: ``VQVAEConfig`` fields.
        condition: ``{"kind": "text", "encoder": path or hub id, "max_length": L}``,
            ``{"kind": "class", "num_classes": C}`` or ``{"kind": "none"}``.
        schedule: ``ScheduleConfig`` fields, or ``{"preset": name}``.
        text_encoder: loads the text encoder from here instead of ``condition["encoder"]``
            (a checkpoint opened on another machine).
    """
    # The tokenizer first: the transformer's initialisation draws after it, as it always has.
    vqvae = VQVAE(VQVAEConfig(**tokenizer))
    kind = condition_kind(condition)
    encoder = null = context_dim = num_classes = None
    if kind == "text":
        encoder = CachedTextEncoder.from_pretrained(text_encoder or condition["encoder"],
                                                    max_length=condition.get("max_length"))
        context_dim = encoder.width
        null = LearnedNullEmbedding(encoder.max_length, context_dim)
    elif kind == "class":
        num_classes = condition.get("num_classes")
        if num_classes is None:
            raise ValueError("condition kind 'class' needs num_classes")
    config = schedule_config(schedule)
    grid = vqvae.config.sample_size // vqvae.config.downsample_factor
    network = VQDiffusionTransformer(TransformerConfig(**{
        "height": grid, "width": grid, **transformer, "num_embeds": vqvae.num_codes,
        "context_dim": context_dim, "num_classes": num_classes, "num_timesteps": config.num_timesteps,
    }))
    return {"vqvae": vqvae, "transformer": network, "schedule": NoiseSchedule(vqvae.num_codes, config),
            "text_encoder": encoder, "null_embedding": null}
