"""Builds a small random diffusers VQDiffusionPipeline (needs the optional diffusers package)."""

from __future__ import annotations

import torch

from vqdiffusion.tiny import TINY_VQVAE, tiny_clip

NUM_CODES = TINY_VQVAE.num_vq_embeddings  # K
GRID = 4  # 32 px / f4 -> 4x4 tokens


def diffusers_pipeline(learnable_null: bool, seed: int = 0, num_timesteps: int = 100, clip_width: int = 32):
    from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )

    torch.manual_seed(seed)
    cfg = TINY_VQVAE
    vqvae = VQModel(
        block_out_channels=list(cfg.block_out_channels), in_channels=3, out_channels=3,
        down_block_types=list(cfg.down_block_types), up_block_types=list(cfg.up_block_types),
        latent_channels=cfg.latent_channels, num_vq_embeddings=cfg.num_vq_embeddings,
        vq_embed_dim=cfg.vq_embed_dim, layers_per_block=cfg.layers_per_block, sample_size=32,
        norm_num_groups=cfg.norm_num_groups,
    )
    transformer = Transformer2DModel(
        num_attention_heads=2, attention_head_dim=8, num_vector_embeds=NUM_CODES + 1, sample_size=GRID,
        num_layers=2, cross_attention_dim=clip_width, activation_fn="geglu-approximate",
        num_embeds_ada_norm=num_timesteps, attention_bias=True, norm_type="ada_norm",
    )
    # Random weights everywhere (the default init leaves AdaLN linear layers meaningful already,
    # but makes the output head small): widen the logits so truncation has work to do.
    with torch.no_grad():
        transformer.out.weight.mul_(20)
        for p in vqvae.quantize.parameters():
            p.normal_()
    text_encoder, tokenizer = tiny_clip(clip_width, seed)
    scheduler = VQDiffusionScheduler(num_vec_classes=NUM_CODES + 1, num_train_timesteps=num_timesteps)
    null = LearnedClassifierFreeSamplingEmbeddings(
        learnable=learnable_null, hidden_size=clip_width if learnable_null else None,
        length=tokenizer.model_max_length if learnable_null else None,
    )
    if learnable_null:
        with torch.no_grad():
            null.embeddings.normal_()
    pipe = VQDiffusionPipeline(vqvae=vqvae, text_encoder=text_encoder, tokenizer=tokenizer,
                               transformer=transformer, scheduler=scheduler,
                               learned_classifier_free_sampling_embeddings=null)
    pipe.set_progress_bar_config(disable=True)
    return pipe
