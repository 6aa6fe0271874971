"""The training loss's per-token terms in closed form (SPEC §4), from the network's logits.

The general posterior (:func:`.process.q_posterior`) builds (B, K+1, N) tensors for the true and
the model posteriors and reduces them several times. With a one-hot x0 and mask-and-replace
noise most of that work is structure that can be written down: the true posterior
q(x_{t-1} | x_t, x0) takes one value on every code except x0 and x_t, and the normaliser of the
model posterior is linear in the reweighted p(x0 | x_t). What remains per code is one softplus,
so a token costs two reductions over its K logits (the log-softmax statistics, then one sum)
instead of a dozen passes with several transcendentals each: with thousands of codes those passes
were a tenth of a training step (``bench/profile_step.py train``).

Notation for one token (paper time t, s = t - 1): k = x_t, a = x0, p_j = softmax(logits)_j.
* q(x_t | x0 = j) = c_k for j = k and c_o otherwise (code x_t); the same for every j when x_t is
  [MASK]. The reweighted model x0 is w_j ∝ p_j / q(x_t | x0 = j), over the j that can give x_t.
* q(x_s = j | x0) = A_s [j = x0] + B_s for codes, G_s for [MASK] (cumulative, s = 0 is clean).
* q(x_t | x_s = j) = a [j = k] + b for a code x_t, g when x_t is [MASK] (one step).
The model posterior is M_j ∝ q(x_t | x_s = j) (A_s w_j + B_s) and the true one P_j the same with
w = onehot(a), both normalised by Z = sum_j q(x_t | x_s = j) q(x_s = j | ...) — a closed form, as
sum_j w_j = 1. The q(x_t | x_s) factors cancel in log P_j - log M_j, so

    KL(P || M) = log Z_M - log Z_P + sum_j P_j (u_j - v_j),
    u_j = log(A_s [j = a] + B_s),  v_j = log(A_s w_j + B_s),

where P_j is one "background" value on every code but a and k. Written as the background times
a sum over all codes plus corrections at a and k, nothing cancels catastrophically: the
background is at most ~1/K and each u_j - v_j is a softplus.

Schedule logs that are -inf (no replace noise, no mask, s = 0) are replaced by a finite
:data:`LOG_ZERO`, and every term that should be absent is multiplied by an exact zero, so that
no logits-dependent quantity is ever infinite and no gradient is NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .process import categorical_kl, log_onehot, q_posterior
from .schedule import NoiseSchedule

__all__ = ["LOG_ZERO", "TokenTerms", "general_token_terms", "token_terms"]

# exp(LOG_ZERO) is exactly 0 in float32 and float64, and sums of a few such values stay finite.
LOG_ZERO = -1e4
# floor of a probability before its log, where only rounding can make it 0
_TINY = 1e-30


class TokenTerms(NamedTuple):
    """Per-token loss terms, each (B, N) float32 (or the logits' dtype if wider)."""

    kl: torch.Tensor  # KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), meaningful at t > 1
    decoder_nll: torch.Tensor  # -log p(x_{t-1} = x0 | x_t), the bound's term at t = 1
    x0_nll: torch.Tensor  # -log p(x0 | x_t): the auxiliary KL(onehot(x0) || p(x0 | x_t))


def _log(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(_TINY).log().clamp_min(LOG_ZERO)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without F.softplus's switch to x above 20 (an error of e^-20, which float64
    tests see)."""
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def token_terms(
    logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> TokenTerms:
    """The VB and auxiliary terms of every token, equal to the general posterior's (tests check
    values and gradients against it for every schedule preset and time).

    Args:
        logits: (B, K, N) unnormalised log p(x0 | x_t) in any float dtype; log-probabilities are
            logits too. A transposed view of the network's (B, N, K) output is fine.
        x0: (B, N) long codes in 0..K-1; x_t: (B, N) long in 0..K (K = [MASK]).
        t: (B,) long paper times in 1..T.
    """
    codes = schedule.num_codes
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    t = t.view(-1, 1)  # (B, 1): every schedule value below broadcasts over the tokens
    s, zero = t - 1, torch.zeros_like(t)

    def tables(upper, lower):
        """(log, linear) pairs of (alpha, beta, gamma) of q(x_upper | x_lower), (B, 1) each."""
        logs = [v.to(dtype).clamp_min(LOG_ZERO) for v in schedule.transition(upper, lower)]
        return [(v, v.exp()) for v in logs]

    (log_at, _), (log_bt, _), _ = tables(t, zero)  # q(x_t | x0): c_k = abar_t + bbar_t, c_o = bbar_t
    (_, a1), (_, b1), (_, g1) = tables(t, s)  # q(x_t | x_{t-1})
    (log_as, a_s), (log_bs, b_s), (_, g_s) = tables(s, zero)  # q(x_{t-1} | x0)

    is_mask = x_t == codes
    k = x_t.clamp_max(codes - 1)[:, None]  # (B, 1, N)
    a = x0[:, None]
    is_a_k = (x0 == x_t) & ~is_mask

    # log-softmax statistics; the mass off k, P_o, is summed directly (1 - p_k rounds it away)
    # (every log p is (logit - max) - log total, never logit - logsumexp: at p ~ 1 the latter
    # rounds at the scale of the logits, ~1e-6 at 20, where the KL itself can be 1e-10)
    centred = logits - logits.detach().amax(1, keepdim=True)
    shifted = centred.exp()
    log_total = shifted.sum(1).log()  # (B, N)
    is_k = torch.arange(codes, device=logits.device)[None, :, None] == k
    off_k = torch.where(is_k, 0.0, shifted).sum(1)
    centred_a, centred_k = centred.gather(1, a).squeeze(1), centred.gather(1, k).squeeze(1)
    log_p_a, log_p_k = centred_a - log_total, centred_k - log_total
    log_p_off_k = _log(off_k) - log_total

    # w for a code x_t: w_k ∝ p_k r, w_j ∝ p_j (j != k), with r = c_o / c_k, so w_k = sigmoid(-x)
    # with x = log(P_o / (p_k r)). Everything about w_k comes from x, so that the terms that cancel
    # in the KL of a well-predicted kept token (both ~0.1, their difference ~1e-10) round alike.
    # With no replace noise (c_o = 0) only x0 = k can give x_t, so w = onehot(k).
    has_replace = log_bt > LOG_ZERO
    log_r = log_bt - torch.logaddexp(log_at, log_bt)
    x = log_p_off_k - log_p_k - log_r
    log_w_k = torch.where(has_replace, -_softplus(x), 0.0)
    one_minus_w_k = torch.where(has_replace, torch.sigmoid(x), 0.0)
    # log w_j = log p_j + shift (j != k), shift = -log(p_k r + P_o)
    shift_other = torch.where(has_replace, -(log_p_off_k + _softplus(-x)), LOG_ZERO)
    # a [MASK] x_t says nothing about x0: w = p
    log_w_k = torch.where(is_mask, log_p_k, log_w_k)
    shift_other = torch.where(is_mask, 0.0, shift_other)
    log_w_a = torch.where(is_a_k, log_w_k, log_p_a + shift_other)

    # normalisers (linear: every factor is a probability); Z_M = Z_P when x_t is [MASK]
    codes_s = a_s + codes * b_s  # q(x_{t-1} is a code)
    z_true = torch.where(is_mask, g1 * codes_s + g_s, a1 * (a_s * is_a_k + b_s) + b1 * codes_s)
    z_model = torch.where(is_mask, z_true, a1 * (a_s * log_w_k.exp() + b_s) + b1 * codes_s)
    log_z_ratio = _log(z_model) - _log(z_true)
    # a kept token (x0 = x_t) whose w_k is near 1: Z_M is Z_P less a A_s (1 - w_k), a small change
    # that the difference of two logs would round away
    near_one = is_a_k & (one_minus_w_k < 0.5)
    kept_change = (-a1 * a_s * one_minus_w_k / z_true.clamp_min(_TINY)).clamp_min(-0.5)
    log_z_ratio = torch.where(near_one, torch.log1p(kept_change), log_z_ratio)

    # P_j: background on every code but a and k, and its values at a and (code x_t) k
    q_background = torch.where(is_mask, g1, b1)  # q(x_t | x_{t-1} = j) for j not k
    background = q_background * b_s / z_true
    p_a = torch.where(is_a_k, a1 + b1, q_background) * (a_s + b_s) / z_true
    p_k = torch.where(is_mask | is_a_k, 0.0, (a1 + b1) * b_s / z_true)

    # u_j - v_j for the background code j: -softplus(log A_s + log w_j - log B_s), summed over all
    # codes (exact zero weight where there is no background, with a harmless finite argument)
    has_background = background > 0
    offset = torch.where(has_background, log_as + shift_other - log_bs - log_total, 0.0)  # (B, N)
    background_sum = -_softplus(centred + offset[:, None]).sum(1)
    # the terms at a and k exactly as the sum holds them, to take them out again
    background_at_a = -_softplus(centred_a + offset)
    background_at_k = -_softplus(centred_k + offset)
    log_as_plus_bs = torch.logaddexp(log_as, log_bs)
    diff_a = log_as_plus_bs - torch.logaddexp(log_as + log_w_a, log_bs)
    # a kept token whose w_k is near 1: -log(1 - A_s (1 - w_k) / (A_s + B_s)), from 1 - w_k itself
    kept_share = (a_s * one_minus_w_k / (a_s + b_s).clamp_min(_TINY)).clamp_max(0.5)
    diff_a = torch.where(near_one, -torch.log1p(-kept_share), diff_a)
    diff_k = log_bs - torch.logaddexp(log_as + log_w_k, log_bs)

    kl = (log_z_ratio + background * (background_sum - background_at_a) + p_a * diff_a
          + torch.where(is_mask | is_a_k, 0.0, p_k * diff_k - background * background_at_k))

    # log M_a = log P_a - (u_a - v_a) - (log Z_M - log Z_P): the bound at t = 1 (where s = 0)
    decoder_nll = diff_a + log_z_ratio - _log(p_a)
    return TokenTerms(kl=kl, decoder_nll=decoder_nll, x0_nll=-log_p_a)


def general_token_terms(
    logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> TokenTerms:
    """The same terms from their definition: both posteriors in full over (B, K+1, N) by
    :func:`.process.q_posterior`. The reference the closed form is tested against, and the
    baseline of ``bench/train_mfu.py --general-posterior``; same arguments as :func:`token_terms`."""
    log_p0 = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(1)
    log_x0 = log_onehot(x0, schedule.num_codes).to(log_p0.dtype)
    s = t - 1
    log_model = q_posterior(log_p0, x_t, t, s, schedule)  # (B, K+1, N)
    log_true = q_posterior(log_x0, x_t, t, s, schedule)
    return TokenTerms(kl=categorical_kl(log_true, log_model),
                      decoder_nll=-log_model.gather(1, x0[:, None]).squeeze(1),
                      x0_nll=-log_p0.gather(1, x0[:, None]).squeeze(1))
