import contextlib

import pytest
import torch

from vqdiffusion.diffusion.loss import DiffusionLoss, LossConfig
from vqdiffusion.diffusion.process import LOG_PROB_FLOOR, log_onehot
from vqdiffusion.diffusion.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig

K, B, N = 8, 4, 16


@contextlib.contextmanager
def forbid_host_sync():
    """Fail on any tensor -> Python conversion (what forces a GPU sync)."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(*args, **kwargs):
        raise AssertionError("host-device sync inside the loss")

    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
def test_true_x0_model_beats_uniform_model_at_every_t(preset):
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset))
    loss = DiffusionLoss(schedule, LossConfig(time_sampling="uniform"))
    batch = 32  # enough tokens that even t = 1 of mask_only (1% masked) masks some
    x0 = torch.randint(0, K, (batch, N))

    def oracle(x_t, t):
        return log_onehot(x0, K).clamp(min=LOG_PROB_FLOOR).log_softmax(1)

    def uniform(x_t, t):
        return torch.full((batch, K, N), -torch.log(torch.tensor(float(K))))

    for step in range(1, 101):
        t = torch.full((batch,), step)
        g = torch.Generator().manual_seed(step)
        good = loss(oracle, x0, generator=g, t=t)["loss"]
        g = torch.Generator().manual_seed(step)
        bad = loss(uniform, x0, generator=g, t=t)["loss"]
        assert torch.isfinite(good) and torch.isfinite(bad)
        assert good < bad, (step, float(good), float(bad))
        assert good < 1e-3  # a perfect model has (almost) zero loss


def test_loss_terms_by_hand_at_t1_are_the_decoder_nll():
    schedule = NoiseSchedule(K)
    loss = DiffusionLoss(schedule, LossConfig(auxiliary_weight=0.0, time_sampling="uniform"))
    x0 = torch.randint(0, K, (B, N))
    logits = torch.randn(B, K, N)

    out = loss(lambda x_t, t: logits.log_softmax(1), x0, t=torch.ones(B, dtype=torch.long))
    # at t = 1 almost nothing is noised (gbar_1 ~ 1e-5): the term is -log p(x0) per token, times T
    nll = -logits.log_softmax(1).gather(1, x0[:, None]).mean()
    assert float(out["decoder_nll"]) == pytest.approx(float(nll), rel=1e-3)
    assert float(out["loss"]) == pytest.approx(100 * float(nll), rel=1e-3)


@pytest.mark.parametrize("t,factor", [(1, 2.0), (50, 1.51), (100, 1.01)])
def test_adaptive_auxiliary_factor_is_the_authors_at_their_zero_based_time(t, factor):
    """The authors scale the auxiliary term by (1 - i/T) + 1 with their 0-based index i = t - 1:
    2 at t = 1, 1 + 1/T at t = T (by hand, T = 100)."""
    schedule = NoiseSchedule(K)
    x0 = torch.randint(0, K, (B, N))
    logits = torch.randn(B, K, N)
    times = torch.full((B,), t)
    plain = DiffusionLoss(schedule, LossConfig(auxiliary_weight=1e-3, adaptive_auxiliary=False))
    adaptive = DiffusionLoss(schedule, LossConfig(auxiliary_weight=1e-3, adaptive_auxiliary=True))
    a = plain(lambda x, s: logits.log_softmax(1), x0, torch.Generator().manual_seed(0), t=times)
    b = adaptive(lambda x, s: logits.log_softmax(1), x0, torch.Generator().manual_seed(0), t=times)
    assert float(a["aux"]) > 0
    assert float(b["aux"]) == pytest.approx(factor * float(a["aux"]), rel=1e-5)
    assert float(a["vb"]) == pytest.approx(float(b["vb"]), rel=1e-6)


def test_mask_weights_scale_the_kl_terms_and_leave_the_decoder_nll_alone():
    """As the authors: masked/unmasked weights on the KL terms (t > 1), none on the t = 1 NLL."""
    schedule = NoiseSchedule(K)
    x0 = torch.randint(0, K, (B, N))
    logits = torch.randn(B, K, N).log_softmax(1)
    plain = DiffusionLoss(schedule, LossConfig(auxiliary_weight=0.0, time_sampling="uniform"))
    weighted = DiffusionLoss(schedule, LossConfig(auxiliary_weight=0.0, time_sampling="uniform",
                                                  masked_weight=3.0, unmasked_weight=3.0))
    first = torch.ones(B, dtype=torch.long)
    late = torch.full((B,), 60)
    for t, ratio in ((first, 1.0), (late, 3.0)):
        a = plain(lambda x, s: logits, x0, torch.Generator().manual_seed(0), t=t)
        b = weighted(lambda x, s: logits, x0, torch.Generator().manual_seed(0), t=t)
        assert float(b["vb"]) == pytest.approx(ratio * float(a["vb"]), rel=1e-5)


def test_importance_history_survives_state_dict_and_switches_on():
    schedule = NoiseSchedule(K)
    loss = DiffusionLoss(schedule, LossConfig(importance_min_count=2))
    x0 = torch.randint(0, K, (B, N))
    model = lambda x_t, t: torch.randn(B, K, N).log_softmax(1)  # noqa: E731
    uniform = loss.time_distribution().clone()
    for step in range(1, 101):
        for _ in range(3):
            loss(model, x0, t=torch.full((B,), step))
    assert (loss.loss_count > 2).all()
    importance = loss.time_distribution()
    assert not torch.allclose(importance, uniform)
    assert importance.sum().item() == pytest.approx(1.0)

    restored = DiffusionLoss(NoiseSchedule(K), LossConfig(importance_min_count=2))
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.loss_sq_history, loss.loss_sq_history)
    assert torch.equal(restored.time_distribution(), importance)


def test_loss_has_no_host_sync_and_backpropagates():
    schedule = NoiseSchedule(K)
    loss = DiffusionLoss(schedule)
    x0 = torch.randint(0, K, (B, N))
    logits = torch.randn(B, K, N, requires_grad=True)
    with forbid_host_sync():
        out = loss(lambda x_t, t: logits.log_softmax(1), x0)
        out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["mask_only", "uniform_only"])
def test_gradients_are_finite_for_degenerate_schedules(preset):
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset))
    loss = DiffusionLoss(schedule)
    logits = torch.randn(B, K, N, requires_grad=True)
    loss(lambda x_t, t: logits.log_softmax(1), torch.randint(0, K, (B, N)))["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_compiled_loss_math_equals_the_eager_math():
    """DiffusionLoss.compile_math (train.py's compile=true) changes the speed, not the numbers."""
    schedule = NoiseSchedule(7)
    x0 = torch.randint(0, 7, (4, 10), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(4, 7, 10, generator=torch.Generator().manual_seed(1), requires_grad=True)
    results = []
    for compiled in (False, True):
        loss = DiffusionLoss(schedule)
        loss.compile_math = compiled
        logits.grad = None
        terms = loss(lambda x_t, t: torch.log_softmax(logits, 1), x0, generator=torch.Generator().manual_seed(2),
                     t=torch.tensor([1, 5, 50, 100]))
        terms["loss"].backward()
        results.append((terms, logits.grad.clone()))
    (eager, eager_grad), (fused, fused_grad) = results
    for key in ("loss", "vb", "aux", "kl", "decoder_nll"):
        torch.testing.assert_close(fused[key], eager[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused_grad, eager_grad, rtol=1e-5, atol=1e-6)


def test_compiled_loss_math_runs_eager_without_gradients(monkeypatch):
    """Validation (no grad) never builds the compiled graph: Triton 3.6 crashed building that one."""
    import vqdiffusion.diffusion.loss as loss_module

    def refuse(function):
        raise AssertionError("the no-grad loss asked for the compiled math")

    monkeypatch.setattr(loss_module, "compiled", refuse)
    loss = DiffusionLoss(NoiseSchedule(K))
    loss.compile_math = True
    x0 = torch.randint(0, K, (B, N))
    with torch.no_grad():
        terms = loss(lambda x_t, t: torch.zeros(B, K, N), x0, t=torch.full((B,), 30))
    assert torch.isfinite(terms["loss"])
    with pytest.raises(AssertionError, match="asked for the compiled math"):
        loss(lambda x_t, t: torch.zeros(B, K, N, requires_grad=True), x0, t=torch.full((B,), 30))


def test_validation_leaves_the_importance_history_alone():
    """Validation (eval mode, no gradients) evaluates other weights at fixed t: its losses must
    not steer which t training samples next."""
    loss = DiffusionLoss(NoiseSchedule(K), LossConfig(importance_min_count=2))
    x0 = torch.randint(0, K, (B, N))
    model = lambda x_t, t: torch.randn(B, K, N).log_softmax(1)  # noqa: E731
    with torch.no_grad():
        loss.eval()(model, x0, t=torch.full((B,), 5))
    assert not loss.loss_count.any() and not loss.loss_sq_history.any()
    loss.train()(model, x0, t=torch.full((B,), 5))
    assert loss.loss_count[4] == B and loss.loss_sq_history[4] > 0


@pytest.mark.parametrize("t", [2, 17, 60, 100])
def test_masked_ce_is_the_mask_only_bound_term_by_term(t):
    """MD4 / MDLM's weighted cross-entropy equals the closed-form VLB at every t > 1 of a mask-only
    schedule: w_t = (gbar_t - gbar_{t-1}) / gbar_t = 1/t here, times the masked tokens' NLL."""
    from vqdiffusion.diffusion.loss import masked_ce_terms, per_sample_terms

    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    g = torch.Generator().manual_seed(t)
    x0 = torch.randint(0, K, (B, N), generator=g)
    times = torch.full((B,), t)
    from vqdiffusion.diffusion.process import q_sample

    x_t = q_sample(x0, times, schedule, g)
    logits = torch.randn(B, K, N, generator=g) * 2
    vlb, *_ = per_sample_terms(logits, x0, x_t, times, schedule, 1.0, 1.0, 0.0, True)
    masked_ce, *_ = masked_ce_terms(logits, x0, x_t, times, schedule, 0.0, True)
    torch.testing.assert_close(masked_ce, vlb, rtol=1e-4, atol=1e-5)
    nll = -logits.log_softmax(1).gather(1, x0[:, None]).squeeze(1)
    by_hand = (nll * (x_t == K)).sum(1) / t  # gbar_t = t / 100
    torch.testing.assert_close(masked_ce, by_hand, rtol=1e-4, atol=1e-5)


def test_masked_ce_trains_as_an_option_and_refuses_replace_noise():
    mask_only = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    loss = DiffusionLoss(mask_only, LossConfig(objective="masked_ce", auxiliary_weight=0.0, time_sampling="uniform"))
    logits = torch.zeros(B, K, N, requires_grad=True)
    terms = loss(lambda x_t, t: logits, torch.randint(0, K, (B, N)), generator=torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert terms["aux"] == 0 and torch.equal(terms["loss"], terms["vb"])
    with pytest.raises(ValueError, match=r"'masked_ce' needs a mask-only schedule .* up to 10\.0%"):
        DiffusionLoss(NoiseSchedule(K, ScheduleConfig.preset("paper")), LossConfig(objective="masked_ce"))
    with pytest.raises(ValueError, match="objective must be one of"):
        LossConfig(objective="elbo")
