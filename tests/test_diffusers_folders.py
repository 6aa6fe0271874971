"""Folders diffusers' VQ-Diffusion pipeline runs load and sample here exactly as there.

The components are those of diffusers' former fast test (``tests/pipelines/vq_diffusion/
test_vq_diffusion.py``), rebuilt from their configs: a VQModel of 12 codes, a transformer that
predicts 11 codes + [MASK] with a 12-row timestep table, and a scheduler of 12 classes and 100
training steps. diffusers samples such a folder with 1 to 12 steps (its truncated chain needs a
table row for each); here the ``"diffusers"`` sampler must give the same images.
"""

import numpy as np
import pytest
import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.tiny import tiny_clip

pytest.importorskip("diffusers")

PROMPT = "teddy bear playing in the pool"
NUM_EMBED = 12  # the codebook; the transformer's num_vector_embeds (11 codes + [MASK]); its timestep table


def dummy_components(learnable_null: bool) -> dict:
    from diffusers import Transformer2DModel, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vqvae = VQModel(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=3,
                    num_vq_embeddings=NUM_EMBED, vq_embed_dim=3)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000))
    _, tokenizer = tiny_clip(32)  # the test's tiny CLIP tokenizer is a hub download; any CLIP tokenizer will do
    torch.manual_seed(0)
    transformer = Transformer2DModel(
        attention_bias=True, cross_attention_dim=32, attention_head_dim=12 * 12, num_attention_heads=1,
        num_vector_embeds=NUM_EMBED, num_embeds_ada_norm=NUM_EMBED, norm_num_groups=32, sample_size=12,
        activation_fn="geglu-approximate")
    if learnable_null:
        null = LearnedClassifierFreeSamplingEmbeddings(learnable=True, hidden_size=32,
                                                       length=tokenizer.model_max_length)
        with torch.no_grad():
            null.embeddings.normal_()
    else:
        null = LearnedClassifierFreeSamplingEmbeddings(learnable=False)
    return dict(vqvae=vqvae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                scheduler=VQDiffusionScheduler(NUM_EMBED), learned_classifier_free_sampling_embeddings=null)


@pytest.fixture(scope="module", params=[False, True], ids=["empty-prompt-null", "learned-null"])
def pipelines(request, tmp_path_factory):
    from diffusers import VQDiffusionPipeline as DiffusersPipeline

    reference = DiffusersPipeline(**dummy_components(request.param))
    reference.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("diffusers_dummy")
    reference.save_pretrained(folder)
    ours = VQDiffusionPipeline.from_pretrained(folder, sampler="diffusers")
    ours.set_progress_bar_config(disable=True)
    return reference, ours, folder


def images(pipe, steps, guidance=5.0, seed=0):
    return pipe([PROMPT], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("steps", [1, 2, 10, 12])
def test_the_dummy_folder_samples_as_in_diffusers(pipelines, steps):
    reference, ours, _ = pipelines
    expected = images(reference, steps)
    assert expected.shape == (1, 24, 24, 3)
    assert np.array_equal(images(ours, steps), expected)
    assert np.array_equal(images(ours, steps, guidance=1.0), images(reference, steps, guidance=1.0))
    assert not np.array_equal(images(ours, steps, seed=1), expected)


def test_chains_past_the_timestep_table_are_refused_clearly(pipelines):
    reference, ours, _ = pipelines
    with pytest.raises(IndexError):  # diffusers itself indexes past its 12-row table
        images(reference, 13)
    with pytest.raises(ValueError, match=r"start at timestep 12, but this transformer embeds timesteps 0\.\.11"):
        images(ours, 13)
    with pytest.raises(ValueError, match="'ancestral' sampler would start at timestep 99"):
        ours([PROMPT], num_inference_steps=10, sampler="ancestral")


def test_a_saved_copy_loads_here_and_in_diffusers_with_the_same_images(pipelines, tmp_path):
    from vqdiffusion.convert.diffusers_format import diffusers_pipeline

    reference, ours, _ = pipelines
    ours.save_pretrained(tmp_path / "copy")
    again = VQDiffusionPipeline.from_pretrained(tmp_path / "copy", sampler="diffusers")
    theirs = diffusers_pipeline(tmp_path / "copy")
    theirs.set_progress_bar_config(disable=True)
    expected = images(reference, 12)
    assert np.array_equal(images(again, 12), expected)
    assert np.array_equal(images(theirs, 12), expected)


def test_components_that_really_disagree_are_refused(pipelines):
    from vqdiffusion.diffusion.schedule import NoiseSchedule
    from vqdiffusion.models.vqvae import VQVAE

    _, ours, _ = pipelines
    parts = ours.components
    with pytest.raises(ValueError, match="transformer predicts 11 codes \\+ \\[MASK\\], the schedule walks 12"):
        VQDiffusionPipeline(**{**parts, "schedule": NoiseSchedule(12)})
    small = VQVAE(type(ours.vqvae.config)(**{**ours.vqvae.config.to_dict(), "num_vq_embeddings": 10}))
    with pytest.raises(ValueError, match="transformer predicts 11 codes but the vqvae's codebook holds only 10"):
        VQDiffusionPipeline(**{**parts, "vqvae": small})


@pytest.mark.parametrize("timestep", [0, 1, 5, 11])
def test_one_step_equals_the_diffusers_scheduler_step(timestep):
    """The posterior and the Gumbel draw of one step against ``VQDiffusionScheduler.step``."""
    from diffusers import VQDiffusionScheduler

    from vqdiffusion.diffusion.samplers.diffusers import _gumbel_argmax_like_diffusers, _posterior_like_diffusers
    from vqdiffusion.diffusion.schedule import NoiseSchedule

    codes, tokens = NUM_EMBED - 1, 144
    scheduler = VQDiffusionScheduler(NUM_EMBED)
    schedule = NoiseSchedule(codes)
    generator = torch.Generator().manual_seed(timestep)
    log_p_x0 = (3 * torch.randn(2, codes, tokens, generator=generator)).log_softmax(1).clamp(-70)
    x_t = torch.randint(0, codes + 1, (2, tokens), generator=generator)
    expected = scheduler.step(log_p_x0, timestep, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    log_p = log_p_x0 if timestep == 0 else _posterior_like_diffusers(log_p_x0, x_t, timestep, schedule)
    if timestep > 0:
        reference = scheduler.q_posterior(log_p_x0, x_t, torch.tensor(timestep))
        torch.testing.assert_close(log_p, reference, rtol=0, atol=1e-5)
    assert torch.equal(_gumbel_argmax_like_diffusers(log_p, torch.Generator().manual_seed(7)), expected)
