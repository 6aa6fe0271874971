"""The checks of a pipeline call's arguments: each bad value is named with what was expected."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ..diffusion.samplers import EditSpec, Sampler, sample_prior
from ..diffusion.schedule import NoiseSchedule, model_timestep
from ..models.conditioning import normalize_prompts
from ..models.transformer import TransformerConfig
from ..models.vqvae import VQVAE

__all__ = ["OUTPUT_TYPES", "check_components", "check_condition", "check_counts", "check_first_time",
           "check_generator", "edit_spec", "initial_tokens"]

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
        if class_labels is not None:
            raise ValueError("this is a text-to-image pipeline: it takes prompts, not class_labels")
        prompts = normalize_prompts(prompt)
        return prompts, len(prompts), None
    if prompt is not None:
        raise ValueError("this pipeline takes no text; use class_labels= or batch_size=")
    if class_labels is not None and cfg.num_classes is None:
        raise ValueError("this pipeline is unconditional: it takes no class_labels; use batch_size=")
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

def _count(value) -> int | None:
    """A whole number (numpy's too) as an int; None for anything else, bools included."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def check_counts(most_steps: int, num_images_per_prompt, callback_steps, num_inference_steps,
                 output_type) -> tuple[int, int, int]:
    """(num_images_per_prompt, callback_steps, num_inference_steps) as ints, each checked;
    ``most_steps``: the sampler's largest step count (``Sampler.most_inference_steps``)."""
    per_prompt, every, count = _count(num_images_per_prompt), _count(callback_steps), _count(num_inference_steps)
    if per_prompt is None or per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    if every is None or every < 1:
        raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")
    if count is None or not 1 <= count <= most_steps:
        raise ValueError(f"num_inference_steps must be an integer in [1, {most_steps}], got {num_inference_steps!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    return per_prompt, every, count


def check_generator(generator) -> None:
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(f"generator must be a torch.Generator or a list of them (one per image), got "
                         f"{type(generator).__name__}: {generator!r}")

def initial_tokens(cfg: TransformerConfig, schedule: NoiseSchedule, latents, batch: int, sampler: Sampler,
                   generator, device: torch.device) -> torch.Tensor:
    """(B, N) x_T: the caller's ``latents`` (checked), or a draw from the sampler's prior."""
    shape = (batch, cfg.num_tokens)
    if latents is None:
        if sampler.starts_from_mask:
            return torch.full(shape, schedule.mask_index, device=device)
        return sample_prior(schedule, shape, device, generator)
    if not isinstance(latents, (torch.Tensor, np.ndarray)):
        raise ValueError(f"latents must be a tensor or numpy array of token indices, got {type(latents).__name__}")
    latents = torch.as_tensor(latents)
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
