"""First-hitting sampling for mask-only schedules (Zheng et al. 2024, "Masked diffusion models are
secretly time-agnostic masked models and exploit inaccurate categorical sampling").

Under a mask-only schedule each token is revealed once, at its own time, and ``gbar`` is the
distribution function of that time. Going backwards from a mask share ``g`` with ``n`` tokens
still masked, their reveal times are ``n`` independent draws below ``g`` (in mask-share units),
so the next reveal comes at ``g * U^(1/n)``, the one after it at that times ``U'^(1/(n-1))``, and
so on. The sampler draws these times instead of walking a time grid, reveals a uniformly chosen
masked token at each, and never spends a network call on a step in which nothing is revealed.

With ``num_inference_steps`` at least the number of masked tokens (or None) every call reveals
exactly one token: the model's own distribution, sampled without discretisation error. With
fewer calls each reveals the next ``k`` tokens at once (an even share of them per call, drawn
independently from one prediction), and the network is told the time of the first of them.
"""

from __future__ import annotations

import torch

from ..guidance import check_truncation_rate
from ..process import gumbel_argmax, uniform
from ..schedule import NoiseSchedule, model_timestep
from .base import EditSpec, Sampler, StepCallback, nearest_times, require_mask_only, reveal_highest, truncated_log_p

__all__ = ["FirstHittingSampler", "even_masked_counts", "next_reveal_times"]


def even_masked_counts(masked: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Masked positions left after each of ``steps`` calls, an even share revealed per call:
    ``floor(M (1 - (i+1)/steps))``, none after the last. ``masked``: (B,) counts at the start."""
    return [torch.floor(masked * (1 - (i + 1) / steps)) if i < steps - 1 else torch.zeros_like(masked)
            for i in range(steps)]


def next_reveal_times(share: torch.Tensor, masked: torch.Tensor, reveals: torch.Tensor,
                      u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask shares at which the next reveal and the ``reveals``-th next reveal happen.

    Args:
        share: (B,) the current mask share ``g`` (float64).
        masked: (B,) tokens still masked, ``n``.
        reveals: (B,) how many of them this call reveals, ``k`` (0 leaves ``g`` as it is).
        u: (B, N) uniforms in (0, 1), N >= max ``k``.
    Returns:
        (first, last): (B,) the largest and the ``k``-th largest of ``n`` uniform draws below
        ``g``, as the products ``g * U_0^(1/n) * U_1^(1/(n-1)) * ...``.
    """
    j = torch.arange(u.shape[1], device=u.device)
    logs = u.double().clamp_min(1e-300).log() / (masked[:, None] - j).clamp_min(1)  # (B, N)
    logs = torch.where(j < reveals[:, None], logs, torch.zeros_like(logs))
    steps = logs.cumsum(1)
    last = steps.gather(1, (reveals.long() - 1).clamp_min(0)[:, None]).squeeze(1)
    first = torch.where(reveals > 0, logs[:, 0], torch.zeros_like(last))
    return share * first.exp(), share * last.exp()


class FirstHittingSampler(Sampler):
    """Reveal times drawn from the schedule, one uniformly chosen token per reveal; see the module
    docstring. Needs a mask-only schedule (``mask_only``; the released one's 1e-6 replace share
    is ignored).

    Args:
        float64_draws: float64 Gumbel noise for the code draws (see :class:`Sampler`).
    """

    name = "first_hitting"
    starts_from_mask = True

    def most_inference_steps(self, schedule: NoiseSchedule, num_tokens: int) -> int:
        """A call per token: its calls follow reveals, not the schedule's T times."""
        return num_tokens

    def __call__(self, log_p_x0, schedule: NoiseSchedule, x_t: torch.Tensor, num_inference_steps: int | None = None,
                 truncation_rate: float = 1.0, generator=None, callback: StepCallback | None = None,
                 callback_steps: int = 1, edit: EditSpec | None = None) -> torch.Tensor:
        truncation_rate = check_truncation_rate(truncation_rate)
        require_mask_only(schedule, self.name)
        x = self.start_from_mask(x_t, schedule, edit)
        mask = schedule.mask_index
        start = (x == mask).sum(1)  # (B,)
        most = int(start.max())
        if num_inference_steps is not None and num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        steps = most if num_inference_steps is None else min(num_inference_steps, most)
        shares = schedule.mask_probability(torch.arange(1, schedule.num_timesteps + 1, device=x.device))  # (T,)
        share = shares[-1].double().expand(x.shape[0]).clone()  # (B,) every token masked: gbar_T
        for i, target in enumerate(even_masked_counts(start.double(), steps)):
            masked = x == mask  # (B, N)
            count = masked.sum(1)  # (B,)
            reveals = (count - target).clamp_min(0)  # (B,)
            u = uniform(x.shape, x.device, generator, torch.float64)
            first, last = next_reveal_times(share, count, reveals, u)
            t = nearest_times(shares, first)  # (B,) paper times
            log_p = truncated_log_p(log_p_x0(x, t), truncation_rate)  # (B, K, N), guided
            draw = gumbel_argmax(log_p, generator, dtype=self.draw_dtype)  # (B, N)
            # which tokens: a uniformly random choice among the masked ones
            x = torch.where(reveal_highest(uniform(x.shape, x.device, generator), masked, reveals), draw, x)
            share = torch.where(reveals > 0, last, share)
            if callback is not None and i % callback_steps == 0:
                callback(i, int(model_timestep(t.max())), x)
        return x
