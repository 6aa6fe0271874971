"""MaskGIT confidence decoding and Halton-order revealing: their defining properties."""

import math

import pytest
import torch
from denoisers import fixed_denoiser

from vqdiffusion.diffusion.samplers import EditSpec, MaskGITSampler
from vqdiffusion.diffusion.samplers.maskgit import cosine_masked_counts, halton_order
from vqdiffusion.diffusion.schedule import NoiseSchedule
from vqdiffusion.tiny import tiny_pipeline

K, N = 12, 256


def run(sampler, denoiser, steps, batch=2, **kwargs):
    states = []
    out = sampler(denoiser, NoiseSchedule(K), torch.full((batch, N), K), num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: states.append(x.clone()),
                  **kwargs)
    return out, states


def test_the_masked_count_follows_the_cosine_schedule_and_revealed_codes_stay():
    expected = [math.floor(N * math.cos(math.pi / 2 * k / 4)) for k in (1, 2, 3)] + [0]  # 236, 181, 97, 0
    out, states = run(MaskGITSampler(), fixed_denoiser(torch.randn(K, N)), steps=4)
    assert [int((x == K).sum(1)[0]) for x in states] == expected
    for before, after in zip(states, states[1:]):
        revealed = before != K
        assert torch.equal(after[revealed], before[revealed])
    assert not (out == K).any()
    assert [c.tolist() for c in cosine_masked_counts(torch.tensor([3.0]), 8)] == [[2], [1], [0], [0], [0], [0],
                                                                                 [0], [0]]


def test_at_temperature_zero_the_most_confident_positions_come_first():
    logits = torch.zeros(K, N)
    logits[0, : N // 2] = 12.0  # the first half of the positions is sure of its code
    _, states = run(MaskGITSampler(temperature=0.0), fixed_denoiser(logits), steps=4)
    first = (states[0][0] != K).nonzero().flatten()
    assert len(first) == N - 236 and (first < N // 2).all()
    assert (states[0][0, first] == 0).all()


def test_the_network_is_asked_at_the_time_whose_mask_share_matches():
    seen = []
    schedule = NoiseSchedule(K)
    run(MaskGITSampler(), fixed_denoiser(torch.randn(K, N), seen), steps=4, batch=1)
    shares = schedule.mask_probability(torch.stack(seen).flatten())
    assert torch.allclose(shares, torch.tensor([1.0, 236 / N, 181 / N, 97 / N]), atol=0.02)


def test_halton_order_is_an_evenly_spread_permutation():
    order = halton_order(16, 16)
    assert sorted(order.tolist()) == list(range(256))
    # spread out: no two of the first 16 reveals are neighbours (raster order's are all adjacent)
    first = torch.stack([order[:16] // 16, order[:16] % 16], 1).float()
    assert (torch.cdist(first, first) + 99 * torch.eye(16)).min() > 2
    assert halton_order(3, 5).numel() == 15


def test_halton_order_reveals_by_place_whatever_the_confidence():
    logits = torch.zeros(K, N)
    logits[0, N // 2:] = 12.0  # confidence would pick the second half first
    _, states = run(MaskGITSampler(order="halton"), fixed_denoiser(logits), steps=4)
    revealed = (states[0][0] != K).nonzero().flatten()
    assert set(revealed.tolist()) == set(halton_order(16, 16)[: N - 236].tolist())
    with pytest.raises(ValueError, match="pass grid=\\(height, width\\)"):
        MaskGITSampler(order="halton")(fixed_denoiser(torch.randn(K, 15)), NoiseSchedule(K),
                                       torch.full((1, 15), K), num_inference_steps=2)


def test_keep_mask_inpaints_and_bad_options_are_named():
    tokens = torch.randint(0, K, (2, N))
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[:, :100] = True
    out, _ = run(MaskGITSampler(), fixed_denoiser(torch.randn(K, N)), steps=3, edit=EditSpec(tokens, None, keep))
    assert torch.equal(out[:, :100], tokens[:, :100]) and not (out == K).any()
    with pytest.raises(ValueError, match="order must be one of"):
        MaskGITSampler(order="random")
    with pytest.raises(ValueError, match="starts from \\[MASK\\]"):
        run(MaskGITSampler(), fixed_denoiser(torch.randn(K, N)), steps=3, edit=EditSpec(tokens, 50, None))


def test_the_pipeline_samples_with_maskgit_from_all_mask():
    pipe = tiny_pipeline("text")
    images = pipe("a red circle", num_inference_steps=4, sampler="maskgit", output_type="tokens",
                  generator=torch.Generator().manual_seed(0)).images
    again = pipe("a red circle", num_inference_steps=4, sampler="maskgit", output_type="tokens",
                 generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16) and torch.equal(images, again) and not (images == 15).any()
