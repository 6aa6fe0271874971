import pytest
import torch

from vqdiffusion.diffusion.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig


def test_tables_equal_diffusers_bit_for_bit():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.VQDiffusionScheduler(num_vec_classes=4097)
    ours = NoiseSchedule(4096)
    t = torch.arange(1, 101)
    pairs = [
        (ours.log_alpha[t, t - 1], ref.log_at), (ours.log_beta[t, t - 1], ref.log_bt),
        (ours.log_gamma[t, t - 1], ref.log_ct), (ours.log_alpha[t, 0], ref.log_cumprod_at[:100]),
        (ours.log_beta[t, 0], ref.log_cumprod_bt[:100]), (ours.log_gamma[t, 0], ref.log_cumprod_ct[:100]),
    ]
    for mine, theirs in pairs:
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
def test_every_transition_is_a_distribution_and_composes(preset):
    K = 7
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset))
    a, b, c = (x.double().exp() for x in (schedule.log_alpha, schedule.log_beta, schedule.log_gamma))
    total = a + K * b + c  # row sums of the code rows of every transition matrix
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    # q(x_t | x_0) = q(x_t | x_s) q(x_s | x_0): abar multiplies, (1 - gbar) multiplies.
    for t, s in [(90, 40), (100, 1), (2, 1), (57, 56)]:
        torch.testing.assert_close(a[t, 0], a[t, s] * a[s, 0], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(1 - c[t, 0], (1 - c[t, s]) * (1 - c[s, 0]), rtol=1e-5, atol=1e-12)


def test_preset_meanings():
    K = 10
    released = NoiseSchedule(K, ScheduleConfig.preset("released"))
    replace = released.log_beta[1:, 0].double().exp() * K
    assert torch.allclose(replace, torch.full_like(replace, 1e-6), rtol=1e-4)
    mask_only = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    assert torch.isinf(mask_only.log_beta).all()  # no replace noise anywhere
    assert mask_only.mask_probability(torch.tensor(100)) == 1.0
    assert mask_only.mask_probability(torch.tensor(50)).item() == pytest.approx(0.5)
    uniform = NoiseSchedule(K, ScheduleConfig.preset("uniform_only"))
    assert torch.isinf(uniform.log_gamma).all()  # [MASK] never appears
    paper = NoiseSchedule(K, ScheduleConfig.preset("paper"))
    assert paper.mask_probability(torch.tensor(100)).item() == pytest.approx(0.9)


def test_unknown_preset_lists_the_options():
    with pytest.raises(ValueError, match="unknown schedule preset 'maskonly'.*mask_only"):
        ScheduleConfig.preset("maskonly")


def test_invalid_endpoints_are_refused():
    with pytest.raises(ValueError, match="must not exceed 1"):
        NoiseSchedule(8, ScheduleConfig(alpha_cum_start=0.9, gamma_cum_start=0.2))
    with pytest.raises(ValueError, match="gamma_cum must not decrease"):
        NoiseSchedule(8, ScheduleConfig(gamma_cum_start=0.5, gamma_cum_end=0.1, alpha_cum_start=0.4))


def test_respaced_timesteps():
    schedule = NoiseSchedule(8)
    assert schedule.respaced_timesteps(10) == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert schedule.respaced_timesteps(100) == list(range(100, 0, -1))
    assert schedule.respaced_timesteps(1) == [100]
    assert schedule.respaced_timesteps(4, start=40) == [40, 30, 20, 10]
    for bad in (0, 101):
        with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\]"):
            schedule.respaced_timesteps(bad)
