"""Ancestral sampling with the x0-parameterisation (SPEC §6), respaced for fewer steps than T."""

from __future__ import annotations

import torch

from ...speed.compile import compiled, uses_cuda_graphs
from ..process import gumbel_from_uniform, q_posterior, uniform
from ..schedule import NoiseSchedule
from .base import Sampler, truncated_log_p

__all__ = ["AncestralSampler", "ancestral_update"]


def ancestral_update(log_p: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     schedule: NoiseSchedule, truncation_rate: float, u: torch.Tensor,
                     truncation_kernel: bool = False) -> torch.Tensor:
    """The ancestral step after the network: truncation, the posterior over (B, K+1, N) and the
    Gumbel-max draw from the uniforms ``u`` (B, K+1, N). One function so that ``torch.compile``
    can fuse its ~20 passes over (B, K+1, N) into a few kernels (the draws stay outside: per-image
    generators are a Python loop)."""
    logits = q_posterior(truncated_log_p(log_p, truncation_rate, truncation_kernel), x_t, t, s, schedule)
    return (logits + gumbel_from_uniform(u)).argmax(dim=1)


class AncestralSampler(Sampler):
    """Ancestral sampling with x0-reparameterisation; fewer steps than T respace the chain.

    Each call draws x_s ~ sum_{x0} q(x_s | x_t, x0) p(x0 | x_t), exact for any s < t. The last
    call (s = 0) draws x0 from p(x0 | x_t) restricted to the values that could have produced x_t:
    all of them when the schedule has replace noise (as in the references), only the revealed
    code itself under a mask-only schedule, so revealed tokens are never rewritten there.
    """

    name = "ancestral"

    def step(self, log_p_x0, schedule, x_t, t, s, truncation_rate, generator):
        batch = x_t.shape[0]
        t_, s_ = (torch.full((batch,), v, device=x_t.device) for v in (t, s))
        log_p = log_p_x0(x_t, t_)  # (B, K, N), guided
        # the draws come after the network call, as in gumbel_argmax: the same numbers either way
        u = uniform((batch, schedule.num_codes + 1, x_t.shape[1]), x_t.device, generator, self.draw_dtype)
        update = compiled(ancestral_update, self.compile_math) if self.compile_math else ancestral_update
        x_s = update(log_p, x_t, t_, s_, schedule, truncation_rate, u, truncation_kernel=self.compile_math is not None)
        # a CUDA-graph output is overwritten by the next replay; the tokens must outlive it
        return x_s.clone() if uses_cuda_graphs(self.compile_math) else x_s
