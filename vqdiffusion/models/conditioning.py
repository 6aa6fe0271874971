"""Conditions for the transformer: frozen text encoders and the learned null embedding.

Text: any transformers text model + tokenizer (CLIP's text transformer by default); the
condition is the last hidden state, L2-normalised per token, padded to a fixed length (77 for
CLIP), as in the original code and diffusers.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

__all__ = ["TextEncoder", "LearnedNullEmbedding", "normalize_prompts"]

logger = logging.getLogger(__name__)


def normalize_prompts(prompt: str | list[str]) -> list[str]:
    """A prompt or list of prompts -> a non-empty list of strings (clear errors otherwise)."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    if len(prompt) == 0:
        raise ValueError("prompt is an empty list; pass at least one prompt")
    bad = [p for p in prompt if not isinstance(p, str)]
    if bad:
        raise TypeError(f"every prompt must be a str, got {type(bad[0]).__name__}: {bad[0]!r}")
    return list(prompt)


class TextEncoder(nn.Module):
    """Frozen tokenizer + text model -> per-token L2-normalised embeddings (B, L, C)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length or min(int(tokenizer.model_max_length), 512)

    @classmethod
    def from_pretrained(
        cls, model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, **kwargs
    ) -> TextEncoder:
        """Load from a hub id or local folder (a CLIP text model, or any AutoModel text model)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

        config = AutoConfig.from_pretrained(model_path)
        if config.model_type in ("clip", "clip_text_model"):
            model = CLIPTextModel.from_pretrained(model_path)
        else:
            model = AutoModel.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
        return cls(model, tokenizer, **kwargs)

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, max_length) ids; longer prompts are truncated with a warning."""
        full = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=False)
        too_long = [p for p, ids in zip(prompts, full["input_ids"]) if len(ids) > self.max_length]
        if too_long:
            logger.warning(
                "%d prompt(s) exceed the text encoder's %d tokens and were truncated, e.g. %r",
                len(too_long), self.max_length, too_long[0][:80],
            )
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )["input_ids"]
        return ids

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, L, C) embeddings, each token's vector of unit norm."""
        device = next(self.model.parameters()).device
        ids = self.tokenize(prompts).to(device)
        hidden = self.model(input_ids=ids)[0]
        return hidden / hidden.norm(dim=-1, keepdim=True)


class LearnedNullEmbedding(nn.Module):
    """The learned "empty prompt" (L, C) used for classifier-free guidance ("learnable CF").

    Trained by replacing captions with it (caption dropout); ``learnable=False`` means the
    encoding of the empty prompt serves instead (diffusers' convention, kept for its folders).
    """

    def __init__(self, length: int | None = 77, width: int | None = 512, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            if length is None or width is None:
                raise ValueError("a learnable null embedding needs length and width")
            self.embeddings = nn.Parameter(torch.zeros(length, width))
        else:
            self.embeddings = None

    def expand(self, batch: int) -> torch.Tensor:
        """(batch, L, C) copies of the embedding."""
        if self.embeddings is None:
            raise ValueError("this null embedding is not learnable; encode the empty prompt instead")
        return self.embeddings[None].expand(batch, -1, -1)
