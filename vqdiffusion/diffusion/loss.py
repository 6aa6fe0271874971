"""The VQ-Diffusion training loss (SPEC §4): variational bound + auxiliary x0 term; and, for
mask-only schedules, the simplified masked-diffusion loss of MD4 / MDLM (``objective="masked_ce"``).

The loss receives the denoising network as a function ``log_p_x0(x_t, t) -> (B, K, N)`` and
never owns it, so the same object serves any model, condition and training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..speed.compile import compiled
from ..utils.distributed import gather_over_ranks
from .closed_form import token_terms
from .process import q_sample
from .schedule import NoiseSchedule

__all__ = ["LossConfig", "DiffusionLoss", "LogPX0Fn"]

# (x_t (B, N) long, t (B,) long paper times) -> log p(x0 | x_t) (B, K, N), up to a constant per
# token: the network's logits will do
LogPX0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


OBJECTIVES = ("vlb", "masked_ce")


@dataclass(frozen=True)
class LossConfig:
    # "vlb": the bound from the closed-form posteriors (any schedule); "masked_ce": for mask-only
    # schedules, the cross-entropy of the masked tokens weighted by (gbar_t - gbar_{t-1}) / gbar_t,
    # which is the same bound term by term at t > 1 without the (K+1)-way posteriors (MD4, Shi et
    # al. 2024; MDLM, Sahoo et al. 2024). An auxiliary_weight > 0 adds the auxiliary term to either.
    objective: str = "vlb"
    auxiliary_weight: float = 5e-4  # lambda: 5e-4 for text, 1e-3 for class-conditional (SPEC §7)
    # scale the auxiliary term by 2 - (t - 1)/T at paper time t (1 at t = 1 ... 1 + 1/T at t = T):
    # the authors' (1 - t/T) + 1 with their 0-based t
    adaptive_auxiliary: bool = True
    # Weights of the KL terms (the bound's and the auxiliary one) at positions that are [MASK] in
    # x_t, and at positions that are not. As in the authors' code they leave the t = 1 decoder NLL
    # unweighted: at t = 1 every position counts once, whatever x_1 holds.
    masked_weight: float = 1.0
    unmasked_weight: float = 1.0
    time_sampling: str = "importance"  # "uniform" or "importance" (p_t ~ sqrt(E[L_t^2]))
    importance_min_count: int = 10  # every t must be seen more often than this before IS starts
    history_decay: float = 0.9  # running mean of L_t^2: new = decay * old + (1 - decay) * L_t^2

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.time_sampling not in ("uniform", "importance"):
            raise ValueError(f"time_sampling must be 'uniform' or 'importance', got {self.time_sampling!r}")
        if self.auxiliary_weight < 0:
            raise ValueError(f"auxiliary_weight must be >= 0, got {self.auxiliary_weight}")


def auxiliary_factor(t: torch.Tensor, schedule: NoiseSchedule, adaptive: bool) -> torch.Tensor | float:
    """The auxiliary term's scale at paper times ``t`` (B,): ``2 - (t - 1)/T`` (the authors' ``(1 - t/T)
    + 1`` with their 0-based t), or 1 when not ``adaptive``."""
    return 2 - (t - 1) / schedule.num_timesteps if adaptive else 1.0


def per_sample_terms(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     schedule: NoiseSchedule, masked_weight: float, unmasked_weight: float,
                     auxiliary_weight: float, adaptive_auxiliary: bool, terms_of_tokens=token_terms):
    """The loss math after the network, per sample: (bound, kl, decoder_nll, weighted aux), each (B,).

    bound is the KL between the true and the model posteriors at t > 1 and the decoder NLL at
    t = 1, from the closed form of :mod:`.closed_form`. One function of tensors, so that
    ``torch.compile`` can fuse it (with bf16 logits, the float32 cast happens inside).

    Args:
        logits: (B, K, N) the network's log p(x0 | x_t), normalised or not; x0, x_t: (B, N);
            t: (B,) paper times.
        terms_of_tokens: :func:`.closed_form.token_terms`, or its reference
            :func:`.closed_form.general_token_terms`.
    """
    terms = terms_of_tokens(logits, x0, x_t, t, schedule)
    weight = torch.where(x_t == schedule.mask_index, masked_weight, unmasked_weight)  # (B, N)
    kl = (terms.kl * weight).sum(1)  # (B,)
    decoder_nll = terms.decoder_nll.sum(1)
    is_first = t == 1
    bound = torch.where(is_first, decoder_nll, kl)

    aux = torch.zeros_like(bound)
    if auxiliary_weight > 0:
        kl_aux = (terms.x0_nll * weight).sum(1)  # KL(onehot(x0) || p(x0 | x_t))
        aux = torch.where(is_first, decoder_nll, kl_aux)
        aux = auxiliary_weight * auxiliary_factor(t, schedule, adaptive_auxiliary) * aux
    return bound, kl, decoder_nll, aux


def masked_ce_terms(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    schedule: NoiseSchedule, auxiliary_weight: float, adaptive_auxiliary: bool):
    """The simplified masked-diffusion loss per sample: (bound, kl, decoder_nll, weighted aux), each (B,).

    Under a mask-only schedule the reverse step's KL at a masked position is ``-w_t log p(x0 |
    x_t)`` with ``w_t = (gbar_t - gbar_{t-1}) / gbar_t`` (the share of masked tokens revealed
    at this step) and 0 elsewhere, so ``bound = w_t * sum over masked positions of the NLL``;
    at t = 1 (w = 1) it is the decoder NLL of the masked positions (the revealed ones are copied).

    Args:
        logits: (B, K, N); x0, x_t: (B, N); t: (B,) paper times.
    """
    log_p = logits.float().log_softmax(1)
    nll = -log_p.gather(1, x0[:, None]).squeeze(1)  # (B, N)
    masked = (x_t == schedule.mask_index).float()
    gbar_t, gbar_s = schedule.mask_probability(t), schedule.mask_probability(t - 1)
    weight = (gbar_t - gbar_s) / gbar_t.clamp_min(1e-12)  # (B,)
    bound = weight * (nll * masked).sum(1)
    aux = torch.zeros_like(bound)
    if auxiliary_weight > 0:
        aux = auxiliary_weight * auxiliary_factor(t, schedule, adaptive_auxiliary) * nll.sum(1)
    return bound, bound, bound, aux


class DiffusionLoss(nn.Module):
    """Samples t and x_t, and returns the per-token loss terms.

    The importance-sampling history (``loss_sq_history``, ``loss_count``; one entry per t) is
    module state, so it is saved and restored with checkpoints. Nothing here synchronises with the
    host: the switch from uniform to importance sampling happens on the device.
    ``compile_math = True`` runs the math after the network under ``torch.compile`` (when
    gradients are on);
    ``terms_of_tokens`` is the closed form (a benchmark may swap in the general reference).
    """

    compile_math = False
    terms_of_tokens = staticmethod(token_terms)

    def __init__(self, schedule: NoiseSchedule, config: LossConfig | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.config = config or LossConfig()
        if self.config.objective == "masked_ce":
            schedule.require_mask_only("loss objective 'masked_ce'", "objective 'vlb'")
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
            log_p_x0: the network as a function of (x_t, t), returning log p(x0 | x_t) or its
                logits (B, K, N).
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
        logits = log_p_x0(x_t, t)  # (B, K, N)
        # Compiled for training only: Triton 3.6 failed to build the no-grad (validation) graph of
        # this math at batch 512 x 256 codes ("PassManager::run failed" in make_ttgir, H100), and
        # validation evaluates a few batches
        compile_now = self.compile_math and torch.is_grad_enabled()
        if cfg.objective == "masked_ce":
            terms = compiled(masked_ce_terms) if compile_now else masked_ce_terms
            bound, kl, decoder_nll, aux = terms(logits, x0, x_t, t, schedule, cfg.auxiliary_weight,
                                                cfg.adaptive_auxiliary)
        else:
            terms = compiled(per_sample_terms) if compile_now else per_sample_terms
            bound, kl, decoder_nll, aux = terms(logits, x0, x_t, t, schedule, cfg.masked_weight, cfg.unmasked_weight,
                                                cfg.auxiliary_weight, cfg.adaptive_auxiliary, self.terms_of_tokens)
        if self.training and torch.is_grad_enabled():  # not validation's (other weights, fixed t)
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
        """Fold a training batch's bounds into the importance-sampling history; under DDP every
        rank's samples, on every rank (DDP keeps rank 0's buffers only, so the other ranks'
        updates were lost)."""
        t, bound = gather_over_ranks(t), gather_over_ranks(bound)
        index = t - 1
        decay = self.config.history_decay
        previous = self.loss_sq_history.gather(0, index)
        self.loss_sq_history.scatter_(0, index, decay * previous + (1 - decay) * bound.pow(2))
        self.loss_count.scatter_add_(0, index, torch.ones_like(bound))
