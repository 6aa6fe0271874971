"""What every sampler shares: the driver over the (respaced) time grid, editing, the prior."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...speed.compile import begin_graph_step
from ..guidance import check_truncation_rate, truncate, truncate_fast
from ..loss import LogPX0Fn
from ..process import LOG_PROB_FLOOR, Generators, q_sample, random_codes
from ..schedule import NoiseSchedule, model_timestep

__all__ = ["Sampler", "EditSpec", "StepCallback", "nearest_times", "require_mask_only", "reveal_highest",
           "sample_prior", "truncated_log_p"]

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


def require_mask_only(schedule: NoiseSchedule, sampler: str) -> None:
    """Refuse a schedule with real replace noise: ``sampler`` only ever reveals masked tokens."""
    schedule.require_mask_only(f"the {sampler!r} sampler", "'ancestral' or 'purity'")


def reveal_highest(score: torch.Tensor, masked: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: in each row the ``count`` (B,) masked positions of highest ``score`` (B, N)."""
    place = score.masked_fill(~masked, float("-inf")).argsort(dim=1, descending=True).argsort(dim=1)
    return masked & (place < count[:, None])


def nearest_times(shares: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """(B,) the paper times whose mask share (``shares``: (T,) gbar at t = 1..T) is closest to
    ``share`` (B,): where a chain that does not walk the time grid asks the network."""
    return (shares[None, :].to(share.dtype) - share[:, None]).abs().argmin(1) + 1


def truncated_log_p(log_p: torch.Tensor, truncation_rate: float, kernel: bool = False) -> torch.Tensor:
    """Truncated and clamped float32 log p(x0 | x_t): (B, K, N). ``kernel``: without a sort, on a GPU
    (:func:`~vqdiffusion.diffusion.guidance.truncate_fast`; the fast path's choice)."""
    truncated = (truncate_fast if kernel else truncate)(log_p.float(), truncation_rate)
    return truncated.clamp(min=LOG_PROB_FLOOR)


class Sampler:
    """Shared driver: validation, the (respaced) time grid, editing and callbacks.

    Subclasses implement :meth:`step`, one network call taking x_t at paper time t to x_s.
    ``compile_math``, a ``torch.compile`` mode or None (set per call from
    ``VQDiffusionPipeline.optimize(compile=...)``), lets a sampler run its step math compiled.
    ``float64_draws`` draws every categorical with float64 Gumbel noise: float32's cut tail
    samples slightly colder than the model (other images than float32 draws, for the same seed).
    """

    name = "base"
    compile_math: str | None = None
    starts_from_mask = False  # True: the chain starts from all-[MASK], not from a draw of the prior
    draw_dtype = torch.float32  # of the categorical draws' Gumbel noise (see gumbel_noise)

    def __init__(self, float64_draws: bool = False) -> None:
        self.draw_dtype = torch.float64 if float64_draws else torch.float32

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
        start = self.first_time(schedule, num_inference_steps, edit)
        if edit is not None and edit.start_step is not None:
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

    def start_from_mask(self, x_t: torch.Tensor, schedule: NoiseSchedule, edit: EditSpec | None) -> torch.Tensor:
        """The all-[MASK] start of a sampler that reveals tokens, with ``edit.keep_mask``'s positions
        held at ``edit.tokens``; such a sampler has no midway start (``edit.start_step``)."""
        if edit is not None and edit.start_step is not None:
            raise ValueError(f"the {self.name!r} sampler starts from [MASK]: use keep_mask to inpaint, or "
                             "'ancestral' for edit_start_step")
        mask = torch.full_like(x_t, schedule.mask_index)
        return mask if edit is None or edit.keep_mask is None else torch.where(edit.keep_mask, edit.tokens, mask)

    def most_inference_steps(self, schedule: NoiseSchedule, num_tokens: int) -> int:
        """The largest ``num_inference_steps`` this sampler takes for ``num_tokens`` tokens an image:
        one network call per time of the schedule's grid, T."""
        return schedule.num_timesteps

    def first_time(self, schedule: NoiseSchedule, num_inference_steps: int | None, edit: EditSpec | None) -> int:
        """The paper time of the chain's first network call, the highest it makes: T, or the
        edit's start step (the respaced grid always starts there)."""
        if edit is not None and edit.start_step is not None:
            return edit.start_step
        return schedule.num_timesteps

    def predict_x0(
        self, log_p_x0: LogPX0Fn, x_t: torch.Tensor, t: int, truncation_rate: float
    ) -> torch.Tensor:
        """Guided, truncated and clamped log p(x0 | x_t): (B, K, N)."""
        times = torch.full((x_t.shape[0],), t, device=x_t.device)
        return truncated_log_p(log_p_x0(x_t, times), truncation_rate)

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
