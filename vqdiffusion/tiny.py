"""Tiny random components for tests and the demo: nothing is downloaded, everything is seeded."""

from __future__ import annotations

import torch

from vqdiffusion.models.vqvae import VQVAEConfig

CONTEXT_LENGTH = 77


def byte_level_vocab() -> dict[str, int]:
    """A CLIP-style byte-level BPE vocabulary with no merges: every byte is a token."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in chars]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_clip(width: int = 32, seed: int = 0):
    """(CLIPTextModel, CLIPTokenizer) with random weights and a byte-level vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CONTEXT_LENGTH)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval(), tokenizer


TINY_VQVAE = VQVAEConfig(
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=8,
    sample_size=8,
    num_vq_embeddings=15,
    norm_num_groups=32,
    vq_embed_dim=6,
)


def tiny_pipeline(kind: str = "text", seed: int = 0, sampler: str = "ancestral"):
    """A random VQDiffusionPipeline built from our own classes: "text", "class" or "uncond"."""
    from vqdiffusion import VQDiffusionPipeline
    from vqdiffusion.diffusion.schedule import NoiseSchedule
    from vqdiffusion.models import LearnedNullEmbedding, TextEncoder, TransformerConfig, VQDiffusionTransformer
    from vqdiffusion.models.vqvae import VQVAE

    torch.manual_seed(seed)
    K = TINY_VQVAE.num_vq_embeddings
    text_encoder = null = None
    context_dim = num_classes = None
    if kind == "text":
        model, tokenizer = tiny_clip(32, seed)
        text_encoder, context_dim = TextEncoder(model, tokenizer), 32
        null = LearnedNullEmbedding(CONTEXT_LENGTH, 32)
    elif kind == "class":
        num_classes = 10
    config = TransformerConfig(num_embeds=K, height=4, width=4, num_layers=2, num_heads=2, head_dim=8,
                               context_dim=context_dim, num_classes=num_classes)
    pipe = VQDiffusionPipeline(VQVAE(TINY_VQVAE).eval(), VQDiffusionTransformer(config).eval(), NoiseSchedule(K),
                               text_encoder=text_encoder, null_embedding=null, sampler=sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
