"""First-hitting sampling, ReMDM remasking and float64 draws: their defining properties."""

import math

import pytest
import torch
from denoisers import fixed_denoiser

from vqdiffusion.diffusion.process import gumbel_argmax, q_sample
from vqdiffusion.diffusion.samplers import AncestralSampler, EditSpec, FirstHittingSampler, ReMDMSampler, make_sampler
from vqdiffusion.diffusion.samplers.first_hitting import even_masked_counts, next_reveal_times
from vqdiffusion.diffusion.samplers.remdm import remasking_probabilities
from vqdiffusion.diffusion.schedule import NoiseSchedule, ScheduleConfig
from vqdiffusion.tiny import tiny_pipeline

K, N = 12, 64
MASK_ONLY = NoiseSchedule(K, ScheduleConfig.preset("mask_only"))


def chain(sampler, denoiser, steps, batch=2, schedule=MASK_ONLY, **kwargs):
    states = []
    out = sampler(denoiser, schedule, torch.full((batch, N), K), num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: states.append(x.clone()),
                  **kwargs)
    return out, states


# first-hitting

def test_exact_first_hitting_reveals_one_token_per_call_and_never_changes_it():
    seen = []
    out, states = chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N), seen), steps=None)
    assert len(states) == N and len(seen) == N  # one network call per token, none wasted
    masked = [int((s == K).sum(1)[0]) for s in states]
    assert masked == list(range(N - 1, -1, -1))
    for before, after in zip(states, states[1:]):
        revealed = before != K
        assert torch.equal(after[revealed], before[revealed])
    assert not (out == K).any()


def test_fewer_calls_reveal_an_even_share_each():
    out, states = chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N)), steps=4)
    assert [int((s == K).sum(1)[0]) for s in states] == [48, 32, 16, 0]
    assert [c.tolist() for c in even_masked_counts(torch.tensor([10.0]), 3)] == [[6.0], [3.0], [0.0]]
    _, states = chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N)), steps=1000)
    assert len(states) == N  # never more calls than tokens


def test_reveal_times_are_the_order_statistics_of_uniform_draws():
    """The k-th largest of n uniforms below g has mean g (n - k + 1) / (n + 1)."""
    draws, n, k, g = 200_000, 10, 3, 0.8
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(draws, n, generator=generator, dtype=torch.float64)
    first, last = next_reveal_times(torch.full((draws,), g, dtype=torch.float64), torch.full((draws,), n),
                                    torch.full((draws,), k), u)
    assert first.mean().item() == pytest.approx(g * n / (n + 1), abs=2e-3)
    assert last.mean().item() == pytest.approx(g * (n - k + 1) / (n + 1), abs=2e-3)
    # the same as sorting n uniform draws below g directly
    direct = (g * torch.rand(draws, n, generator=generator, dtype=torch.float64)).sort(1, descending=True).values
    assert last.std().item() == pytest.approx(direct[:, k - 1].std().item(), rel=0.02)
    assert (last <= first).all() and (first <= g).all()


def test_the_network_is_told_the_time_of_the_sampled_first_reveal():
    seen = []
    chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N), seen), steps=None, batch=1)
    times = torch.cat(seen).tolist()
    assert times == sorted(times, reverse=True) and times[0] >= 90 and times[-1] <= 10
    # the first reveal of 64 comes at the largest of 64 uniforms: E = 64/65 of the way, t ~ 98
    assert times[0] == pytest.approx(98.5, abs=3)


def test_first_hitting_samples_the_model_when_every_token_has_its_call():
    """Exact mode with an x-independent denoiser: every position's code follows p(x0) itself."""
    logits = torch.randn(K, N, generator=torch.Generator().manual_seed(3)).mul(2)
    out = FirstHittingSampler()(fixed_denoiser(logits), MASK_ONLY, torch.full((1500, N), K), num_inference_steps=None,
                                generator=torch.Generator().manual_seed(1))
    freq = torch.nn.functional.one_hot(out, K).float().mean(0).T  # (K, N)
    assert (freq - logits.softmax(0)).abs().max() < 0.05


