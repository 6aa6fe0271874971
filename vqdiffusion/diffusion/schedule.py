"""Mask-and-replace noise schedules, stored as log-space transition tables.

Conventions used everywhere in this package (SPEC §1-2):

* ``K`` codes, indices ``0..K-1``; the [MASK] class is index ``K`` (the last one).
* Paper time ``t`` runs ``0..T``; ``t = 0`` is the clean image, ``t = T`` the fully noised one.
  The transformer's timestep embedding is indexed by ``t - 1`` (``0..T-1``), which is also the
  "timestep" diffusers reports; :func:`model_timestep` converts.
* For any pair ``s < t`` the transition ``q(x_t | x_s)`` is again mask-and-replace with
  ``alpha_{t|s} = abar_t / abar_s``, ``1 - gamma_{t|s} = (1 - gbar_t) / (1 - gbar_s)`` and
  ``beta_{t|s} = (1 - alpha_{t|s} - gamma_{t|s}) / K``. One (T+1, T+1) table per quantity holds
  every such pair, so single steps (``s = t - 1``), cumulative transitions (``s = 0``) and the
  jumps of a respaced sampler (any ``s < t``) all read the same tables.

Tables are computed in float64 and kept in float32, with ``log 0 = -inf`` where a preset makes a
probability exactly zero (no replace noise in ``mask_only``, no mask in ``uniform_only``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["ScheduleConfig", "NoiseSchedule", "SCHEDULE_PRESETS", "model_timestep"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Endpoints of the linear cumulative schedules (SPEC §2).

    ``alpha_cum_*`` is abar at t = 1 and t = T (probability that a token is still itself, beyond
    the uniform replace share); ``gamma_cum_*`` is gbar, the probability that it is [MASK].
    The replace share ``K * beta_bar_t = 1 - abar_t - gbar_t`` follows.
    """

    num_timesteps: int = 100  # T
    alpha_cum_start: float = 0.99999
    alpha_cum_end: float = 0.000009
    gamma_cum_start: float = 0.000009
    gamma_cum_end: float = 0.99999

    @classmethod
    def preset(cls, name: str, num_timesteps: int = 100) -> ScheduleConfig:
        if name not in SCHEDULE_PRESETS:
            raise ValueError(
                f"unknown schedule preset {name!r}; expected one of {sorted(SCHEDULE_PRESETS)}"
            )
        return cls(num_timesteps=num_timesteps, **SCHEDULE_PRESETS[name])


SCHEDULE_PRESETS: dict[str, dict[str, float]] = {
    # The endpoints of the authors' released code and of diffusers: K*beta_bar = 1e-6 at every t,
    # i.e. in effect mask-only (absorbing) diffusion.
    "released": dict(
        alpha_cum_start=0.99999, alpha_cum_end=0.000009, gamma_cum_start=0.000009, gamma_cum_end=0.99999
    ),
    # Mask-and-replace with real replace noise: the paper's best ablation setting (gbar_T ~ 0.9),
    # so 10% of the tokens at t = T are uniformly random codes.
    "paper": dict(
        alpha_cum_start=0.99999, alpha_cum_end=0.000009, gamma_cum_start=0.000009, gamma_cum_end=0.9
    ),
    # Pure absorbing diffusion, gbar_t = t/T for T = 100: no replace noise at all.
    "mask_only": dict(alpha_cum_start=0.99, alpha_cum_end=0.0, gamma_cum_start=0.01, gamma_cum_end=1.0),
    # Pure multinomial (uniform) diffusion: [MASK] never appears.
    "uniform_only": dict(
        alpha_cum_start=0.99999, alpha_cum_end=0.000009, gamma_cum_start=0.0, gamma_cum_end=0.0
    ),
}

# Replace shares below this are float64 rounding of "exactly zero" (e.g. 1 - 0.99 - 0.01).
_ZERO_TOLERANCE = 1e-12
# Replace noise up to this share counts as none for mask-only samplers and losses (the released
# schedule's 1e-6: in effect absorbing diffusion).
MASK_ONLY_TOLERANCE = 1e-5


def model_timestep(t: int | torch.Tensor) -> int | torch.Tensor:
    """Paper time ``t`` in ``1..T`` -> index of the transformer's timestep embedding (``t - 1``)."""
    return t - 1


def _linear(start: float, end: float, num_timesteps: int) -> torch.Tensor:
    # Same float64 operation order as the reference implementations, so that the float32
    # tables are bit-identical to theirs (needed by the diffusers-compatible sampler).
    steps = torch.arange(num_timesteps, dtype=torch.float64)
    return steps / (num_timesteps - 1) * (end - start) + start


