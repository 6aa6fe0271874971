"""Classifier-free guidance and truncation of p(x0 | x_t) (SPEC §5)."""

from __future__ import annotations

import math
import numbers

import torch

from ..ops.truncation import truncate_by_mass, truncation_kernel_available

__all__ = ["GUIDANCE_SCHEDULES", "classifier_free_guidance", "scheduled_guidance", "truncate", "truncate_fast",
           "check_truncation_rate", "check_guidance_scale", "check_guidance_schedule"]

GUIDANCE_SCHEDULES = ("constant", "linear")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_truncation_rate(rate: float) -> float:
    if not _is_real(rate) or not 0 < rate <= 1:
        raise ValueError(f"truncation_rate must be in (0, 1], got {rate!r}")
    return float(rate)


def check_guidance_scale(scale: float) -> float:
    # NaN would switch guidance off silently (NaN > 1 is false) and inf gives all-zero tokens
    if not _is_real(scale) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {scale!r}")
    return float(scale)


def check_guidance_schedule(schedule: str) -> str:
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {schedule!r}")
    return schedule


def scheduled_guidance(scale: float, t: torch.Tensor, num_timesteps: int, schedule: str) -> float | torch.Tensor:
    """The guidance scale at paper times ``t`` (B,): ``constant``: ``scale``; ``linear``:
    ``1 + 2 (scale - 1)(1 - t / T)`` as a (B, 1, 1) tensor, no guidance at t = T rising to
    ``2 scale - 1`` as t -> 0, the same mean over the chain's time. What is drawn first (the
    layout) keeps the model's diversity and what is drawn last follows the condition more
    (increasing guidance schedules: Wang et al. 2024)."""
    if schedule == "constant":
        return scale
    weight = 1 + 2 * (scale - 1) * (1 - t.float() / num_timesteps)  # (B,)
    return weight[:, None, None]


def classifier_free_guidance(
    log_p_uncond: torch.Tensor, log_p_cond: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """log p~ = log p_u + s (log p_c - log p_u), renormalised over classes (dim 1).

    Args:
        log_p_uncond, log_p_cond: (B, K, N) log-probabilities.
        scale: s, a number or a (B, 1, 1) tensor (one per sample).
    Returns:
        (B, K, N) normalised log-probabilities.
    """
    guided = log_p_uncond + scale * (log_p_cond - log_p_uncond)
    return guided - torch.logsumexp(guided, dim=1, keepdim=True)


def truncate(log_p: torch.Tensor, rate: float) -> torch.Tensor:
    """Keep, per token, the most likely classes whose mass *before* each is below ``rate``.

    The most likely class always survives; the rest get -inf. ``rate = 1`` returns the input
    untouched without any work (the check is on a Python float: no device sync).

    Args:
        log_p: (B, K, N) normalised log-probabilities.
    """
    if rate >= 1:
        return log_p
    sorted_log_p, _ = log_p.sort(dim=1, descending=True)  # (B, K, N)
    sorted_p = sorted_log_p.exp()
    mass_before = sorted_p.cumsum(dim=1) - sorted_p
    kept = (mass_before < rate).sum(dim=1, keepdim=True)  # (B, 1, N), >= 1
    threshold = sorted_log_p.gather(1, kept - 1)  # smallest kept log-probability
    return log_p.masked_fill(log_p < threshold, float("-inf"))


def truncate_fast(log_p: torch.Tensor, rate: float) -> torch.Tensor:
    """:func:`truncate` by a bisection kernel without a sort (one read and one write of the
    (B, K, N) input; :mod:`vqdiffusion.ops.truncation`) on a CUDA float32 input, by the sort
    otherwise. Keeps the same classes up to float32 summation order at the boundary."""
    if rate >= 1 or not truncation_kernel_available(log_p):
        return truncate(log_p, rate)
    return truncate_by_mass(log_p, rate)
