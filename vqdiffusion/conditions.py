"""What a diffusion model is conditioned on: text, a class label, or nothing.

Each kind is one class that knows everything the kind changes: the modules it adds (a frozen text
encoder and a learned null embedding for text), the transformer fields it sets (``context_dim``
or ``num_classes``), the transformer inputs of a training batch (with the null condition for a
dropout share), and the pipeline arguments that sample a validation grid. The training module,
the checkpoint loader and the callbacks call these methods instead of branching on a kind.

A condition records itself as a plain dict (``config()``: ``{"kind": ..., fields}``), which is
what checkpoints hold; :func:`make_condition` rebuilds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from .models.conditioning import CachedTextEncoder, LearnedNullEmbedding

__all__ = ["CONDITIONS", "ClassCondition", "Condition", "NoCondition", "TextCondition", "dataset_captions",
           "make_condition"]


@dataclass
class Condition:
    """Base of the condition kinds; see the module docstring."""

    kind: ClassVar[str] = "base"

    def config(self) -> dict:
        """``{"kind": ..., **fields}``: plain values a checkpoint can hold."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def build(self, text_encoder: str | None = None) -> tuple[CachedTextEncoder | None, LearnedNullEmbedding | None]:
        """The (frozen encoder, learnable null embedding) this kind adds; (None, None) by default."""
        return None, None

    def transformer_fields(self, encoder: CachedTextEncoder | None) -> dict:
        """``TransformerConfig`` fields this kind sets."""
        return {"context_dim": None, "num_classes": None}

    def for_dataset(self, dataset) -> Condition:
        """This condition with what it can take from the training set filled in."""
        return self

    def inputs(self, module, batch: dict, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        """Transformer keyword arguments for a training batch; ``drop`` (B,) bool marks the samples
        given the null condition. ``module`` is the training module (its encoder, null embedding
        and transformer)."""
        return {}

    def validation_call(self, dataset, prompts, num_images: int, num_classes: int | None) -> tuple[dict, list | None]:
        """(pipeline keyword arguments for ``num_images`` images, their prompts or None)."""
        return {"batch_size": num_images}, None

    def grid_columns(self, num_classes: int | None) -> int:
        """Columns of a sample grid."""
        return 8


@dataclass
class TextCondition(Condition):
    """Captions through a frozen text encoder (a path or hub id; ``minilm`` for the offline one),
    padded or cut to ``max_length`` tokens (null: the encoder's own limit)."""

    encoder: str = "openai/clip-vit-base-patch32"
    max_length: int | None = None
    kind: ClassVar[str] = "text"

    def build(self, text_encoder=None):
        encoder = CachedTextEncoder.from_pretrained(text_encoder or self.encoder, max_length=self.max_length)
        return encoder, LearnedNullEmbedding(encoder.max_length, encoder.width)

    def transformer_fields(self, encoder):
        return {"context_dim": encoder.width, "num_classes": None}

    def inputs(self, module, batch, drop):
        module.text_encoder.encoder.to(module.device)  # a no-op after the first call
        # float32 whatever the encoder's dtype: autocast picks the matmul precision
        context = module.text_encoder(batch["caption"], module.device).float()  # (B, L, C)
        null = module.null_embedding.expand(len(drop))
        return {"context": torch.where(drop[:, None, None], null, context)}

    def validation_call(self, dataset, prompts, num_images, num_classes):
        if prompts is None or isinstance(prompts, str):  # a named prompt set of the dataset, or its captions
            if hasattr(dataset, "validation_prompts"):
                prompts = dataset.validation_prompts(num_images, *([prompts] if prompts else []))
            else:
                prompts = dataset_captions(dataset, num_images)
        prompts = [prompts[i % len(prompts)] for i in range(num_images)]  # cycled when short
        return {"prompt": prompts}, prompts


@dataclass
class ClassCondition(Condition):
    """A class label in ``[0, num_classes)``; the label ``num_classes`` is the null class for
    guidance. ``num_classes`` null: the training set's ``num_classes``."""

    num_classes: int | None = None
    kind: ClassVar[str] = "class"

    def __post_init__(self) -> None:
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")

    def transformer_fields(self, encoder):
        if self.num_classes is None:
            raise ValueError("a class condition needs num_classes (condition.num_classes=C)")
        return {"context_dim": None, "num_classes": self.num_classes}

    def for_dataset(self, dataset):
        if self.num_classes is not None:
            return self
        if not hasattr(dataset, "num_classes"):
            raise ValueError(f"condition=class needs condition.num_classes: {type(dataset).__name__} does not say how "
                             "many classes it has")
        return ClassCondition(int(dataset.num_classes))

    def inputs(self, module, batch, drop):
        labels = batch["label"].to(module.device)
        return {"class_labels": torch.where(drop, module.transformer.null_class, labels)}

    def validation_call(self, dataset, prompts, num_images, num_classes):
        return {"class_labels": torch.arange(num_images) % num_classes}, None

    def grid_columns(self, num_classes):
        """One column per class when there are few (the labels cycle), else 8."""
        return num_classes if num_classes <= 16 else 8


@dataclass
class NoCondition(Condition):
    """Unconditional generation."""

    kind: ClassVar[str] = "none"


CONDITIONS: dict[str, type[Condition]] = {kind.kind: kind for kind in (TextCondition, ClassCondition, NoCondition)}


def make_condition(spec: Condition | dict) -> Condition:
    """A condition from an instance (as is) or a recorded ``{"kind": ..., fields}`` dict (text when
    the kind is absent, as in the earliest checkpoints)."""
    if isinstance(spec, Condition):
        return spec
    fields = dict(spec)
    kind = fields.pop("kind", "text")
    if kind not in CONDITIONS:
        raise ValueError(f"condition kind must be one of {sorted(CONDITIONS)}, got {kind!r}")
    names = {field.name for field in dataclasses.fields(CONDITIONS[kind])}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"a {kind} condition has no field {unknown}; its fields are {sorted(names)}")
    return CONDITIONS[kind](**fields)


def dataset_captions(dataset, count: int) -> list[str]:
    """The first ``count`` distinct non-empty captions of a dataset (its order is fixed, so the
    validation prompts stay the same through a run)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        samples = iter(dataset)
    else:
        samples = (dataset[i] for i in range(len(dataset)))
    captions: list[str] = []
    for sample in samples:
        if sample.get("caption") and sample["caption"] not in captions:
            captions.append(sample["caption"])
        if len(captions) == count:
            break
    if not captions:
        raise ValueError("set validation.prompts to a list: the dataset has neither validation_prompts() nor captions")
    return captions