def test_mask_only_samplers_refuse_replace_noise_and_name_the_share():
    paper = NoiseSchedule(K, ScheduleConfig.preset("paper"))
    for sampler in (FirstHittingSampler(), ReMDMSampler()):
        with pytest.raises(ValueError, match=r"needs a mask-only schedule .* up to 10\.0% of the tokens"):
            chain(sampler, fixed_denoiser(torch.randn(K, N)), steps=4, schedule=paper)
    released = NoiseSchedule(K, ScheduleConfig.preset("released"))  # 1e-6 replace share: accepted
    out, _ = chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N)), steps=4, schedule=released)
    assert not (out == K).any()


def test_first_hitting_inpaints_with_keep_mask_and_refuses_a_start_step():
    tokens = torch.randint(0, K, (2, N))
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[:, : N // 2] = True
    out, states = chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N)), steps=8,
                        edit=EditSpec(tokens, None, keep))
    assert torch.equal(out[keep], tokens[keep]) and not (out == K).any()
    assert int((states[0] == K).sum(1)[0]) == N // 2 - N // 2 // 8
    with pytest.raises(ValueError, match="starts from \\[MASK\\]"):
        chain(FirstHittingSampler(), fixed_denoiser(torch.randn(K, N)), steps=3, edit=EditSpec(tokens, 50, None))


# ReMDM

@pytest.mark.parametrize("strategy", ["cap", "rescale"])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_remasking_keeps_the_forward_marginals(strategy, eta):
    """From x_t ~ q(x_t | x0) with a denoiser that knows x0, one step gives q(x_s | x0): a token is
    unmasked with probability 1 - gbar_s whatever sigma is, and sigma > 0 re-masks some."""
    batch, t, s = 400, 60, 40
    x0 = torch.randint(0, K, (batch, N), generator=torch.Generator().manual_seed(0))
    x_t = q_sample(x0, torch.full((batch,), t), MASK_ONLY, torch.Generator().manual_seed(1))

    def oracle(x, times):  # (B, K, N) certain of x0
        return torch.nn.functional.one_hot(x0, K).permute(0, 2, 1).float().clamp_min(1e-30).log()

    x_s = ReMDMSampler(eta=eta, strategy=strategy).step(oracle, MASK_ONLY, x_t, t, s, 1.0,
                                                        torch.Generator().manual_seed(2))
    unmasked = (x_s != K).float().mean().item()
    expected = 1 - MASK_ONLY.mask_probability(torch.tensor(s)).item()
    assert unmasked == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / (batch * N)))
    assert torch.equal(x_s[x_s != K], x0[x_s != K])
    remasked = ((x_t != K) & (x_s == K)).float().sum() / (x_t != K).float().sum()
    sigma, _ = remasking_probabilities(MASK_ONLY.mask_probability(torch.tensor(t)),
                                       MASK_ONLY.mask_probability(torch.tensor(s)), eta, strategy)
    assert remasked.item() == pytest.approx(sigma.item(), abs=0.01)
    assert (sigma.item() > 0) == (eta > 0)


def test_remasking_bound_and_the_last_step():
    gbar = MASK_ONLY.mask_probability(torch.tensor([60, 40, 0]))
    sigma, reveal = remasking_probabilities(gbar[0], gbar[1], 1.0, "cap")
    assert sigma.item() == pytest.approx(min(1.0, 0.4 / 0.4), abs=1e-6)  # (1 - alpha_s) / alpha_t
    sigma, reveal = remasking_probabilities(gbar[0], gbar[2], 1.0, "rescale")
    assert sigma.item() == 0 and reveal.item() == pytest.approx(1.0)  # s = 0: everything revealed


def test_remdm_at_eta_zero_walks_the_ancestral_chain_s_mask_counts_and_ends_unmasked():
    out, states = chain(ReMDMSampler(eta=0.0), fixed_denoiser(torch.randn(K, N)), steps=10, batch=200)
    shares = [(s == K).float().mean().item() for s in states]
    assert shares == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], abs=0.02)
    assert not (out == K).any()
    out, states = chain(ReMDMSampler(eta=0.5), fixed_denoiser(torch.randn(K, N)), steps=10, batch=200)
    assert not (out == K).any()
    assert any(((a != K) & (b == K)).any() for a, b in zip(states, states[1:]))  # some were re-masked


def test_remdm_options_are_checked():
    with pytest.raises(ValueError, match="strategy must be one of"):
        ReMDMSampler(strategy="loop")
    with pytest.raises(ValueError, match="eta must be in"):
        ReMDMSampler(eta=2.0)


# float64 draws