def _replace_share(alpha: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """1 - alpha - gamma = K * beta, with float64 rounding of an exact zero snapped to 0."""
    share = 1 - alpha - gamma
    return torch.where(share > _ZERO_TOLERANCE, share, torch.zeros_like(share))


class NoiseSchedule(nn.Module):
    """Log transition tables of a mask-and-replace process with ``num_codes`` codes.

    Buffers (float32, shape (T+1, T+1), indexed ``[t, s]`` for ``0 <= s < t <= T``):

    * ``log_alpha[t, s]`` = log alpha_{t|s}: keep-probability beyond the uniform share;
    * ``log_beta[t, s]``  = log beta_{t|s}: probability of each single code by replacement;
    * ``log_gamma[t, s]`` = log gamma_{t|s}: probability of becoming [MASK].

    Entries with ``s >= t`` are the identity transition (alpha = 1, beta = gamma = 0).
    """

    def __init__(self, num_codes: int, config: ScheduleConfig | None = None) -> None:
        super().__init__()
        config = config or ScheduleConfig()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if config.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {config.num_timesteps}")
        self.num_codes = num_codes
        self.config = config
        with torch.device("cpu"):  # float64 on the CPU whatever the default device (meta, cuda); .to() moves them
            tables = _transition_tables(num_codes, config)
        for name, table in tables.items():
            self.register_buffer(name, table.float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def mask_index(self) -> int:
        return self.num_codes

    def to_dict(self) -> dict:
        return asdict(self.config)

    def cumulative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log abar_t, log beta_bar_t, log gbar_t) for paper times ``t`` of any shape."""
        zero = torch.zeros_like(t)
        return self.log_alpha[t, zero], self.log_beta[t, zero], self.log_gamma[t, zero]

    def transition(
        self, t: torch.Tensor | int, s: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log alpha_{t|s}, log beta_{t|s}, log gamma_{t|s}) for broadcastable ``t`` and ``s``."""
        return self.log_alpha[t, s], self.log_beta[t, s], self.log_gamma[t, s]

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """gbar_t: the share of tokens masked at paper time ``t``."""
        return self.log_gamma[t, torch.zeros_like(t)].exp()

    def max_replace_share(self) -> float:
        """The largest share of tokens that replace noise turns into random codes, over t = 1..T:
        0 for ``mask_only``, 1e-6 for ``released``, 0.1 at T for ``paper``."""
        t = torch.arange(1, self.num_timesteps + 1, device=self.log_beta.device)
        return float((self.log_beta[t, torch.zeros_like(t)].exp() * self.num_codes).max())

    def require_mask_only(self, user: str, instead: str) -> None:
        """Refuse this schedule for ``user`` (a sampler or loss that treats a revealed token as
        final) when its replace noise is real: more than the released schedule's 1e-6."""
        share = self.max_replace_share()
        if share > MASK_ONLY_TOLERANCE:
            raise ValueError(f"{user} needs a mask-only schedule (schedule=mask_only, or the released one), but "
                             f"this one turns up to {share:.1%} of the tokens into random codes; use {instead}")

    def respaced_timesteps(self, num_inference_steps: int, start: int | None = None) -> list[int]:
        """Decreasing paper times for a sampler that makes ``num_inference_steps`` network calls.

        The chain is respaced (SPEC §6), never truncated: the times are spread evenly over
        ``start..1`` (``start`` defaults to T), and each call jumps to the next one, the last to 0.
        """
        start = self.num_timesteps if start is None else start
        if not 1 <= start <= self.num_timesteps:
            raise ValueError(f"start must be in [1, {self.num_timesteps}], got {start}")
        if not 1 <= num_inference_steps <= start:
            raise ValueError(
                f"num_inference_steps must be in [1, {start}] (the number of diffusion steps "
                f"available), got {num_inference_steps}"
            )
        return [round(start - i * start / num_inference_steps) for i in range(num_inference_steps)]


def _transition_tables(num_codes: int, config: ScheduleConfig) -> dict[str, torch.Tensor]:
    steps = config.num_timesteps
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), _linear(
        config.alpha_cum_start, config.alpha_cum_end, steps)])
    gamma_bar = torch.cat([torch.zeros(1, dtype=torch.float64), _linear(
        config.gamma_cum_start, config.gamma_cum_end, steps)])
    _check_probabilities(alpha_bar, gamma_bar, config)

    # Pairwise transitions t|s; 0/0 (a state that is already unreachable) is taken as 0.
    alpha_s, alpha_t = alpha_bar[None, :], alpha_bar[:, None]
    keep_s, keep_t = (1 - gamma_bar)[None, :], (1 - gamma_bar)[:, None]
    alpha = torch.where(alpha_s > 0, alpha_t / alpha_s.clamp_min(1e-300), torch.zeros(()))
    gamma = 1 - torch.where(keep_s > 0, keep_t / keep_s.clamp_min(1e-300), torch.zeros(()))
    beta = _replace_share(alpha, gamma) / num_codes
    # s = 0: the cumulative values themselves (1 - (1 - g) is not g in floating point).
    alpha[:, 0] = alpha_bar
    gamma[:, 0] = gamma_bar
    beta[:, 0] = _replace_share(alpha_bar, gamma_bar) / num_codes

    upper = torch.ones(steps + 1, steps + 1, dtype=torch.bool).triu()  # s >= t: identity
    alpha = torch.where(upper, torch.ones(()), alpha)
    beta = torch.where(upper, torch.zeros(()), beta)
    gamma = torch.where(upper, torch.zeros(()), gamma)
    return {"log_alpha": alpha.log(), "log_beta": beta.log(), "log_gamma": gamma.log()}


def _check_probabilities(alpha_bar: torch.Tensor, gamma_bar: torch.Tensor, config: ScheduleConfig) -> None:
    replace = 1 - alpha_bar - gamma_bar
    problems = []
    if ((alpha_bar < 0) | (alpha_bar > 1)).any() or ((gamma_bar < 0) | (gamma_bar > 1)).any():
        problems.append("cumulative alpha and gamma must lie in [0, 1]")
    if (replace < -_ZERO_TOLERANCE).any():
        problems.append("alpha_cum + gamma_cum must not exceed 1 (it is 1 - K*beta_cum)")
    if (alpha_bar[1:] > alpha_bar[:-1] + _ZERO_TOLERANCE).any():
        problems.append("alpha_cum must not increase with t")
    if (gamma_bar[1:] < gamma_bar[:-1] - _ZERO_TOLERANCE).any():
        problems.append("gamma_cum must not decrease with t")
    if problems:
        raise ValueError(f"invalid noise schedule {config}: " + "; ".join(problems))
    if not math.isfinite(float(replace.sum())):
        raise ValueError(f"invalid noise schedule {config}: non-finite values")
