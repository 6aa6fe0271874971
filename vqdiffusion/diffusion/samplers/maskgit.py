"""MaskGIT confidence decoding (Chang et al. 2022), and Halton-order revealing (Besnier et al. 2025).

From all-[MASK], each of n calls reveals positions until a cosine share of them is left masked:
after call i, ``floor(M * cos(pi/2 * (i+1)/n))`` of the M initially masked positions (none after
the last). Every masked position draws a code from p(x0 | x_t); ``order="confidence"`` keeps the
draws whose log-probability, plus Gumbel noise at a temperature annealed linearly to 0, is
highest; ``order="halton"`` reveals positions in a fixed, evenly spread order (a 2-D Halton
sequence over the token grid) whatever the model's confidence. Revealed codes never change.

The network is called at the paper time whose mask share ``gbar_t`` is closest to the share still
masked, so it sees inputs like those it was trained on.
"""

from __future__ import annotations

import math

import torch

from ..guidance import check_truncation_rate
from ..process import gumbel_argmax, gumbel_noise
from ..schedule import NoiseSchedule, model_timestep
from .base import EditSpec, Sampler, StepCallback, nearest_times, reveal_highest, truncated_log_p

__all__ = ["MaskGITSampler", "cosine_masked_counts", "halton_order"]

ORDERS = ("confidence", "halton")


def cosine_masked_counts(masked: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Masked positions left after each call: ``floor(M cos(pi/2 (i+1)/n))``, at least one fewer
    than before each call, none after the last. ``masked``: (B,) counts at the start."""
    counts, left = [], masked
    for i in range(steps):
        target = torch.floor(masked * math.cos(math.pi / 2 * (i + 1) / steps))
        left = torch.zeros_like(left) if i == steps - 1 else torch.minimum(target, (left - 1).clamp_min(0))
        counts.append(left)
    return counts


def _radical_inverse(index: int, base: int) -> float:
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


def halton_order(height: int, width: int) -> torch.Tensor:
    """(height * width,) a permutation of the grid's positions: the cells hit by the 2-D Halton
    sequence (bases 2 and 3) in the order it first hits them, so any prefix is spread evenly."""
    seen, order, index = set(), [], 1
    while len(order) < height * width:
        row = int(_radical_inverse(index, 2) * height)
        col = int(_radical_inverse(index, 3) * width)
        if (row, col) not in seen:
            seen.add((row, col))
            order.append(row * width + col)
        index += 1
    return torch.tensor(order)


class MaskGITSampler(Sampler):
    """Confidence (or Halton-order) decoding on a cosine reveal schedule; see the module docstring.

    Args:
        order: ``"confidence"`` (MaskGIT) or ``"halton"``.
        temperature: the Gumbel temperature of the confidence ranking at the first call, falling
            linearly to 0 at the last (MaskGIT's ``choice_temperature``); 0 ranks by confidence alone.
        grid: (height, width) of the token grid, for ``order="halton"`` (default: square).
        float64_draws: float64 Gumbel noise for the draws and the ranking (see :class:`Sampler`).
    """

    name = "maskgit"
    starts_from_mask = True

    def __init__(self, order: str = "confidence", temperature: float = 4.5,
                 grid: tuple[int, int] | None = None, float64_draws: bool = False) -> None:
        super().__init__(float64_draws)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.order, self.temperature, self.grid = order, float(temperature), grid

    def __call__(self, log_p_x0, schedule: NoiseSchedule, x_t: torch.Tensor, num_inference_steps: int | None = None,
                 truncation_rate: float = 1.0, generator=None, callback: StepCallback | None = None,
                 callback_steps: int = 1, edit: EditSpec | None = None) -> torch.Tensor:
        truncation_rate = check_truncation_rate(truncation_rate)
        x = self.start_from_mask(x_t, schedule, edit)
        steps = schedule.num_timesteps if num_inference_steps is None else num_inference_steps
        mask = schedule.mask_index
        shares = schedule.mask_probability(torch.arange(1, schedule.num_timesteps + 1, device=x.device))  # (T,)
        ranks = self._halton_ranks(x.shape[1], x.device) if self.order == "halton" else None
        targets = cosine_masked_counts((x == mask).sum(1).float(), steps)
        for i, target in enumerate(targets):
            masked = x == mask  # (B, N)
            t = nearest_times(shares, masked.float().mean(1))  # (B,) paper times
            log_p = truncated_log_p(log_p_x0(x, t), truncation_rate)  # (B, K, N), guided
            draw = gumbel_argmax(log_p, generator, dtype=self.draw_dtype)  # (B, N)
            if ranks is not None:
                score = -ranks.float().expand_as(masked)  # earlier in the Halton order first
            else:
                score = log_p.gather(1, draw[:, None]).squeeze(1)
                heat = self.temperature * (1 - (i + 1) / steps)
                if heat > 0:
                    score = score + heat * gumbel_noise(score, generator, self.draw_dtype)
            x = torch.where(reveal_highest(score, masked, masked.sum(1) - target), draw, x)
            if callback is not None and i % callback_steps == 0:
                callback(i, int(model_timestep(t.max())), x)
        return x

    def _halton_ranks(self, tokens: int, device: torch.device) -> torch.Tensor:
        """(N,) each position's place in the Halton order."""
        height, width = self.grid or (math.isqrt(tokens),) * 2
        if height * width != tokens:
            raise ValueError(f"order='halton' needs the token grid: {tokens} tokens are not {height}x{width}; "
                             f"pass grid=(height, width)")
        order = halton_order(height, width)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(tokens)
        return ranks.to(device)
