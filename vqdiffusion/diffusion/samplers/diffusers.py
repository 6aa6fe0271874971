"""A sampler that reproduces diffusers' ``VQDiffusionPipeline`` draws exactly (SPEC §6).

Given the same weights, prompt embeddings and ``torch.Generator``, it makes the same random
draws in the same order and shapes, with diffusers' arithmetic: its posterior (log one-hots
clamped at 1e-30 instead of exact zeros), Gumbel noise with +1e-30 guards, truncation applied
even at rate 1, and, when asked for fewer steps than T, the *truncated* chain diffusers runs
(timesteps ``n-1 .. 0`` of the T-step process). That last behaviour is a known bug of diffusers
kept here only so that its outputs can be reproduced; every other sampler respaces.
"""

from __future__ import annotations

import torch

from ...speed.compile import begin_graph_step
from ..loss import LogPX0Fn
from ..process import LOG_PROB_FLOOR
from ..schedule import NoiseSchedule
from .base import EditSpec, Sampler, StepCallback

__all__ = ["DiffusersSampler"]


class DiffusersSampler(Sampler):
    name = "diffusers"
    starts_from_mask = True  # as diffusers' pipeline, whatever the schedule's prior

    def __init__(self) -> None:  # diffusers' float32 draws are the point: no float64 option
        super().__init__()

    def __call__(
        self,
        log_p_x0: LogPX0Fn,
        schedule: NoiseSchedule,
        x_t: torch.Tensor,
        num_inference_steps: int | None = None,
        truncation_rate: float = 1.0,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        edit: EditSpec | None = None,
    ) -> torch.Tensor:
        if edit is not None:
            raise ValueError("the 'diffusers' sampler reproduces diffusers and has no editing; use 'ancestral'")
        if isinstance(generator, (list, tuple)):
            raise ValueError("the 'diffusers' sampler reproduces diffusers' draws from one generator; pass one "
                             "torch.Generator, or use 'ancestral' for one generator per image")
        steps = schedule.num_timesteps if num_inference_steps is None else num_inference_steps
        if not 1 <= steps <= schedule.num_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {schedule.num_timesteps}], got {steps}")
        batch = x_t.shape[0]
        for i, timestep in enumerate(range(steps - 1, -1, -1)):  # diffusers' timestep = paper t - 1
            begin_graph_step(self.compile_math)
            paper_t = torch.full((batch,), timestep + 1, device=x_t.device)
            log_p = _truncate_like_diffusers(log_p_x0(x_t, paper_t).float(), truncation_rate)
            log_p = log_p.clamp(LOG_PROB_FLOOR)
            if timestep > 0:
                log_p = _posterior_like_diffusers(log_p, x_t, timestep, schedule)
            x_t = _gumbel_argmax_like_diffusers(log_p, generator)
            if callback is not None and i % callback_steps == 0:
                callback(i, timestep, x_t)
        return x_t

    def first_time(self, schedule: NoiseSchedule, num_inference_steps: int | None, edit: EditSpec | None) -> int:
        """diffusers' chain of n steps starts at its timestep n - 1, paper time n."""
        return schedule.num_timesteps if num_inference_steps is None else num_inference_steps


def _gumbel_argmax_like_diffusers(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    uniform = torch.rand(logits.shape, device=logits.device, generator=generator)
    gumbel = -torch.log(-torch.log(uniform + 1e-30) + 1e-30)
    return (gumbel + logits).argmax(dim=1)


def _truncate_like_diffusers(log_p: torch.Tensor, rate: float) -> torch.Tensor:
    # Unlike `guidance.truncate`, this runs at rate 1 too, where float32 cumsums that reach 1.0
    # early drop a few negligible classes: diffusers does, so its outputs depend on it.
    sorted_log_p, order = log_p.sort(dim=1, descending=True)
    below = sorted_log_p.exp().cumsum(dim=1) < rate
    keep_sorted = torch.cat([torch.ones_like(below[:, :1]), below[:, :-1]], dim=1)
    keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    return log_p.masked_fill(~keep, float("-inf"))


def _posterior_like_diffusers(
    log_p_x0: torch.Tensor, x_t: torch.Tensor, timestep: int, schedule: NoiseSchedule
) -> torch.Tensor:
    """diffusers' q_posterior at its ``timestep`` (paper time ``timestep + 1`` -> ``timestep``)."""
    K = schedule.num_codes
    paper_t = timestep + 1
    onehot = torch.nn.functional.one_hot(x_t, K + 1).permute(0, 2, 1)
    log_onehot = onehot.float().clamp(min=1e-30).log()  # (B, K+1, N)
    is_mask = (x_t == K)[:, None, :].expand(-1, K, -1)

    def rows(log_a: torch.Tensor, log_b: torch.Tensor, log_c: torch.Tensor) -> torch.Tensor:
        log_q = (log_onehot[:, :-1, :] + log_a).logaddexp(log_b)
        return log_q.masked_fill(is_mask, log_c)

    log_q_cumulative = rows(*schedule.transition(paper_t, 0))
    log_q_step = torch.cat(
        [rows(*schedule.transition(paper_t, paper_t - 1)), log_onehot[:, -1:, :]],
        dim=1,
    )
    q = log_p_x0 - log_q_cumulative
    log_norm = torch.logsumexp(q, dim=1, keepdim=True)
    q = q - log_norm
    log_a, log_b, log_c = schedule.transition(timestep, 0)
    q = (q + log_a).logaddexp(log_b)
    q = torch.cat([q, log_c.expand(q.shape[0], 1, q.shape[2])], dim=1)
    return q + log_q_step + log_norm
