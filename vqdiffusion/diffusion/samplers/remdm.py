"""ReMDM remasking (Wang et al. 2025, "Remasking discrete diffusion models with inference-time
scaling") for mask-only schedules.

The ancestral step of a mask-only chain never revisits a revealed token. ReMDM's reverse step
from t to s re-masks each revealed token with probability ``sigma`` and reveals each masked one
(with a code drawn from p(x0 | x_t)) with probability ``(alpha_s - (1 - sigma) alpha_t) /
(1 - alpha_t)``, where ``alpha = 1 - gbar`` is the share unmasked. For any ``sigma`` in
``[0, min(1, (1 - alpha_s) / alpha_t)]`` a token is unmasked at s with probability ``alpha_s``,
as in the forward process, so the chain's marginals are kept while early mistakes get a chance
to be redrawn; ``sigma = 0`` is the ancestral step. ``strategy="cap"`` takes ``sigma =
min(eta, sigma_max)``, ``"rescale"`` takes ``eta * sigma_max``. The bound is 0 at the last step
(s = 0), which reveals everything left.
"""

from __future__ import annotations

import torch

from ..process import gumbel_argmax, uniform
from ..schedule import NoiseSchedule
from .base import Sampler, require_mask_only

__all__ = ["ReMDMSampler", "remasking_probabilities"]

STRATEGIES = ("cap", "rescale")


def remasking_probabilities(gbar_t: torch.Tensor, gbar_s: torch.Tensor, eta: float,
                            strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, reveal): the probability that a revealed token is masked again, and that a masked
    one is revealed, for a step from mask share ``gbar_t`` to ``gbar_s`` (0-d tensors)."""
    alpha_t, alpha_s = 1 - gbar_t, 1 - gbar_s
    bound = torch.where(alpha_t > 0, (1 - alpha_s) / alpha_t.clamp_min(1e-12), torch.zeros_like(alpha_t))
    bound = bound.clamp(0, 1)
    sigma = torch.clamp(bound, max=eta) if strategy == "cap" else eta * bound
    reveal = (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t).clamp_min(1e-12)
    return sigma, reveal.clamp(0, 1)


class ReMDMSampler(Sampler):
    """Ancestral steps over the respaced grid with remasking; see the module docstring.

    Args:
        eta: the remasking strength (``cap``: the largest ``sigma``; ``rescale``: the share of the
            bound).
        strategy: ``"cap"`` or ``"rescale"``.
        float64_draws: float64 Gumbel noise for the code draws (see :class:`Sampler`).
    """

    name = "remdm"

    def __init__(self, eta: float = 0.02, strategy: str = "cap", float64_draws: bool = False) -> None:
        super().__init__(float64_draws)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta, self.strategy = float(eta), strategy

    def __call__(self, log_p_x0, schedule: NoiseSchedule, x_t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        require_mask_only(schedule, self.name)
        return super().__call__(log_p_x0, schedule, x_t, *args, **kwargs)

    def step(self, log_p_x0, schedule, x_t, t, s, truncation_rate, generator):
        log_p = self.predict_x0(log_p_x0, x_t, t, truncation_rate)  # (B, K, N)
        gbar = schedule.mask_probability(torch.tensor([t, s], device=x_t.device))
        sigma, reveal = remasking_probabilities(gbar[0], gbar[1], self.eta, self.strategy)
        draw = gumbel_argmax(log_p, generator, dtype=self.draw_dtype)  # (B, N)
        u = uniform(x_t.shape, x_t.device, generator)  # (B, N): one draw decides either move
        mask = schedule.mask_index
        masked = x_t == mask
        revealed_now = torch.where(u < reveal, draw, torch.full_like(x_t, mask))
        kept_or_remasked = torch.where(u < sigma, torch.full_like(x_t, mask), x_t)
        return torch.where(masked, revealed_now, kept_or_remasked)
