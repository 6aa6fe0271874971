"""CLIP score: 100 x max(cos(image embedding, text embedding), 0), averaged over image-prompt pairs.

The formula and the synchronised states are torchmetrics' (a ``Metric`` with a summed score and
count). The feature calls are ours because torchmetrics 1.9's ``CLIPScore`` breaks on
transformers 5, whose ``get_image_features`` returns an output object instead of a tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import Metric


def load_clip(name_or_path: str):
    """(CLIPModel, CLIPProcessor) from a local folder or a hub id, with a message that says what
    to pass when it cannot be loaded (offline machines have no hub)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return (CLIPModel.from_pretrained(name_or_path).eval(),
                CLIPProcessor.from_pretrained(name_or_path, trust_remote_code=False))
    except (OSError, ValueError) as error:
        where = "a local folder" if Path(name_or_path).exists() else "a hub id (needs internet) or a local folder"
        raise RuntimeError(
            f"eval.clip_model={name_or_path!r} cannot be loaded as a CLIP model: expected {where} holding a "
            "transformers CLIPModel and its CLIPProcessor (e.g. openai/clip-vit-large-patch14 saved with "
            "save_pretrained)") from error


def _embedding(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else output.pooler_output  # transformers 5: a ModelOutput


class CLIPScore(Metric):
    """Streaming CLIP score; ``update(images uint8 (N, 3, H, W), prompts)``."""

    full_state_update = False

    def __init__(self, model, processor) -> None:
        super().__init__()
        self.model, self.processor = model.eval(), processor
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        inputs = self.processor(text=list(prompts), images=list(images.cpu()), return_tensors="pt", padding=True,
                                truncation=True)
        device = self.score_sum.device
        image = _embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(device)))
        text = _embedding(self.model.get_text_features(input_ids=inputs["input_ids"].to(device),
                                                       attention_mask=inputs["attention_mask"].to(device)))
        cosine = torch.nn.functional.cosine_similarity(image.double(), text.double(), dim=-1)
        self.score_sum += (100 * cosine.clamp_min(0)).sum()
        self.count += len(images)

    def compute(self) -> torch.Tensor:
        return self.score_sum / self.count
