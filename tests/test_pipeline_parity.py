"""Parity with diffusers' VQDiffusionPipeline on the same weights and generator seed."""

import numpy as np
import pytest
import torch

from vqdiffusion import VQDiffusionPipeline

pytest.importorskip("diffusers")
from diffusers_reference import diffusers_pipeline  # noqa: E402

PROMPTS = ["a red circle", "two blue squares left of a triangle"]
CASES = [  # (guidance_scale, truncation_rate, num_images_per_prompt, steps)
    (1.0, 1.0, 1, 100),
    (5.0, 0.86, 2, 30),
    (3.0, 1.0, 2, 12),
    (1.0, 0.5, 3, 7),
]


@pytest.fixture(scope="module", params=[True, False], ids=["learned-null", "empty-prompt-null"])
def pipelines(request, tmp_path_factory):
    reference = diffusers_pipeline(learnable_null=request.param)
    folder = tmp_path_factory.mktemp("diffusers_folder")
    reference.save_pretrained(folder)
    ours = VQDiffusionPipeline.from_pretrained(folder, sampler="diffusers")
    ours.set_progress_bar_config(disable=True)
    return reference, ours, tmp_path_factory


def run(pipe, guidance, truncation, per_prompt, steps, seed=3):
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, truncation_rate=truncation,
                num_images_per_prompt=per_prompt, generator=torch.Generator().manual_seed(seed),
                output_type="np").images


@pytest.mark.parametrize("guidance,truncation,per_prompt,steps", CASES)
def test_same_images_as_diffusers(pipelines, guidance, truncation, per_prompt, steps):
    reference, ours, _ = pipelines
    expected = run(reference, guidance, truncation, per_prompt, steps)
    got = run(ours, guidance, truncation, per_prompt, steps)
    assert got.shape == expected.shape == (len(PROMPTS) * per_prompt, 8, 8, 3)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected - run(reference, guidance, truncation, per_prompt, steps, seed=4)).max() > 1e-2


def test_saved_folder_loads_in_diffusers_and_gives_the_same_images(pipelines):
    from diffusers import Transformer2DModel, VQDiffusionScheduler, VQModel
    from diffusers import VQDiffusionPipeline as DiffusersPipeline
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    reference, ours, tmp_path_factory = pipelines
    folder = tmp_path_factory.mktemp("our_export")
    ours.save_pretrained(folder)
    reloaded = DiffusersPipeline(
        vqvae=VQModel.from_pretrained(folder / "vqvae"),
        transformer=Transformer2DModel.from_pretrained(folder / "transformer"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=VQDiffusionScheduler.from_pretrained(folder / "scheduler"),
        learned_classifier_free_sampling_embeddings=LearnedClassifierFreeSamplingEmbeddings.from_pretrained(
            folder / "learned_classifier_free_sampling_embeddings"),
    )
    reloaded.set_progress_bar_config(disable=True)
    for case in CASES[:2]:
        assert np.abs(run(reloaded, *case) - run(reference, *case)).max() < 1e-4
    again = VQDiffusionPipeline.from_pretrained(folder, sampler="diffusers")
    again.set_progress_bar_config(disable=True)
    assert np.abs(run(again, *CASES[1]) - run(ours, *CASES[1])).max() == 0


def test_native_sampler_runs_on_diffusers_weights_and_respaces(pipelines):
    _, ours, _ = pipelines
    seen = []
    images = ours(PROMPTS, num_inference_steps=10, sampler="ancestral", output_type="pt",
                  truncation_rate=0.86, generator=torch.Generator().manual_seed(0),
                  callback=lambda step, timestep, tokens: seen.append((timestep, tokens.shape))).images
    assert images.shape == (2, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert [t for t, _ in seen] == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert all(shape == (2, 16) for _, shape in seen)
