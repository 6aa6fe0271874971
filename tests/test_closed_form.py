"""The loss's closed form against its definition (the general posteriors of process.q_posterior)."""

import pytest
import torch

from vqdiffusion.diffusion.closed_form import general_token_terms, token_terms
from vqdiffusion.diffusion.loss import DiffusionLoss, LossConfig, per_sample_terms
from vqdiffusion.diffusion.process import q_sample
from vqdiffusion.diffusion.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig

K, B, N = 7, 6, 40
TIMES = (1, 2, 3, 17, 50, 98, 99, 100)  # both ends, where s = 0 and where almost all is masked


def noised(schedule: NoiseSchedule, step: int, dtype=torch.float64, scale: float = 3.0):
    """(logits (B, K, N), x0, x_t, t) at paper time ``step``; x_t mixes kept, replaced and masked."""
    t = torch.full((B,), step)
    x0 = torch.randint(0, K, (B, N))
    x_t = q_sample(x0, t, schedule)
    return scale * torch.randn(B, K, N, dtype=dtype), x0, x_t, t


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
def test_closed_form_equals_the_general_posterior_kl_and_its_gradient(preset):
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset)).to(torch.float64)
    replaced = 0
    for step in TIMES:
        logits, x0, x_t, t = noised(schedule, step)
        logits.requires_grad_()
        replaced += int(((x_t != x0) & (x_t < K)).sum())
        want, got = general_token_terms(logits, x0, x_t, t, schedule), token_terms(logits, x0, x_t, t, schedule)
        # the KL is the bound at t > 1 only (at t = 1 it is the decoder NLL), but finite everywhere
        names = ("decoder_nll", "x0_nll") if step == 1 else ("kl", "decoder_nll", "x0_nll")
        for name in names:
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-12,
                                       msg=lambda m, name=name, step=step: f"{preset} t={step} {name}: {m}")
        assert all(torch.isfinite(term).all() for term in got)
        bound = "decoder_nll" if step == 1 else "kl"
        weights = torch.randn(2, B, N, dtype=torch.float64)

        def objective(terms, weights=weights, bound=bound):
            return (getattr(terms, bound) * weights[0]).sum() + (terms.x0_nll * weights[1]).sum()

        (want_grad,) = torch.autograd.grad(objective(want), logits)
        (got_grad,) = torch.autograd.grad(objective(got), logits)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)
    if preset in ("paper", "uniform_only"):
        assert replaced > 0  # the x_t != x0 branch was exercised


