"""Samplers: turn a denoiser ``log_p_x0(x_t, t) -> (B, K, N)`` into token grids (SPEC §6).

A sampler never sees the network, the condition or guidance: the pipeline hands it a closure that
already applies classifier-free guidance. The sampler applies truncation, clamps, and walks the
chain. All loops index the schedule with Python integers, so no step synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops.truncation import truncate_fast
from ..utils.compiled import begin_graph_step, compiled, uses_cuda_graphs
from .guidance import check_truncation_rate, truncate
from .loss import LogPX0Fn
from .process import (
    LOG_PROB_FLOOR,
    Generators,
    gumbel_argmax,
    gumbel_from_uniform,
    gumbel_noise,
    q_posterior,
    q_sample,
    random_codes,
    uniform,
)
from .schedule import NoiseSchedule, model_timestep

__all__ = [
    "Sampler",
    "AncestralSampler",
    "PuritySampler",
    "EditSpec",
    "sample_prior",
    "make_sampler",
    "SAMPLERS",
    "StepCallback",
]

# callback(step index, model timestep just left (paper t - 1), tokens (B, N) after the step)
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class EditSpec:
    """What to keep from an existing token grid while sampling.

    ``tokens`` (B, N) are the codes of the image to edit. With ``start_step`` (paper time
    ``1..T``) the chain starts from q(x_t | tokens) at that time instead of from the prior
    (text-guided editing, "SDEdit" style). With ``keep_mask`` (B, N) bool, the positions marked
    True are held at ``tokens`` throughout (inpainting the rest).
    """

    tokens: torch.Tensor
    start_step: int | None = None
    keep_mask: torch.Tensor | None = None


def sample_prior(
    schedule: NoiseSchedule, shape: tuple[int, int], device: torch.device, generator: Generators
) -> torch.Tensor:
    """x_T from the prior q(x_T): [MASK] with probability gbar_T, else a uniform random code."""
    mask_probability = float(schedule.mask_probability(torch.tensor(schedule.num_timesteps)))
    if mask_probability >= 1.0:
        return torch.full(shape, schedule.mask_index, device=device)
    fake_x0 = random_codes(schedule.num_codes, shape, device, generator)
    t = torch.full((shape[0],), schedule.num_timesteps, device=device)
    return q_sample(fake_x0, t, schedule, generator)


def _truncated(log_p: torch.Tensor, truncation_rate: float, kernel: bool = False) -> torch.Tensor:
    """Truncated and clamped float32 log p(x0 | x_t): (B, K, N). ``kernel``: without a sort, on a GPU
    (:func:`~vqdiffusion.ops.truncation.truncate_fast`; the fast path's choice)."""
    truncated = (truncate_fast if kernel else truncate)(log_p.float(), truncation_rate)
    return truncated.clamp(min=LOG_PROB_FLOOR)


def ancestral_update(log_p: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     schedule: NoiseSchedule, truncation_rate: float, u: torch.Tensor,
                     truncation_kernel: bool = False) -> torch.Tensor:
    """The ancestral step after the network: truncation, the posterior over (B, K+1, N) and the
    Gumbel-max draw from the uniforms ``u`` (B, K+1, N). One function so that ``torch.compile``
    can fuse its ~20 passes over (B, K+1, N) into a few kernels (the draws stay outside: per-image
    generators are a Python loop)."""
    logits = q_posterior(_truncated(log_p, truncation_rate, truncation_kernel), x_t, t, s, schedule)
    return (logits + gumbel_from_uniform(u)).argmax(dim=1)


class Sampler:
    """Shared driver: validation, the (respaced) time grid, editing and callbacks.

    Subclasses implement :meth:`step`, one network call taking x_t at paper time t to x_s.
    ``compile_math``, a ``torch.compile`` mode or None (set per call from
    ``VQDiffusionPipeline.optimize(compile=...)``), lets a sampler run its step math compiled.
    """

    name = "base"
    compile_math: str | None = None

    def __call__(
        self,
        log_p_x0: LogPX0Fn,
        schedule: NoiseSchedule,
        x_t: torch.Tensor,
        num_inference_steps: int | None = None,
        truncation_rate: float = 1.0,
        generator: Generators = None,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        edit: EditSpec | None = None,
    ) -> torch.Tensor:
        """Run the chain from ``x_t`` (B, N) and return x0 (B, N) code indices."""
        truncation_rate = check_truncation_rate(truncation_rate)
        start = schedule.num_timesteps
        if edit is not None and edit.start_step is not None:
            start = edit.start_step
            t_start = torch.full((x_t.shape[0],), start, device=x_t.device)
            x_t = q_sample(edit.tokens, t_start, schedule, generator)
        steps = start if num_inference_steps is None else num_inference_steps
        times = schedule.respaced_timesteps(steps, start)
        keep = None if edit is None or edit.keep_mask is None else edit.keep_mask
        for i, t in enumerate(times):
            s = times[i + 1] if i + 1 < len(times) else 0
            begin_graph_step(self.compile_math)
            x_t = self.step(log_p_x0, schedule, x_t, t, s, truncation_rate, generator)
            if keep is not None:
                x_t = torch.where(keep, edit.tokens, x_t)
            if callback is not None and i % callback_steps == 0:
                callback(i, model_timestep(t), x_t)
        return x_t

    def predict_x0(
        self, log_p_x0: LogPX0Fn, x_t: torch.Tensor, t: int, truncation_rate: float
    ) -> torch.Tensor:
        """Guided, truncated and clamped log p(x0 | x_t): (B, K, N)."""
        times = torch.full((x_t.shape[0],), t, device=x_t.device)
        return _truncated(log_p_x0(x_t, times), truncation_rate)

    def step(
        self,
        log_p_x0: LogPX0Fn,
        schedule: NoiseSchedule,
        x_t: torch.Tensor,
        t: int,
        s: int,
        truncation_rate: float,
        generator: Generators,
    ) -> torch.Tensor:
        raise NotImplementedError


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
        u = uniform((batch, schedule.num_codes + 1, x_t.shape[1]), x_t.device, generator)
        update = compiled(ancestral_update, self.compile_math) if self.compile_math else ancestral_update
        x_s = update(log_p, x_t, t_, s_, schedule, truncation_rate, u, truncation_kernel=self.compile_math is not None)
        # a CUDA-graph output is overwritten by the next replay; the tokens must outlive it
        return x_s.clone() if uses_cuda_graphs(self.compile_math) else x_s


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

    def __init__(self, purity_weight: float = float("inf")) -> None:
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
        score = purity.masked_fill(~masked, float("-inf"))
        rank = score.argsort(dim=1, descending=True).argsort(dim=1)  # (B, N) rank of each position
        reveal = masked & (rank < n_reveal)
        x0 = gumbel_argmax(log_p, generator)
        return torch.where(reveal, x0, x_t)


SAMPLERS: dict[str, type[Sampler]] = {
    AncestralSampler.name: AncestralSampler,
    PuritySampler.name: PuritySampler,
}


def make_sampler(name: str | Sampler, **kwargs) -> Sampler:
    """A sampler from a name in :data:`SAMPLERS` (or ``"diffusers"``), or an instance as is."""
    if isinstance(name, Sampler):
        return name
    from .diffusers_compat import DiffusersSampler  # registered lazily: it is a compat path

    registry = {**SAMPLERS, DiffusersSampler.name: DiffusersSampler}
    if name not in registry:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(registry)} or a Sampler")
    return registry[name](**kwargs)
