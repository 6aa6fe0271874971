"""FID while training: the EMA weights scored as ``sample.py eval.metrics=[fid]`` scores a folder.

Same feature backends, reference images and FID code as the evaluation of :mod:`vqdiffusion.eval`,
so a curve of ``val/fid`` over steps says which checkpoint to sample from (every checkpoint loads
as a pipeline: ``sample.py checkpoint=…/step_0005000.ckpt``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..diffusion.samplers import Sampler
from ..eval.distribution import DistributionMetrics, extract_features, feature_statistics
from ..eval.features import load_feature_extractor
from ..eval.run import dataset_batches
from ..utils.atomic import atomic_write_bytes

__all__ = ["ValidationFID"]

log = logging.getLogger(__name__)
COLUMNS = ("step", "fid", "num_generated", "num_real", "seconds")


class ValidationFID(pl.Callback):
    """At every ``every_n_validations``-th validation, the FID of ``num_images`` images from the
    module's EMA pipeline against the first ``reference_count`` images of the validation set (the
    training set when there is none). Logged as ``val/fid`` and appended to ``path`` (CSV).

    Class-conditional models cycle through the classes, text models take the validation set's
    captions (cycled), unconditional ones draw ``num_images``. The reference statistics are
    computed once per run. Runs on rank 0 (the other ranks wait at the next collective).

    Args:
        backend: the feature extractor: ``fid-helper``, ``torch-fidelity`` or a TorchScript path
            (as ``eval.backend``).
        reference_count: reference images (null: as many as generated, capped by the set).
        sampler, num_inference_steps, guidance_scale, guidance_schedule, truncation_rate: the sampling settings.
        batch_size: images per pipeline call.
        seed: the images drawn are the same at every validation (only the weights change).
    """

    def __init__(self, num_images: int = 1000, backend: str = "fid-helper", reference_count: int | None = None,
                 sampler: Sampler | str = "ancestral", num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 truncation_rate: float = 1.0, batch_size: int = 64, seed: int = 0, every_n_validations: int = 1,
                 path: str | Path | None = None, guidance_schedule: str = "constant") -> None:
        for name, value in (("num_images", num_images), ("batch_size", batch_size),
                            ("every_n_validations", every_n_validations)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_images, self.backend, self.reference_count = num_images, backend, reference_count
        self.sampling = dict(sampler=sampler, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             guidance_schedule=guidance_schedule, truncation_rate=truncation_rate)
        self.batch_size, self.seed, self.every = batch_size, seed, every_n_validations
        self.path = Path(path) if path else None
        self.validations, self.rows = 0, []
        self._extractor = self._reference = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if (self.validations - 1) % self.every or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        values = self.score(module, trainer.datamodule)
        values.update(step=trainer.global_step, seconds=time.perf_counter() - start)
        module.log("val/fid", values["fid"], rank_zero_only=True)
        log.info("step %d: FID %.2f (%d images vs %d, %.0f s)", values["step"], values["fid"],
                 values["num_generated"], values["num_real"], values["seconds"])
        self.rows.append({key: values[key] for key in COLUMNS})
        if self.path is not None:
            self._write()

    @torch.no_grad()
    def score(self, module: pl.LightningModule, datamodule) -> dict:
        """``{"fid", "num_generated", "num_real"}`` of the module's current EMA weights."""
        reference_set = getattr(datamodule, "val_set", None) or datamodule.train_set
        device = module.device
        if self._extractor is None:
            self._extractor = load_feature_extractor(self.backend)
            count = min(self.reference_count or self.num_images, len(reference_set))
            self._reference = feature_statistics(self._extractor, dataset_batches(reference_set, count), device,
                                                 progress=False)
        generated = extract_features(self._extractor, self._generated_batches(module, reference_set), device,
                                     progress=False)
        metrics = DistributionMetrics(generated.shape[1], kid=False).to(device)
        metrics.add_statistics(self._reference)
        metrics.update(generated.to(device), real=False)
        return metrics.compute()

    def _generated_batches(self, module, dataset):
        """uint8 (B, 3, H, W) batches of the EMA pipeline's images, rounded as its PNGs are."""
        pipe = module.pipeline()
        pipe.set_progress_bar_config(disable=True)
        num_classes = module.transformer.config.num_classes
        inputs, _ = module.condition.validation_call(dataset, None, self.num_images, num_classes)
        generator = torch.Generator(module.device).manual_seed(self.seed)
        was_training = module.training
        module.eval()
        try:
            for begin in range(0, self.num_images, self.batch_size):
                end = min(begin + self.batch_size, self.num_images)
                images = pipe(**_slice(inputs, begin, end), generator=generator, output_type="pt",
                              **self.sampling).images
                yield (images * 255).round().to(torch.uint8)
        finally:
            module.train(was_training)

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buffer.getvalue().encode())

    def state_dict(self) -> dict:
        return {"validations": self.validations, "rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations, self.rows = state_dict["validations"], list(state_dict["rows"])


def _slice(inputs: dict, begin: int, end: int) -> dict:
    """The pipeline arguments of images ``begin:end`` of a validation call's arguments."""
    if "batch_size" in inputs:
        return {"batch_size": end - begin}
    return {key: value[begin:end] for key, value in inputs.items()}
