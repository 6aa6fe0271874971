"""The forward process and its posterior: the math shared by the training loss and every sampler.

Shapes: ``B`` batch, ``N`` tokens per image, ``K`` codes, class ``K`` = [MASK].
Log-probabilities over classes are laid out ``(B, classes, N)`` as in both reference codebases.
Times are paper times (``0`` clean .. ``T`` fully noised), see :mod:`.schedule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule

__all__ = [
    "LOG_PROB_FLOOR",
    "log_onehot",
    "gumbel_argmax",
    "gumbel_noise",
    "gumbel_from_uniform",
    "q_sample",
    "q_posterior",
    "categorical_kl",
]

# Both references clamp log-probabilities here before sampling; exp(-70) ~ 4e-31.
LOG_PROB_FLOOR = -70.0
# A finite stand-in for log 0 where gradients must flow: logaddexp(-inf, -inf) has a NaN gradient.
_LOG_ZERO = -1e30


def log_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, N) indices -> (B, num_classes, N) log one-hot (0 at the index, -inf elsewhere)."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1)
    return torch.zeros(onehot.shape, device=x.device).masked_fill_(onehot == 0, float("-inf"))


Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


def _per_row(draw, shape, generator: Generators) -> torch.Tensor:
    """``draw(shape, generator)``; with a list of generators, row i (dim 0) comes from generator i
    alone, so an image's draws never depend on the other images of its batch."""
    if not isinstance(generator, (list, tuple)):
        return draw(tuple(shape), generator)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per image")
    return torch.stack([draw(tuple(shape[1:]), g) for g in generator])


def uniform(shape, device: torch.device | str, generator: Generators = None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) of ``shape`` (one generator, or one per row)."""
    return _per_row(lambda size, g: torch.rand(size, device=device, generator=g, dtype=dtype), shape, generator)


def random_codes(high: int, shape, device: torch.device | str, generator: Generators = None) -> torch.Tensor:
    """Uniform integers in ``0..high-1`` of ``shape`` (one generator, or one per row)."""
    return _per_row(lambda size, g: torch.randint(high, size, device=device, generator=g), shape, generator)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from U[0, 1) draws (clamped so that 0 and 1 stay finite)."""
    return -torch.log((-torch.log(u.clamp_min(1e-30))).clamp_min(1e-30))


def gumbel_noise(like: torch.Tensor, generator: Generators = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard Gumbel noise with the shape and device of ``like``.

    In float32 the uniforms come in steps of 2^-24, so the noise never exceeds about 16.6 and its
    upper tail is cut: Gumbel-max then favours likely values a little, a lower effective
    temperature (Zheng et al. 2024). ``dtype=torch.float64`` moves that cut beyond 36."""
    return gumbel_from_uniform(uniform(like.shape, like.device, generator, dtype))


def gumbel_argmax(logits: torch.Tensor, generator: Generators = None, dim: int = 1,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sample a categorical from unnormalised log-probabilities by the Gumbel-max trick (the
    noise, and so the sum, in ``dtype``)."""
    return (logits + gumbel_noise(logits, generator, dtype)).argmax(dim=dim)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, generator: Generators = None
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0) for per-sample paper times ``t`` (B,) in ``0..T``.

    Equivalent to Gumbel-max over the (K+1)-way cumulative distribution, but draws two uniforms
    per token instead of K+1: a token becomes [MASK] with probability gbar_t, a uniformly random
    code with probability K*beta_bar_t, and otherwise stays x0.

    Args:
        x0: (B, N) code indices in ``0..K-1``.
        t: (B,) long paper times.
    Returns:
        (B, N) long, values in ``0..K``.
    """
    log_alpha, log_beta, log_gamma = schedule.cumulative(t)
    gamma = log_gamma.exp()[:, None]  # (B, 1)
    replace = (log_beta.exp() * schedule.num_codes)[:, None]  # (B, 1)
    u = uniform(x0.shape, x0.device, generator)  # (B, N)
    codes = random_codes(schedule.num_codes, x0.shape, x0.device, generator)
    x_t = torch.where(u < gamma + replace, codes, x0)
    return torch.where(u < gamma, torch.full_like(x0, schedule.mask_index), x_t)


def _log_q_xt_given_codes(
    x_t: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor, log_gamma: torch.Tensor, num_codes: int
) -> torch.Tensor:
    """log q(x_t | x_prev = k) for every code k: (B, K, N).

    ``log_*`` are (B, 1, 1) log transition values from the earlier time to t.
    """
    is_mask = (x_t == num_codes)[:, None, :]  # (B, 1, N)
    same = F.one_hot(x_t.clamp_max(num_codes - 1), num_codes).permute(0, 2, 1).bool()  # (B, K, N)
    stay = torch.logaddexp(log_alpha, log_beta)
    from_code = torch.where(same, stay, log_beta)
    return torch.where(is_mask, log_gamma.expand_as(from_code), from_code)


def q_posterior(
    log_p_x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """log p(x_s | x_t) = log sum_{x0} q(x_s | x_t, x0) p(x0 | x_t) for paper times s < t.

    With ``s = t - 1`` this is the usual reverse step; with any ``s < t`` it is the exact jump of a
    respaced sampler (the skip-step formula of SPEC §6, using q(x_t | x_s) built from cumulative
    values). Values of x0 that cannot have produced x_t (probability 0 under q, e.g. a revealed
    code different from x0 under a mask-only schedule) are excluded, and the result is normalised.

    Args:
        log_p_x0: (B, K, N) log p(x0 | x_t); a one-hot (log) x0 gives the true posterior q.
        x_t: (B, N) long, values in ``0..K``.
        t, s: (B,) long paper times with ``0 <= s < t``.
    Returns:
        (B, K+1, N) log-probabilities of x_s (the last class is [MASK]).
    """
    K = schedule.num_codes
    t, s = t.view(-1, 1, 1), s.view(-1, 1, 1)
    zero = torch.zeros_like(t)
    log_q_xt_x0 = _log_q_xt_given_codes(x_t, *schedule.transition(t, zero), K)  # (B, K, N)
    log_q_xt_xs = _log_q_xt_given_codes(x_t, *schedule.transition(t, s), K)  # (B, K, N)
    # q(x_t | x_s = [MASK]) is 1 when x_t is masked and 0 otherwise.
    is_mask = (x_t == K)[:, None, :]
    log_q_xt_from_mask = torch.zeros_like(is_mask, dtype=log_q_xt_xs.dtype).masked_fill(~is_mask, float("-inf"))

    # Weight of each x0: p(x0) / q(x_t | x0), normalised; impossible x0 get weight 0.
    possible = torch.isfinite(log_q_xt_x0)
    log_w = torch.where(possible, log_p_x0 - torch.where(possible, log_q_xt_x0, 0.0), _LOG_ZERO)
    log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True)

    # sum_{x0} w(x0) q(x_s = j | x0) = alpha_s w(j) + beta_s (codes), gamma_s ([MASK]).
    log_alpha_s, log_beta_s, log_gamma_s = schedule.transition(s, zero)
    log_q_xs_codes = torch.logaddexp(log_w + log_alpha_s, log_beta_s.expand_as(log_w))
    log_q_xs_mask = log_gamma_s.expand(log_w.shape[0], 1, log_w.shape[2])

    log_joint = torch.cat(
        [log_q_xs_codes + log_q_xt_xs, log_q_xs_mask + log_q_xt_from_mask], dim=1
    )  # (B, K+1, N)
    return log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(p || q) over ``dim`` for log-probabilities, with 0 * log 0 = 0."""
    p = log_p.exp()
    terms = p * (log_p - log_q)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(dim)
