"""Stage 2: the mask-and-replace diffusion transformer as a LightningModule.

Thin wiring: the frozen tokenizer turns images into codes, the frozen text encoder turns
captions into contexts (cached: it never changes), ``DiffusionLoss`` computes the loss, and
validation samples through the same ``VQDiffusionPipeline`` users call, with the EMA weights.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from ..components import build_components, schedule_config
from ..conditions import Condition, make_condition
from ..diffusion.loss import DiffusionLoss, LossConfig
from ..diffusion.schedule import ScheduleConfig, model_timestep
from ..pipeline import VQDiffusionPipeline
from ..speed.compile import compile_blocks
from ..speed.fp8 import require_fp8_tensor_cores
from ..speed.fp8_training import to_float8_training
from ..utils.finite import check_finite_checkpoint
from ..utils.optim import built, clip_grad_norm_in_step, folds_clipping, make_optimizer, partial_record
from .schedules import watches_the_loss

__all__ = ["DiffusionModule"]


class DiffusionModule(pl.LightningModule):
    """Trains p(x0 | x_t, condition) on codes of a frozen tokenizer.

    Args:
        transformer: ``TransformerConfig`` fields (``num_embeds``, ``height``, ``width`` and
            ``context_dim`` / ``num_classes`` are filled from the tokenizer and condition).
        tokenizer: ``VQVAEConfig`` fields of the frozen tokenizer (its weights travel in the
            checkpoint, so it can be rebuilt without the config files).
        condition: a :class:`~vqdiffusion.conditions.Condition` (text, class or none) or its
            recorded dict (``{"kind": "class", "num_classes": 10}``).
        schedule: a ``ScheduleConfig``, its fields, or ``{"preset": name}``.
        loss: a ``LossConfig`` or its fields.
        optimizer: ``optimizer(param_groups)`` builds the optimiser (a ``functools.partial`` of
            e.g. ``torch.optim.AdamW`` with its LR: ``_partial_: true`` in the config); weight
            decay applies to the matrices only, and ``fused=True`` is used where the optimiser
            has it and no GradScaler runs. Needed to train, not to sample.
        lr_scheduler: ``lr_scheduler(optimizer)`` gives the ``lr_scheduler`` entry of
            ``configure_optimizers`` (:mod:`.schedules`); None keeps the LR constant.
        caption_dropout: share of samples trained with the null condition (for guidance).
        ema_decay, ema_every: EMA of the transformer (and null embedding) weights, updated every
            ``ema_every`` optimiser steps; validation and export use it.
        seed: with the step number, seeds each step's draws (t, x_t, caption dropout).
        compile: ``torch.compile`` the training transformer, block by block (GPU runs; the first
            step pays the compile, under a minute at the ITHQ size), and the loss math after it.
        bf16_residual: under bf16 autocast, carry the transformer's residual stream in bf16
            instead of float32 (``VQDiffusionTransformer.residual_in_autocast_dtype``): faster
            steps and less memory at the paper sizes, with the same validation VB as the float32
            stream (bench/README.md). No effect in float32 or under fp16 autocast. False keeps
            the float32 stream.
        fp8: run the blocks' per-token linears' matmuls in FP8 while training, forward and backward
            (:mod:`vqdiffusion.speed.fp8_training`): ``rowwise`` (all three matmuls) or
            ``rowwise-wgrad-bf16`` (the weight gradient in bf16); None trains in the autocast
            dtype. H100/H200 under bf16 autocast; the weights, checkpoints and the EMA copy used for
            validation and export stay as they are.

    The hyperparameters a checkpoint records are plain values: the condition, schedule and loss
    as dicts, the optimiser and LR schedule as the configs that built them.
    """

    def __init__(
        self,
        transformer: dict,
        tokenizer: dict,
        condition: Condition | dict,
        schedule: ScheduleConfig | dict | None = None,
        loss: LossConfig | dict | None = None,
        optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[[torch.optim.Optimizer], dict] | None = None,
        caption_dropout: float = 0.1,
        ema_decay: float = 0.99,
        ema_every: int = 25,
        seed: int = 0,
        compile: bool = False,
        bf16_residual: bool = True,
        fp8: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.condition = make_condition(condition)
        self.make_optimizer, self.make_lr_scheduler = built(optimizer), built(lr_scheduler)
        loss_config = loss if isinstance(loss, LossConfig) else LossConfig(**(loss or {}))
        schedule_settings = schedule_config(schedule)
        # save_hyperparameters reads the arguments from this frame: rebound to the plain values a
        # checkpoint records (and load_from_checkpoint passes back)
        condition, schedule, loss = (self.condition.config(), dataclasses.asdict(schedule_settings),
                                     dataclasses.asdict(loss_config))
        optimizer, lr_scheduler = partial_record(self.make_optimizer), partial_record(self.make_lr_scheduler)
        self.save_hyperparameters()
        parts = build_components(transformer, tokenizer, self.condition, schedule_settings)
        self.tokenizer = parts["vqvae"].eval().requires_grad_(False)
        # Not registered as a submodule: frozen, re-loaded from its path, kept out of checkpoints.
        object.__setattr__(self, "text_encoder", parts["text_encoder"])
        self.null_embedding = parts["null_embedding"]  # learned with the transformer (text), or None
        self.transformer = parts["transformer"]
        self.transformer.residual_in_autocast_dtype = bf16_residual
        self.schedule = parts["schedule"]
        self.loss = DiffusionLoss(self.schedule, loss_config)
        self.ema_transformer = copy.deepcopy(self.transformer).requires_grad_(False)
        if fp8 is not None:  # after the EMA copy: it samples in the plain dtype
            to_float8_training(self.transformer, fp8)
        if compile:
            # Block by block: a fraction of compiling the whole transformer, at the same step time.
            # The EMA copy, used for sampling, stays eager.
            compile_blocks(self.transformer)
            self.loss.compile_math = True  # the closed-form loss math after the network (with gradients)
        self.ema_null_embedding = (None if self.null_embedding is None
                                   else copy.deepcopy(self.null_embedding).requires_grad_(False))

    @property
    def trained_modules(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """(live, EMA) pairs of what the optimiser trains."""
        pairs = [(self.transformer, self.ema_transformer)]
        if self.null_embedding is not None:
            pairs.append((self.null_embedding, self.ema_null_embedding))
        return pairs

    def on_fit_start(self) -> None:
        if self.hparams.fp8 is not None:
            require_fp8_tensor_cores(self.device, f"diffusion_training.fp8={self.hparams.fp8}")
        dataset = getattr(self.trainer.datamodule, "train_set", None) if self.trainer is not None else None
        if self.text_encoder is not None and hasattr(dataset, "all_captions"):
            self.text_encoder.encoder.to(self.device)
            with torch.no_grad():
                self.text_encoder.prefill(dataset.all_captions())

    # ------------------------------------------------------------------ conditions
    def conditions(
        self, batch: dict, dropout: float, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Transformer keyword arguments for a batch; a ``dropout`` share gets the null condition."""
        size = len(batch["image"]) if "image" in batch else len(batch["tokens"])
        drop = torch.rand(size, device=self.device, generator=generator) < dropout
        return self.condition.inputs(self, batch, drop)

    @torch.no_grad()
    def codes(self, batch: dict) -> torch.Tensor:
        """(B, N) code indices: pre-tokenised or encoded on the fly."""
        if "tokens" in batch:
            return batch["tokens"].reshape(len(batch["tokens"]), -1).long()
        codes = self.tokenizer.encode(batch["image"])
        return codes.reshape(codes.shape[0], -1)

    # ------------------------------------------------------------------ training
    def step_generator(self, batch_idx: int = 0) -> torch.Generator:
        """Randomness of this batch as a function of (seed, optimiser step, the batch's place
        among the step's ``accumulate_grad_batches``, the DDP rank): a resumed run draws exactly
        what the interrupted one would have, with no RNG state to checkpoint, and neither the
        batches accumulated into one step nor the ranks share their t and noise (one batch per
        step on one process: seed x 1000003 + step)."""
        trainer = self._trainer
        accumulate, world = (trainer.accumulate_grad_batches, trainer.world_size) if trainer is not None else (1, 1)
        batch = (self.global_step * accumulate + batch_idx % accumulate) * world + self.global_rank
        return torch.Generator(device=self.device).manual_seed(self.hparams.seed * 1_000_003 + batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = self.codes(batch)
        generator = self.step_generator(batch_idx)
        conditions = self.conditions(batch, self.hparams.caption_dropout, generator)

        def log_p_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.transformer(x_t, model_timestep(t), **conditions, return_logits=True)

        terms = self.loss(log_p_x0, x0, generator=generator)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"non-finite diffusion loss at step {self.global_step} (vb={terms['vb'].item()}, "
                f"aux={terms['aux'].item()}); the checkpoints on disk were all checked finite when written"
            )
        if self._logs_this_step():
            self.log_dict({f"train/{k}": terms[k] for k in ("loss", "vb", "aux", "kl", "decoder_nll")},
                          prog_bar=False, batch_size=len(x0))
            self.log("loss", terms["loss"], prog_bar=True, logger=False, batch_size=len(x0))
        return terms["loss"]

    def _logs_this_step(self) -> bool:
        """Whether this step's training metrics are logged: every step the logger writes, the last
        step (the run's final loss), and every step under the plateau LR schedule (it reads
        train/loss each step). Lightning's bookkeeping of a logged value costs up to a tenth of a
        small model's CPU step, so the steps nobody reads skip it."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or watches_the_loss(self.make_lr_scheduler) or trainer.fast_dev_run:
            return True
        return bool(connector.should_update_logs) or self.global_step + 1 >= trainer.max_steps > 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before it writes the file: an update that turned the weights or the
        # optimiser state to NaN stops the run here, before a poisoned checkpoint is written.
        check_finite_checkpoint(checkpoint, self.global_step)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: Lightning runs the callbacks' hooks (the
        # checkpoint's among them) before the module's, so a checkpoint written at this step
        # would miss this step's EMA update and a resumed run would drift from an uninterrupted
        # one. This hook runs once per optimiser step, whatever accumulate_grad_batches is, and
        # before Lightning counts the step: global_step is still the number of earlier steps.
        self.update_ema(self.global_step + 1)

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """After optimiser step ``step`` (1-based): move the EMA weights toward the live ones
        when ``step`` is a multiple of ``ema_every`` (the first such update copies them)."""
        if step % self.hparams.ema_every:
            return
        decay = 0.0 if step <= self.hparams.ema_every else self.hparams.ema_decay
        for live, ema in self.trained_modules:  # one multi-tensor kernel per module, not one per parameter
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1 - decay)

    def configure_optimizers(self):
        if self.make_optimizer is None:
            raise ValueError("DiffusionModule needs optimizer= to train, e.g. functools.partial(torch.optim.AdamW, "
                             "lr=4.5e-4, weight_decay=4.5e-2) (train.py builds it from diffusion_training.optimizer)")
        decay, no_decay = [], []
        for module, _ in self.trained_modules:
            for name, param in module.named_parameters():
                (no_decay if param.dim() < 2 or "emb" in name else decay).append(param)
        # fused: one kernel instead of a loop over every tensor (a visible share of a small model's
        # CPU step); fp16's GradScaler must unscale first, so not there
        optimizer = make_optimizer(self.make_optimizer, [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                   fused=not self._uses_grad_scaler())
        if self.make_lr_scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": self.make_lr_scheduler(optimizer)}

    def _uses_grad_scaler(self) -> bool:
        return self._trainer is not None and str(self.trainer.precision) in ("16-mixed", "16")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not gradient_clip_val:
            return
        if self._uses_grad_scaler():
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        # Without a GradScaler the gradients are already true-scale, so clip them here: Lightning's
        # mixed-precision plugin refuses any fused optimiser, bf16 included.
        if gradient_clip_algorithm != "value" and folds_clipping(optimizer):
            clip_grad_norm_in_step(optimizer, gradient_clip_val)  # the fused AdamW divides as it steps
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Loss per t-bucket (10 buckets) with the EMA weights and no caption dropout."""
        x0 = self.codes(batch)
        conditions = self.conditions(batch, 0.0)
        steps = self.schedule.num_timesteps
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        for bucket in range(10):
            t = torch.full((len(x0),), 1 + (bucket * steps) // 10 + steps // 20, device=self.device).clamp(1, steps)

            def log_p_x0(x_t, t_, conditions=conditions):
                return self.ema_transformer(x_t, model_timestep(t_), **conditions, return_logits=True)

            terms = self.loss(log_p_x0, x0, generator=g, t=t)
            self.log(f"val/vb_t{bucket * 10:02d}-{bucket * 10 + 9:02d}", terms["vb"],
                     sync_dist=True, batch_size=len(x0))
            self.log("val/vb", terms["vb"] / 10, reduce_fx="sum", sync_dist=True, batch_size=len(x0))

    def pipeline(self, use_ema: bool = True, sampler: str = "ancestral") -> VQDiffusionPipeline:
        """The user-facing pipeline around the current (EMA) weights; modules are shared, not copied."""
        transformer = self.ema_transformer if use_ema else self.transformer
        null = self.ema_null_embedding if use_ema else self.null_embedding
        text = self.text_encoder.encoder if self.text_encoder is not None else None
        return VQDiffusionPipeline(self.tokenizer, transformer, self.schedule, text_encoder=text,
                                   null_embedding=null, sampler=sampler)
