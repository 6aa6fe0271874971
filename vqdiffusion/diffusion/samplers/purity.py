"""Purity sampling (Improved VQ-Diffusion): reveal the most confident masked positions first."""

from __future__ import annotations

import torch

from ..process import gumbel_argmax, gumbel_noise
from .base import Sampler, reveal_highest

__all__ = ["PuritySampler"]


class PuritySampler(Sampler):
    """The high-quality strategy of Improved VQ-Diffusion: reveal the purest positions first.

    Per call, the number of masked positions to reveal is the expected number under the
    schedule (a share ``1 - gbar_s / gbar_t`` of those still masked; all at the last call).
    Which ones: positions are ranked by purity, ``max_k p(x0 = k | x_t)``, perturbed by Gumbel
    noise at temperature ``1 / purity_weight`` (``purity_weight = inf``: strictly by purity).
    Revealed codes are drawn from p(x0 | x_t) and never change afterwards; codes revealed in x_t
    are kept, so this suits mask-only and released schedules.
    """

    name = "purity"

    def __init__(self, purity_weight: float = float("inf"), float64_draws: bool = False) -> None:
        super().__init__(float64_draws)
        if not purity_weight > 0:
            raise ValueError(f"purity_weight must be > 0, got {purity_weight}")
        self.purity_weight = purity_weight

    def step(self, log_p_x0, schedule, x_t, t, s, truncation_rate, generator):
        log_p = self.predict_x0(log_p_x0, x_t, t, truncation_rate)  # (B, K, N)
        masked = x_t == schedule.mask_index  # (B, N)
        gbar = schedule.mask_probability(torch.tensor([t, s], device=x_t.device))
        still_masked_share = gbar[1] / gbar[0]
        n_reveal = (masked.sum(1, keepdim=True) * (1 - still_masked_share)).round()  # (B, 1)

        purity = log_p.max(dim=1).values  # (B, N) log max-probability
        if self.purity_weight != float("inf"):
            purity = purity + gumbel_noise(purity, generator) / self.purity_weight
        reveal = reveal_highest(purity, masked, n_reveal.squeeze(1))
        x0 = gumbel_argmax(log_p, generator, dtype=self.draw_dtype)
        return torch.where(reveal, x0, x_t)
