import math

import pytest
import torch

from vqdiffusion.diffusion.guidance import classifier_free_guidance, scheduled_guidance, truncate
from vqdiffusion.diffusion.samplers import AncestralSampler, EditSpec, PuritySampler, make_sampler, sample_prior
from vqdiffusion.diffusion.schedule import NoiseSchedule, ScheduleConfig

K, B, N = 12, 64, 256


def random_denoiser(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(K, N, generator=g).mul(3)

    def log_p_x0(x_t, t):
        return table.log_softmax(0).expand(x_t.shape[0], -1, -1)

    return log_p_x0


def test_respaced_run_reports_ten_timesteps_and_masks_shrink_as_gbar():
    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    x_T = sample_prior(schedule, (B, N), torch.device("cpu"), None)
    assert (x_T == K).all()
    seen = []
    AncestralSampler()(
        random_denoiser(), schedule, x_T, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x: seen.append((i, t, (x == K).float().mean().item())),
    )
    timesteps = [t for _, t, _ in seen]
    assert timesteps == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]  # respaced, not diffusers' 9..0
    targets = [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    for (_, _, share), target in zip(seen, targets):
        expected = target / 100  # gbar(t') / gbar(T) with gbar(T) = 1
        sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / (B * N))
        assert abs(share - expected) <= 5 * sigma + 1e-9, (target, share)


def test_full_chain_ends_without_masks_and_revealed_tokens_stay_under_mask_only():
    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    states = []
    x0 = AncestralSampler()(random_denoiser(), schedule, torch.full((4, N), K), num_inference_steps=100,
                            callback=lambda i, t, x: states.append(x.clone()))
    assert len(states) == 100 and not (x0 == K).any()
    for before, after in zip(states, states[1:]):
        revealed = before != K
        assert torch.equal(after[revealed], before[revealed])


def test_sampler_draws_from_p_x0_when_one_step():
    schedule = NoiseSchedule(K)
    denoiser = random_denoiser(3)
    x = AncestralSampler()(denoiser, schedule, torch.full((4000, N), K), num_inference_steps=1,
                           generator=torch.Generator().manual_seed(1))
    freq = torch.nn.functional.one_hot(x, K).float().mean(0).T  # (K, N)
    expected = denoiser(x[:1], None)[0].exp()
    assert (freq - expected).abs().max() < 0.035


def test_truncation_keeps_smallest_set_reaching_rate():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    log_p = probs.log()[None, :, None]
    kept = lambda r: torch.isfinite(truncate(log_p, r))[0, :, 0].tolist()  # noqa: E731
    assert kept(0.4) == [True, False, False, False]  # the top class always survives
    assert kept(0.49) == [True, False, False, False]  # mass before the 2nd class is 0.5
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.86) == [True, True, True, False]
    assert kept(0.99) == [True, True, True, True]