def test_closed_form_is_shift_invariant_and_takes_bf16_logits():
    """Logits and log-probabilities give the same terms; a bf16 transposed view is cast inside."""
    schedule = NoiseSchedule(K, ScheduleConfig.preset("paper"))
    logits, x0, x_t, t = noised(schedule, 40, dtype=torch.float32)
    from_logits = token_terms(logits + 11.0, x0, x_t, t, schedule)
    from_log_probs = token_terms(logits.log_softmax(1), x0, x_t, t, schedule)
    for a, b in zip(from_logits, from_log_probs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    half = logits.transpose(1, 2).contiguous().bfloat16().transpose(1, 2)
    terms = token_terms(half, x0, x_t, t, schedule)
    assert terms.kl.dtype == torch.float32
    torch.testing.assert_close(terms.kl, general_token_terms(half.float(), x0, x_t, t, schedule).kl,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
def test_float32_closed_form_is_as_accurate_as_the_general_form_on_confident_logits(preset):
    """Peaked logits (a trained model's) in float32, both forms against float64: the closed form's
    error stays at float32 rounding (logits up to ~100, ulp 8e-6), as the general form's does."""
    schedule64 = NoiseSchedule(K, ScheduleConfig.preset(preset)).to(torch.float64)
    schedule32 = NoiseSchedule(K, ScheduleConfig.preset(preset))
    for step in (2, 30, 99):
        logits, x0, x_t, t = noised(schedule64, step, scale=30.0)
        logits.scatter_add_(1, x0[:, None], torch.full((B, 1, N), 40.0, dtype=torch.float64))
        exact = general_token_terms(logits, x0, x_t, t, schedule64)
        closed = token_terms(logits.float(), x0, x_t, t, schedule32)
        general = general_token_terms(logits.float(), x0, x_t, t, schedule32)
        for name in ("kl", "decoder_nll", "x0_nll"):
            scale = 1 + getattr(exact, name).abs()
            closed_error = ((getattr(closed, name).double() - getattr(exact, name)).abs() / scale).max()
            general_error = ((getattr(general, name).double() - getattr(exact, name)).abs() / scale).max()
            assert closed_error < 5e-6 and general_error < 5e-6, (name, step, closed_error, general_error)


def test_a_well_predicted_kept_token_has_a_kl_near_zero_in_float32():
    """The case where the KL's two large terms (~0.1 each) cancel to ~1e-10: a kept token, little
    replace noise (the released schedule), a confident model. Rounding them differently once gave
    -5e-7 here."""
    schedule64 = NoiseSchedule(K, ScheduleConfig.preset("released")).to(torch.float64)
    schedule32 = NoiseSchedule(K, ScheduleConfig.preset("released"))
    x0 = torch.randint(0, K, (B, N))
    t = torch.full((B,), 2)
    logits = torch.zeros(B, K, N, dtype=torch.float64).scatter_(1, x0[:, None], 20.0)
    exact = token_terms(logits, x0, x0, t, schedule64)
    assert exact.kl.abs().max() < 1e-9
    closed = token_terms(logits.float(), x0, x0, t, schedule32)
    for name in ("kl", "decoder_nll"):
        assert (getattr(closed, name).double() - getattr(exact, name)).abs().max() < 1e-9, name


def test_the_loss_uses_the_closed_form_and_matches_the_general_reference():
    schedule = NoiseSchedule(K)
    config = LossConfig(auxiliary_weight=1e-2, masked_weight=0.7, time_sampling="uniform")
    x0 = torch.randint(0, K, (B, N))
    logits = torch.randn(B, K, N)
    t = torch.tensor([1, 2, 30, 60, 99, 100])
    closed, general = DiffusionLoss(schedule, config), DiffusionLoss(schedule, config)
    general.terms_of_tokens = general_token_terms
    assert closed.terms_of_tokens is token_terms
    for name in ("loss", "vb", "aux", "kl", "decoder_nll"):
        a = closed(lambda x_t, t: logits, x0, torch.Generator().manual_seed(3), t=t)[name]
        b = general(lambda x_t, t: logits, x0, torch.Generator().manual_seed(3), t=t)[name]
        assert float(a) == pytest.approx(float(b), rel=1e-5), name


@pytest.mark.gpu
def test_compiled_closed_form_on_bf16_logits_matches_the_reference_on_cuda():
    """What training runs on a GPU: per_sample_terms under torch.compile, bf16 logits."""
    from vqdiffusion.speed.compile import compiled

    codes, batch, tokens = 1024, 8, 256
    schedule = NoiseSchedule(codes, ScheduleConfig.preset("paper")).to(device="cuda")
    t = torch.randint(1, 101, (batch,), device="cuda")
    x0 = torch.randint(0, codes, (batch, tokens), device="cuda")
    x_t = q_sample(x0, t, schedule)
    logits = (4 * torch.randn(batch, tokens, codes, device="cuda")).bfloat16().transpose(1, 2).requires_grad_()
    args = (x0, x_t, t, schedule, 1.0, 1.0, 5e-4, True)
    bound, *_ = compiled(per_sample_terms)(logits, *args)
    (grad,) = torch.autograd.grad(bound.sum(), logits)
    reference = logits.detach().double().requires_grad_()
    want, *_ = per_sample_terms(reference, *args, terms_of_tokens=general_token_terms)
    (want_grad,) = torch.autograd.grad(want.sum(), reference)
    torch.testing.assert_close(bound.double(), want, rtol=1e-4, atol=1e-3)
    assert torch.isfinite(grad).all()
    error = (grad.double() - want_grad).norm() / want_grad.norm()
    assert error < 1e-2, error  # the gradient comes back in bf16
