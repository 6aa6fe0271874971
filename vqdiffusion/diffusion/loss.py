"""The VQ-Diffusion training loss (SPEC §4): variational bound + auxiliary x0 term.

The loss receives the denoising network as a function ``log_p_x0(x_t, t) -> (B, K, N)`` and
never owns it, so the same object serves any model, condition and training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..utils.compiled import compiled
from .process import categorical_kl, log_onehot, q_posterior, q_sample
from .schedule import NoiseSchedule

__all__ = ["LossConfig", "DiffusionLoss", "LogPX0Fn"]

# (x_t (B, N) long, t (B,) long paper times) -> log p(x0 | x_t) (B, K, N)
LogPX0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    auxiliary_weight: float = 5e-4  # lambda: 5e-4 for text, 1e-3 for class-conditional (SPEC §7)
    adaptive_auxiliary: bool = True  # scale the auxiliary term by (1 - t/T) + 1 as the original
    masked_weight: float = 1.0  # weight of KL terms at positions that are [MASK] in x_t
    unmasked_weight: float = 1.0  # ... and at positions that are not
    time_sampling: str = "importance"  # "uniform" or "importance" (p_t ~ sqrt(E[L_t^2]))
    importance_min_count: int = 10  # every t must be seen more often than this before IS starts
    history_decay: float = 0.9  # running mean of L_t^2: new = decay * old + (1 - decay) * L_t^2

    def __post_init__(self) -> None:
        if self.time_sampling not in ("uniform", "importance"):
            raise ValueError(f"time_sampling must be 'uniform' or 'importance', got {self.time_sampling!r}")
        if self.auxiliary_weight < 0:
            raise ValueError(f"auxiliary_weight must be >= 0, got {self.auxiliary_weight}")


def per_sample_terms(log_p0: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     schedule: NoiseSchedule, masked_weight: float, unmasked_weight: float,
                     auxiliary_weight: float, adaptive_auxiliary: bool):
    """The loss math after the network, per sample: (bound, kl, decoder_nll, weighted aux), each (B,).

    bound is the KL between the true and the model posteriors over (B, K+1, N) at t > 1 and the
    decoder NLL at t = 1. One function of tensors, so that ``torch.compile`` can fuse its passes.

    Args:
        log_p0: (B, K, N) the network's log p(x0 | x_t); x0, x_t: (B, N); t: (B,) paper times.
    """
    log_p0 = log_p0.float()
    steps = schedule.num_timesteps
    log_x0 = log_onehot(x0, schedule.num_codes)  # (B, K, N)
    s = t - 1
    log_model = q_posterior(log_p0, x_t, t, s, schedule)  # (B, K+1, N)
    log_true = q_posterior(log_x0, x_t, t, s, schedule)  # (B, K+1, N)
    is_mask = x_t == schedule.mask_index
    weight = torch.where(is_mask, masked_weight, unmasked_weight)  # (B, N)

    kl = (categorical_kl(log_true, log_model) * weight).sum(1)  # (B,)
    decoder_nll = -(log_model.gather(1, x0[:, None, :]).squeeze(1) * weight).sum(1)  # (B,)
    is_first = t == 1
    bound = torch.where(is_first, decoder_nll, kl)  # (B,)

    aux = torch.zeros_like(bound)
    if auxiliary_weight > 0:
        kl_aux = (categorical_kl(log_x0, log_p0) * weight).sum(1)  # (B,)
        aux = torch.where(is_first, decoder_nll, kl_aux)
        factor = (1 - t / steps) + 1 if adaptive_auxiliary else torch.ones_like(bound)
        aux = auxiliary_weight * factor * aux
    return bound, kl, decoder_nll, aux


class DiffusionLoss(nn.Module):
    """Samples t and x_t, and returns the per-token loss terms.

    The importance-sampling history (``loss_sq_history``, ``loss_count``; one entry per t) is
    module state, so it is saved and restored with checkpoints. Nothing here synchronises with the
    host: the switch from uniform to importance sampling happens on the device.
    ``compile_math = True`` runs the math after the network under ``torch.compile``.
    """

    compile_math = False

    def __init__(self, schedule: NoiseSchedule, config: LossConfig | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.config = config or LossConfig()
        steps = schedule.num_timesteps
        self.register_buffer("loss_sq_history", torch.zeros(steps))
        self.register_buffer("loss_count", torch.zeros(steps))

    def time_distribution(self) -> torch.Tensor:
        """(T,) probabilities of paper times 1..T for the next batch."""
        steps = self.schedule.num_timesteps
        uniform = torch.full_like(self.loss_sq_history, 1.0 / steps)
        if self.config.time_sampling == "uniform":
            return uniform
        weight = (self.loss_sq_history + 1e-10).sqrt() + 1e-4
        weight = torch.cat([weight[1:2], weight[1:]])  # t = 1 (decoder NLL) borrows t = 2's weight
        importance = weight / weight.sum()
        ready = (self.loss_count > self.config.importance_min_count).all()
        return torch.where(ready, importance, uniform)

    def sample_time(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,) long paper times in 1..T, p_t (B,) their sampling probabilities)."""
        probs = self.time_distribution().to(device)
        index = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        return index + 1, probs[index]

    def forward(
        self,
        log_p_x0: LogPX0Fn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for a batch of token grids.

        Args:
            log_p_x0: the network as a function of (x_t, t).
            x0: (B, N) long code indices.
            t: optional (B,) paper times (then p_t is uniform); sampled otherwise.
        Returns:
            dict of scalars, each normalised per token (divided by B*N): ``loss`` (what to
            optimise), ``vb`` (bound term / p_t), ``aux`` (weighted auxiliary term / p_t), and
            the unweighted diagnostics ``kl`` (mean per-token KL at t > 1), ``decoder_nll``;
            plus ``t`` (B,) and ``per_sample_vb`` (B,) for per-t logging.
        """
        cfg, schedule = self.config, self.schedule
        batch, tokens = x0.shape
        steps = schedule.num_timesteps
        if t is None:
            t, p_t = self.sample_time(batch, x0.device, generator)
        else:
            p_t = torch.full(t.shape, 1.0 / steps, device=x0.device)
        x_t = q_sample(x0, t, schedule, generator)  # (B, N)
        log_p0 = log_p_x0(x_t, t)  # (B, K, N)
        terms = compiled(per_sample_terms) if self.compile_math else per_sample_terms
        bound, kl, decoder_nll, aux = terms(log_p0, x0, x_t, t, schedule, cfg.masked_weight, cfg.unmasked_weight,
                                            cfg.auxiliary_weight, cfg.adaptive_auxiliary)
        self._update_history(t, bound.detach())
        is_first = t == 1

        norm = batch * tokens
        vb_term = (bound / p_t).sum() / norm
        aux_term = (aux / p_t).sum() / norm
        first = is_first.float()
        return {
            "loss": vb_term + aux_term,
            "vb": vb_term,
            "aux": aux_term,
            "kl": (kl * (1 - first)).sum() / ((1 - first).sum().clamp_min(1) * tokens),
            "decoder_nll": (decoder_nll * first).sum() / (first.sum().clamp_min(1) * tokens),
            "t": t,
            "per_sample_vb": bound.detach() / tokens,
        }

    @torch.no_grad()
    def _update_history(self, t: torch.Tensor, bound: torch.Tensor) -> None:
        index = t - 1
        decay = self.config.history_decay
        previous = self.loss_sq_history.gather(0, index)
        self.loss_sq_history.scatter_(0, index, decay * previous + (1 - decay) * bound.pow(2))
        self.loss_count.scatter_add_(0, index, torch.ones_like(bound))
