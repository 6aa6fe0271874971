"""The sampling components of a diffusion model, built from its hyperparameters.

One builder for the training module (which then trains them) and for loading a training
checkpoint as a pipeline (which then fills them with the checkpoint's weights), so both agree
on every shape.
"""

from __future__ import annotations

from .conditions import Condition, make_condition
from .diffusion.schedule import NoiseSchedule, ScheduleConfig
from .models.transformer import TransformerConfig, VQDiffusionTransformer
from .models.vqvae import VQVAE, VQVAEConfig

__all__ = ["build_components", "schedule_config"]


def schedule_config(schedule: ScheduleConfig | dict | None) -> ScheduleConfig:
    """A ``ScheduleConfig`` as is, from its fields, or from ``{"preset": name, **overrides}``."""
    if isinstance(schedule, ScheduleConfig):
        return schedule
    schedule = dict(schedule or {})
    preset = schedule.pop("preset", None)
    return ScheduleConfig.preset(preset, **schedule) if preset else ScheduleConfig(**schedule)


def build_components(transformer: dict, tokenizer: dict, condition: Condition | dict,
                     schedule: ScheduleConfig | dict | None = None, text_encoder: str | None = None) -> dict:
    """Freshly initialised components: ``vqvae``, ``transformer``, ``schedule``, and what the
    condition adds: for text a cached ``text_encoder`` (loaded: it is frozen) and a zero
    ``null_embedding`` (None otherwise).

    Args:
        transformer: ``TransformerConfig`` fields; ``num_embeds``, ``height``, ``width``,
            ``context_dim`` / ``num_classes`` and ``num_timesteps`` come from the others.
        tokenizer: ``VQVAEConfig`` fields.
        condition: a :class:`~vqdiffusion.conditions.Condition` or its recorded dict.
        schedule: a ``ScheduleConfig``, its fields, or ``{"preset": name}``.
        text_encoder: loads the text encoder from here instead of the condition's path
            (a checkpoint opened on another machine).
    """
    # The tokenizer first: the transformer's initialisation draws after it, as it always has.
    vqvae = VQVAE(VQVAEConfig(**tokenizer))
    condition = make_condition(condition)
    encoder, null = condition.build(text_encoder)
    config = schedule_config(schedule)
    grid = vqvae.config.sample_size // vqvae.config.downsample_factor
    network = VQDiffusionTransformer(TransformerConfig(**{
        "height": grid, "width": grid, **transformer, "num_embeds": vqvae.num_codes,
        **condition.transformer_fields(encoder), "num_timesteps": config.num_timesteps,
    }))
    return {"vqvae": vqvae, "transformer": network, "schedule": NoiseSchedule(vqvae.num_codes, config),
            "text_encoder": encoder, "null_embedding": null}
