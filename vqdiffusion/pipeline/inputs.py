"""The checks of a pipeline call's arguments: each bad value is named with what was expected."""

from __future__ import annotations

import torch

from ..diffusion.samplers import EditSpec, Sampler, sample_prior
from ..diffusion.schedule import NoiseSchedule, model_timestep
from ..models.conditioning import normalize_prompts
from ..models.transformer import TransformerConfig
from ..models.vqvae import VQVAE

__all__ = ["OUTPUT_TYPES", "check_components", "check_condition", "check_counts", "check_first_time", "edit_spec",
           "initial_tokens"]

OUTPUT_TYPES = ("pil", "np", "pt", "tokens", "latent")


def check_components(cfg: TransformerConfig, schedule: NoiseSchedule, vqvae: VQVAE) -> None:
    """The components of one model agree where sampling needs them to.

    The transformer predicts codes ``0..K-1`` and the schedule must walk the same ``K`` codes +
    [MASK]. The codebook may hold more rows than ``K`` (they are never sampled), but not fewer.
    The transformer's timestep table may be shorter than the schedule: such a model samples
    only chains that start inside the table (:func:`check_first_time`). Both hold for the
    folders diffusers' VQ-Diffusion pipeline runs, its own test models among them.
    """
    if schedule.num_codes != cfg.num_embeds:
        raise ValueError(f"components disagree on the number of codes: the transformer predicts {cfg.num_embeds} "
                         f"codes + [MASK], the schedule walks {schedule.num_codes} + [MASK]")
    if vqvae.num_codes < cfg.num_embeds:
        raise ValueError(f"components disagree on the number of codes: the transformer predicts {cfg.num_embeds} "
                         f"codes but the vqvae's codebook holds only {vqvae.num_codes}")


def check_first_time(cfg: TransformerConfig, sampler: Sampler, first_time: int) -> None:
    """The chain's first (highest) paper time must have a row in the transformer's timestep table."""
    if model_timestep(first_time) >= cfg.num_timesteps:
        raise ValueError(
            f"the {sampler.name!r} sampler would start at timestep {model_timestep(first_time)}, but this transformer "
            f"embeds timesteps 0..{cfg.num_timesteps - 1} only (its timestep table is shorter than its schedule); "
            f"sample it with sampler='diffusers' and num_inference_steps <= {cfg.num_timesteps} (diffusers' "
            f"truncated chain: the most diffusers itself can run)")


def check_condition(cfg: TransformerConfig, prompt, class_labels,
                    batch_size) -> tuple[list[str] | None, int, torch.Tensor | None]:
    """(prompts or None, number of prompts / labels / images, labels or None) for the model's condition."""
    if cfg.context_dim is not None:
        if prompt is None:
            raise ValueError("this is a text-to-image pipeline: pass a prompt (str or list of str)")
        prompts = normalize_prompts(prompt)
        return prompts, len(prompts), None
    if prompt is not None:
        raise ValueError("this pipeline takes no text; use class_labels= or batch_size=")
    if cfg.num_classes is not None:
        if class_labels is None:
            raise ValueError(f"this pipeline is class-conditional: pass class_labels in [0, {cfg.num_classes - 1}]")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= cfg.num_classes:
            raise ValueError(f"class_labels must be in [0, {cfg.num_classes - 1}], got {labels.tolist()}")
        return None, labels.numel(), labels
    count = 1 if batch_size is None else batch_size
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return None, count, None

def check_counts(schedule: NoiseSchedule, num_images_per_prompt, callback_steps, num_inference_steps,
                 output_type) -> None:
    steps = schedule.num_timesteps
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    if not isinstance(callback_steps, int) or callback_steps < 1:
        raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= steps:
        raise ValueError(f"num_inference_steps must be an integer in [1, {steps}], got {num_inference_steps!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")

def initial_tokens(cfg: TransformerConfig, schedule: NoiseSchedule, latents, batch: int, sampler: Sampler,
                   generator, device: torch.device) -> torch.Tensor:
    """(B, N) x_T: the caller's ``latents`` (checked), or a draw from the sampler's prior."""
    shape = (batch, cfg.num_tokens)
    if latents is None:
        if sampler.name == "diffusers":  # diffusers always starts from all-[MASK]
            return torch.full(shape, schedule.mask_index, device=device)
        return sample_prior(schedule, shape, device, generator)
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} (batch, tokens), got {tuple(latents.shape)}")
    if latents.dtype.is_floating_point or latents.min() < 0 or latents.max() > cfg.num_embeds:
        raise ValueError(
            f"latents must be integer token indices in [0, {cfg.num_embeds}] ({cfg.num_embeds} = [MASK])"
        )
    return latents.to(device, torch.long)

def edit_spec(cfg: TransformerConfig, schedule: NoiseSchedule, tokens, start_step, keep_mask, batch: int,
              device: torch.device) -> EditSpec | None:
    if tokens is None:
        if start_step is not None or keep_mask is not None:
            raise ValueError("edit_start_step and keep_mask need edit_tokens")
        return None
    tokens = tokens.reshape(tokens.shape[0], -1).to(device, torch.long)
    if tuple(tokens.shape) != (batch, cfg.num_tokens):
        raise ValueError(f"edit_tokens must hold ({batch}, {cfg.num_tokens}) codes, got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= cfg.num_embeds:
        raise ValueError(f"edit_tokens must be codes in [0, {cfg.num_embeds - 1}]")
    if start_step is not None and not 1 <= start_step <= schedule.num_timesteps:
        raise ValueError(f"edit_start_step must be in [1, {schedule.num_timesteps}], got {start_step}")
    if keep_mask is not None:
        keep_mask = keep_mask.reshape(batch, -1).to(device, torch.bool)
    return EditSpec(tokens, start_step, keep_mask)