def test_truncation_matches_diffusers_and_skips_work_at_rate_one(monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    log_p = torch.randn(3, K, 20).mul(2).log_softmax(1)
    reference = diffusers.VQDiffusionPipeline.truncate(None, log_p, 0.86)
    assert torch.equal(torch.isfinite(truncate(log_p, 0.86)), torch.isfinite(reference))

    def no_sort(*args, **kwargs):
        raise AssertionError("sorted at r = 1")

    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    assert truncate(log_p, 1.0) is log_p


def test_guidance_is_renormalised_and_identity_at_scale_one():
    u, c = torch.randn(2, K, 5).log_softmax(1), torch.randn(2, K, 5).log_softmax(1)
    assert torch.allclose(classifier_free_guidance(u, c, 1.0), c, atol=1e-6)
    guided = classifier_free_guidance(u, c, 4.0)
    assert torch.allclose(guided.exp().sum(1), torch.ones(2, 5), atol=1e-5)


def test_linear_guidance_rises_from_none_to_twice_the_scale_minus_one_with_the_same_mean():
    t = torch.tensor([100, 75, 50, 1])
    assert scheduled_guidance(3.0, t, 100, "constant") == 3.0
    linear = scheduled_guidance(3.0, t, 100, "linear")
    assert linear.shape == (4, 1, 1)
    assert linear.flatten().tolist() == pytest.approx([1.0, 2.0, 3.0, 4.96])
    assert float(scheduled_guidance(3.0, torch.arange(1, 101), 100, "linear").mean()) == pytest.approx(3.0, abs=0.03)


def test_the_pipeline_guides_each_sample_at_its_own_time():
    from vqdiffusion.tiny import tiny_pipeline

    pipe = tiny_pipeline("class")
    conditions = pipe._conditions(None, torch.tensor([3, 7]), 1, True)
    x = torch.randint(0, pipe.transformer.config.num_embeds + 1, (2, pipe.transformer.config.num_tokens))
    with torch.no_grad():
        linear = pipe.denoiser(conditions, 3.0, True, "linear")(x, torch.tensor([100, 50]))
        at_one = pipe.denoiser(conditions, 1.0, True)(x, torch.tensor([100, 50]))  # the conditional model
        at_three = pipe.denoiser(conditions, 3.0, True)(x, torch.tensor([100, 50]))
    torch.testing.assert_close(linear[0], at_one[0])
    torch.testing.assert_close(linear[1], at_three[1])
    assert not torch.allclose(linear[0], at_three[0], atol=1e-3)
    with pytest.raises(ValueError, match=r"guidance_schedule must be one of \('constant', 'linear'\), got 'cosine'"):
        pipe(class_labels=[1], num_inference_steps=2, guidance_scale=2.0, guidance_schedule="cosine")


def test_purity_sampler_reveals_the_expected_numbers_and_keeps_them():
    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    masked_counts, states = [], []
    out = PuritySampler()(random_denoiser(), schedule, torch.full((2, N), K), num_inference_steps=4,
                          callback=lambda i, t, x: (masked_counts.append((x == K).sum(1).tolist()),
                                                    states.append(x.clone())))
    # steps 100 -> 75 -> 50 -> 25 -> 0: 192, 128, 64, 0 still masked of 256
    assert masked_counts == [[192, 192], [128, 128], [64, 64], [0, 0]]
    for before, after in zip(states, states[1:]):
        revealed = before != K
        assert torch.equal(after[revealed], before[revealed])
    assert not (out == K).any()


def test_purity_sampler_reveals_the_purest_first():
    schedule = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))
    sharp = torch.zeros(K, N)
    sharp[0, : N // 2] = 10.0  # the first half of the positions is confident

    def denoiser(x_t, t):
        return sharp.log_softmax(0).expand(x_t.shape[0], -1, -1)

    first = []
    PuritySampler()(denoiser, schedule, torch.full((1, N), K), num_inference_steps=2,
                    callback=lambda i, t, x: first.append(x.clone()) if i == 0 else None)
    revealed = (first[0][0] != K).nonzero().flatten()
    assert len(revealed) == N // 2 and (revealed < N // 2).all()


def test_inpainting_keeps_masked_positions_and_editing_starts_midway():
    schedule = NoiseSchedule(K)
    tokens = torch.randint(0, K, (2, N))
    keep = torch.rand(2, N) < 0.5
    steps = []
    out = AncestralSampler()(random_denoiser(), schedule, torch.full((2, N), K), num_inference_steps=5,
                             edit=EditSpec(tokens, start_step=40, keep_mask=keep),
                             callback=lambda i, t, x: steps.append(t))
    assert torch.equal(out[keep], tokens[keep])
    assert steps == [39, 31, 23, 15, 7]


def test_make_sampler_errors_name_the_options():
    with pytest.raises(ValueError, match="unknown sampler 'fastest'.*ancestral.*diffusers.*purity"):
        make_sampler("fastest")
    with pytest.raises(ValueError, match="purity_weight must be > 0"):
        PuritySampler(0)


@pytest.mark.parametrize("sampler", ["ancestral", "purity"])
def test_one_generator_per_image_gives_the_same_image_in_any_batch(sampler):
    """Image i's draws come from generator i alone: a batch of three equals three single calls."""
    from vqdiffusion.tiny import tiny_pipeline

    pipe = tiny_pipeline("text", sampler=sampler)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square", "a red circle"]
    kwargs = dict(num_inference_steps=5, guidance_scale=2.0, truncation_rate=0.9, output_type="tokens")
    together = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)], **kwargs).images
    alone = [pipe([p], generator=[torch.Generator().manual_seed(s)], **kwargs).images[0]
             for p, s in zip(prompts, (7, 8, 9))]
    assert torch.equal(together, torch.stack(alone))
    assert not torch.equal(together[0], together[2])  # same prompt, other seed: another image


def test_generator_list_must_match_the_batch():
    from vqdiffusion.tiny import tiny_pipeline

    pipe = tiny_pipeline("text")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="got 1 generators for a batch of 2"):
        pipe(["a", "b"], num_inference_steps=2, generator=[torch.Generator()])
