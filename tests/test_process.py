import pytest
import torch

from vqdiffusion.diffusion.process import log_onehot, q_posterior, q_sample
from vqdiffusion.diffusion.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig

K, B, N = 6, 3, 12


def transition_matrix(schedule, t, s):
    """(K+1, K+1) float64 q(x_t = col | x_s = row), built by hand."""
    a, b, c = (x.double().exp() for x in schedule.transition(torch.tensor(t), torch.tensor(s)))
    m = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    m[:K, :K] = a * torch.eye(K, dtype=torch.float64) + b
    m[:K, K] = c
    m[K, K] = 1.0
    return m


def brute_force_posterior(schedule, p_x0, k, t, s):
    """p(x_s | x_t = k) = sum_x0 q(x_t|x_s) q(x_s|x0) p(x0) / q(x_t|x0) over x0 with q(x_t|x0) > 0."""
    q_t0, q_s0, q_ts = (transition_matrix(schedule, *ts) for ts in ((t, 0), (s, 0), (t, s)))
    weight = torch.where(q_t0[:K, k] > 0, p_x0 / q_t0[:K, k].clamp_min(1e-300), torch.zeros(()))
    joint = (weight[:, None] * q_s0[:K, :]).sum(0) * q_ts[:, k]
    return joint / joint.sum()


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
@pytest.mark.parametrize("t,s", [(100, 99), (100, 90), (37, 36), (10, 0), (2, 1), (60, 3)])
def test_posterior_matches_hand_computation(preset, t, s):
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset))
    g = torch.Generator().manual_seed(t * 7 + s)
    log_p = torch.randn(B, K, N, generator=g).mul(2).log_softmax(1)
    x_t = torch.randint(0, K + 1, (B, N), generator=g)
    ours = q_posterior(log_p, x_t, torch.full((B,), t), torch.full((B,), s), schedule).double().exp()
    for b in range(B):
        for n in range(N):
            k = int(x_t[b, n])
            if transition_matrix(schedule, t, 0)[:K, k].sum() == 0:
                continue  # x_t impossible under this schedule (a mask with uniform_only)
            expected = brute_force_posterior(schedule, log_p[b, :, n].double().exp(), k, t, s)
            assert torch.allclose(ours[b, :, n], expected, atol=2e-6), (b, n, k)


def test_posterior_matches_diffusers_step():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.VQDiffusionScheduler(num_vec_classes=K + 1)
    schedule = NoiseSchedule(K)
    g = torch.Generator().manual_seed(1)
    log_p = torch.randn(B, K, N, generator=g).log_softmax(1)
    x_t = torch.randint(0, K + 1, (B, N), generator=g)
    for timestep in (1, 5, 50, 99):  # diffusers' timestep = paper t - 1
        theirs = ref.q_posterior(log_p, x_t, timestep).exp()
        ours = q_posterior(log_p, x_t, torch.full((B,), timestep + 1), torch.full((B,), timestep), schedule).exp()
        assert torch.allclose(ours, theirs, atol=2e-6)


def test_posterior_of_true_x0_keeps_revealed_tokens_under_mask_only():
    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    x0 = torch.randint(0, K, (B, N))
    x_t = q_sample(x0, torch.full((B,), 60), schedule)
    post = q_posterior(log_onehot(x0, K), x_t, torch.full((B,), 60), torch.full((B,), 30), schedule).exp()
    revealed = x_t != K
    assert torch.equal(post.argmax(1)[revealed], x0[revealed])
    assert torch.allclose(post.max(1).values[revealed], torch.ones(()))
    # a masked token stays masked with probability gbar_30 / gbar_60 = 0.5
    assert torch.allclose(post[:, K][~revealed], torch.tensor(0.5), atol=1e-6)


@pytest.mark.parametrize("preset", ["released", "paper", "uniform_only"])
def test_q_sample_frequencies_match_cumulative_probabilities(preset):
    schedule = NoiseSchedule(K, ScheduleConfig.preset(preset))
    t = 55
    x0 = torch.full((4000, 50), 2)
    x_t = q_sample(x0, torch.full((4000,), t), schedule, torch.Generator().manual_seed(0))
    freq = torch.bincount(x_t.flatten(), minlength=K + 1).double() / x_t.numel()
    a, b, c = (x.double().exp() for x in schedule.cumulative(torch.tensor(t)))
    expected = torch.full((K + 1,), float(b), dtype=torch.float64)
    expected[2] += a
    expected[K] = c
    assert torch.allclose(freq, expected, atol=3e-3)