def test_float32_gumbel_noise_is_cut_at_16_64_and_float64_reaches_36_74():
    """The largest uniform below 1 bounds the noise: a code 20 nats less likely than another is
    never drawn in float32 (it should be, ~2e-9 of the time), and can be in float64."""
    from vqdiffusion.diffusion.process import gumbel_from_uniform, gumbel_noise

    for dtype, cap in ((torch.float32, 16.64), (torch.float64, 36.74)):
        largest = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype))
        assert gumbel_from_uniform(largest).item() == pytest.approx(cap, abs=0.01)
    logits = torch.tensor([0.0, -20.0])[None, :, None].expand(1, 2, 2_000_000)
    assert (gumbel_argmax(logits, torch.Generator().manual_seed(0)) == 1).sum() == 0
    assert gumbel_noise(torch.empty(3), torch.Generator().manual_seed(0), torch.float64).dtype == torch.float64


@pytest.mark.parametrize("name", ["ancestral", "purity", "maskgit", "first_hitting", "remdm"])
def test_every_sampler_takes_float64_draws_and_still_samples_the_model(name):
    logits = torch.randn(K, N, generator=torch.Generator().manual_seed(3))
    sampler = make_sampler(name, float64_draws=True)
    assert sampler.draw_dtype == torch.float64
    out = sampler(fixed_denoiser(logits), MASK_ONLY, torch.full((600, N), K), num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0))
    freq = torch.nn.functional.one_hot(out, K).float().mean(0).T
    if name in ("ancestral", "first_hitting", "remdm"):  # samplers that draw each code from p(x0)
        assert (freq - logits.softmax(0)).abs().max() < 0.08
    float32 = make_sampler(name)(fixed_denoiser(logits), MASK_ONLY, torch.full((600, N), K), num_inference_steps=4,
                                 generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out, float32)  # other numbers from the same seed
    with pytest.raises(ValueError, match="has no option"):
        make_sampler("diffusers", float64_draws=True)


@pytest.mark.parametrize("name", ["first_hitting", "remdm"])
def test_the_pipeline_samples_with_the_new_samplers_per_image(name):
    pipe = tiny_pipeline("class")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, sampler=name, output_type="tokens", guidance_scale=2.0)
    together = pipe(class_labels=[1, 2], generator=[torch.Generator().manual_seed(s) for s in (7, 8)], **kwargs).images
    alone = [pipe(class_labels=[c], generator=[torch.Generator().manual_seed(s)], **kwargs).images[0]
             for c, s in ((1, 7), (2, 8))]
    assert torch.equal(together, torch.stack(alone))


def test_ancestral_float32_images_do_not_move():
    """The default stays float32: the same tokens as before the option existed."""
    out = AncestralSampler()(fixed_denoiser(torch.randn(K, N, generator=torch.Generator().manual_seed(5))),
                             MASK_ONLY, torch.full((2, N), K), num_inference_steps=5,
                             generator=torch.Generator().manual_seed(0))
    again = AncestralSampler(float64_draws=False)(
        fixed_denoiser(torch.randn(K, N, generator=torch.Generator().manual_seed(5))), MASK_ONLY,
        torch.full((2, N), K), num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_the_pipeline_gives_first_hitting_a_call_per_token_beyond_the_schedules_steps():
    """16 tokens under an 8-step schedule: the pipeline allows first-hitting's 16 calls (one reveal
    each) and no 17th; the time-grid samplers stay bounded by the schedule's 8 steps."""
    from vqdiffusion import VQDiffusionPipeline

    tiny = tiny_pipeline("class")
    codes = tiny.transformer.config.num_embeds
    schedule = NoiseSchedule(codes, ScheduleConfig.preset("mask_only", num_timesteps=8))
    pipe = VQDiffusionPipeline(tiny.vqvae, tiny.transformer, schedule, sampler="first_hitting")
    pipe.set_progress_bar_config(disable=True)
    masked = []
    tokens = pipe(class_labels=[1], num_inference_steps=16, output_type="tokens",
                  generator=torch.Generator().manual_seed(0),
                  callback=lambda step, t, x: masked.append(int((x == codes).sum()))).images
    assert masked == list(range(15, -1, -1)) and not (tokens == codes).any()
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 16\], got 17"):
        pipe(class_labels=[1], num_inference_steps=17)
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 8\], got 9"):
        pipe(class_labels=[1], num_inference_steps=9, sampler="ancestral")
