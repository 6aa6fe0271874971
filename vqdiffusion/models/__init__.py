"""Networks (nn.Modules only): the denoising transformer, the VQ-VAE, conditioning."""

from .conditioning import LearnedNullEmbedding, TextEncoder
from .transformer import TransformerConfig, VQDiffusionTransformer
from .vqvae import VQVAE, VQVAEConfig

__all__ = ["LearnedNullEmbedding", "TextEncoder", "TransformerConfig", "VQDiffusionTransformer", "VQVAE", "VQVAEConfig"]
