"""VQDiffusionPipeline: prompt (or class, or nothing) -> tokens -> sampler -> decoder -> images.

The call signature and meaning are diffusers' ``VQDiffusionPipeline.__call__``; this project's
extras (sampler choice, class labels, editing) are keyword arguments after them. The same object
serves ``sample.py``, validation-time sampling during training and FID/CLIP evaluation.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..diffusion.guidance import (
    check_guidance_scale,
    check_guidance_schedule,
    check_truncation_rate,
    classifier_free_guidance,
    scheduled_guidance,
)
from ..diffusion.samplers import Sampler, make_sampler
from ..diffusion.schedule import NoiseSchedule, model_timestep
from ..models.conditioning import LearnedNullEmbedding, TextEncoder
from ..models.transformer import VQDiffusionTransformer
from ..models.vqvae import VQVAE
from ..speed import FastPath, SpeedSettings
from ..utils.images import to_pil
from .inputs import (
    check_components,
    check_condition,
    check_counts,
    check_first_time,
    check_generator,
    edit_spec,
    initial_tokens,
)

__all__ = ["VQDiffusionPipeline", "ImagePipelineOutput"]


@dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], a (B, 3, H, W)
    tensor in [0, 1] (``output_type="pt"``) or (B, N) code indices (``"tokens"``)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


class VQDiffusionPipeline:
    """Text-, class- or un-conditional VQ-Diffusion sampling.

    Args:
        vqvae: the tokenizer; decodes (B, h, w) codes to images.
        transformer: the denoiser; its config says which condition it takes.
        schedule: the noise schedule the transformer was trained with.
        text_encoder: for text models: tokenizer + frozen text model.
        null_embedding: the learned "empty prompt" for guidance (text models); when absent or not
            learnable, the empty prompt's encoding is used.
        sampler: default sampler (a name in ``SAMPLERS``, e.g. ``"ancestral"``, or an object).
    """

    def __init__(
        self,
        vqvae: VQVAE,
        transformer: VQDiffusionTransformer,
        schedule: NoiseSchedule,
        text_encoder: TextEncoder | None = None,
        null_embedding: LearnedNullEmbedding | None = None,
        sampler: str | Sampler = "ancestral",
    ) -> None:
        check_components(transformer.config, schedule, vqvae)
        cfg = transformer.config
        if cfg.context_dim is not None and text_encoder is None:
            raise ValueError("this transformer cross-attends to text: pass a text_encoder")
        self.vqvae, self.transformer, self.schedule = vqvae, transformer, schedule
        self.text_encoder, self.null_embedding = text_encoder, null_embedding
        self.sampler = make_sampler(sampler)
        self.progress_bar_config: dict = {}
        self.fast = FastPath(transformer, vqvae.decode)  # what sampling calls: as loaded, or sped up by optimize()

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm's keyword arguments for the sampling progress bar, as in diffusers:
        ``disable=True`` hides it, ``disable=None`` hides it when the output is not a terminal."""
        from tqdm.std import tqdm  # tqdm.auto's class takes **kwargs: the plain one names them

        unknown = sorted(set(kwargs) - set(inspect.signature(tqdm.__init__).parameters) - {"self"})
        if unknown:
            raise ValueError(f"set_progress_bar_config got {unknown}, which are not tqdm arguments")
        self.progress_bar_config = {**self.progress_bar_config, **kwargs}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, torch_dtype: torch.dtype | None = None, *,
        ema: bool | None = None, text_encoder: str | None = None, **kwargs
    ) -> VQDiffusionPipeline:
        """Load a diffusers-format folder, a hub id (e.g. ``microsoft/vq-diffusion-ithq``) or a
        training checkpoint of the diffusion stage (``checkpoints/step_0001000.ckpt``).

        For a checkpoint, ``ema`` (default True) picks the EMA weights, False the optimiser's,
        and ``text_encoder`` replaces the text encoder path recorded in it.
        """
        from ..convert.lightning_checkpoint import is_training_checkpoint, load_checkpoint_components

        if is_training_checkpoint(path_or_repo_id):
            components = load_checkpoint_components(path_or_repo_id, ema=True if ema is None else ema,
                                                     text_encoder=text_encoder)
        else:
            if ema is not None or text_encoder is not None:
                raise ValueError(f"ema and text_encoder apply to training checkpoints (.ckpt files); "
                                 f"{str(path_or_repo_id)!r} is not one")
            from ..convert.diffusers_format import load_pipeline_components

            components = load_pipeline_components(path_or_repo_id)
        pipe = cls(**components, **kwargs)
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe

    def save_pretrained(self, directory: str | os.PathLike, *, model_card: dict | None = None) -> None:
        """Write a diffusers-format folder (each sub-folder loads with diffusers' own classes) and
        its model card ``README.md``; ``model_card`` adds to the card what the folder cannot say
        (:func:`~vqdiffusion.convert.model_card.model_card`'s ``base_model``, ``training_data``,
        ``sampler``, ``metrics``)."""
        from ..convert.diffusers_format import save_pipeline
        from ..convert.model_card import write_model_card

        if self.speed.fp8:
            raise ValueError("this pipeline's linears were converted to FP8 by optimize(fp8=True) and no longer hold "
                             "the original weights: save the pipeline before optimizing it")

        save_pipeline(directory, **self.components)
        write_model_card(directory, **(model_card or {}))

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload VQ-Diffusion pipeline", create_pr: bool = False,
                    model_card: dict | None = None):
        """Save the pipeline (with its card) and upload the folder to the hub repository
        ``repo_id``, creating it if needed (``huggingface_hub``; ``token`` or the logged-in
        user's). Returns huggingface_hub's commit information."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as staging:
            folder = os.path.join(staging, "pipeline")
            self.save_pretrained(folder, model_card=model_card)
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                     create_pr=create_pr)

    @property
    def components(self) -> dict:
        """The modules and schedule this pipeline was built from: ``type(pipe)(**pipe.components)``
        builds another pipeline sharing them (as in diffusers)."""
        return {"vqvae": self.vqvae, "transformer": self.transformer, "schedule": self.schedule,
                "text_encoder": self.text_encoder, "null_embedding": self.null_embedding}

    @property
    def speed(self) -> SpeedSettings:
        """What :meth:`optimize` turned on."""
        return self.fast.settings

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VQDiffusionPipeline:
        """Move the networks (and cast them to ``dtype``); the schedule stays float32."""
        for module in (self.vqvae, self.transformer, self.text_encoder, self.null_embedding):
            if module is not None:
                module.to(device=device, dtype=dtype)
        self.schedule.to(device=device)
        return self

    def optimize(self, **options) -> VQDiffusionPipeline:
        """Inference speed-ups, in place (the pipeline is for sampling afterwards); returns self.
        The options and their defaults are :meth:`~vqdiffusion.speed.FastPath.optimize`'s:
        ``fuse_qkv``, ``fuse_activation``, ``fuse_residual``, ``cache_context``, ``cache_modulation``,
        ``attention``, ``fp8``, ``fp8_scaling``, ``compile``, ``compile_scope``."""
        self.fast.optimize(**options)
        return self

    # ------------------------------------------------------------------ conditions
    def _conditions(
        self,
        prompts: list[str] | None,
        class_labels: torch.Tensor | None,
        num_images_per_prompt: int,
        guidance: bool,
    ) -> dict[str, torch.Tensor]:
        """Transformer keyword arguments for the batch, [uncond; cond] when guiding."""
        cfg, device = self.transformer.config, self.device
        conditions: dict[str, torch.Tensor] = {}
        if cfg.context_dim is not None:
            context = self.text_encoder(prompts).repeat_interleave(num_images_per_prompt, 0)
            if guidance:
                if self.null_embedding is not None and self.null_embedding.learnable:
                    null = self.null_embedding.expand(len(prompts)).to(context)
                else:
                    null = self.text_encoder([""] * len(prompts))
                null = null.repeat_interleave(num_images_per_prompt, 0)
                context = torch.cat([null, context])
            conditions["context"] = context.to(device=device, dtype=self.dtype)
        if cfg.num_classes is not None:
            labels = class_labels.to(device).repeat_interleave(num_images_per_prompt, 0)
            if guidance:
                labels = torch.cat([torch.full_like(labels, cfg.num_classes), labels])
            conditions["class_labels"] = labels
        return conditions

    def denoiser(
        self, conditions: dict[str, torch.Tensor], guidance_scale: float, guidance: bool,
        guidance_schedule: str = "constant",
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The closure samplers call: (x_t (B, N), paper t (B,)) -> guided log p(x0) (B, K, N),
        guided at ``guidance_scale`` as ``guidance_schedule`` sets it at each t."""
        network = self.fast.network
        combine = self.fast.math(classifier_free_guidance)  # compiled, its passes over (B, K, N) fuse into one
        if self.speed.cache_context and "context" in conditions:  # the text is the same at every step
            conditions = {**conditions, "context_kv": self.transformer.context_keys_values(conditions["context"])}
            del conditions["context"]

        def log_p_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not guidance:
                return network(x_t, model_timestep(t), **conditions)
            both = network(torch.cat([x_t, x_t]), model_timestep(torch.cat([t, t])), **conditions)
            log_p_uncond, log_p_cond = both.chunk(2)
            scale = scheduled_guidance(guidance_scale, t, self.schedule.num_timesteps, guidance_schedule)
            return combine(log_p_uncond, log_p_cond, scale)

        return log_p_x0

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 5.0,
        truncation_rate: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        *,
        sampler: str | Sampler | None = None,
        sampler_options: dict | None = None,
        class_labels: torch.Tensor | list[int] | int | None = None,
        batch_size: int | None = None,
        edit_image: Image.Image | list[Image.Image] | torch.Tensor | None = None,
        edit_tokens: torch.Tensor | None = None,
        edit_start_step: int | None = None,
        keep_mask: torch.Tensor | None = None,
        guidance_schedule: str = "constant",
    ) -> ImagePipelineOutput | tuple:
        """Generate images (diffusers' arguments first, then this project's extras).

        Args:
            prompt: text prompt(s), for text models.
            num_inference_steps: network calls; fewer than T respace the chain (except with the
                ``"diffusers"`` sampler, which reproduces diffusers' truncated chain).
            guidance_scale: classifier-free guidance weight; guidance is used when > 1.
            truncation_rate: keep the top classes of p(x0) up to this mass, in (0, 1].
            generator: a ``torch.Generator`` for reproducible draws, or a list with one per image
                (image i's draws then come from generator i alone: the same image whatever the
                batch it is drawn in).
            latents: (B, N) starting tokens in ``0..K`` (K = [MASK]); the prior otherwise.
            output_type: ``"pil"``, ``"np"``, ``"pt"``, or ``"tokens"`` / ``"latent"`` (the codes).
            callback: ``callback(step, timestep, tokens)`` every ``callback_steps`` calls, with
                the (B, N) tokens after the step and the model timestep just left (a 0-d tensor).
            sampler: override the pipeline's sampler (name or object).
            sampler_options: keyword arguments for a sampler given by name, e.g.
                ``{"purity_weight": 2.0}`` for ``"purity"``.
            class_labels: class ids (class-conditional models), one per "prompt".
            batch_size: number of images for unconditional models.
            edit_image: image(s) to edit or inpaint (PIL, or a (B, 3, H, W) tensor in [0, 1]),
                encoded with the VQ-VAE; one per generated image.
            edit_tokens: (B, N) or (B, h, w) codes of an image to edit or inpaint.
            edit_start_step: start the chain from ``q(x_t | edit_tokens)`` at this paper time.
            keep_mask: (B, N) or (B, h, w) bool, True where ``edit_tokens`` are kept (inpainting).
            guidance_schedule: ``"constant"`` (the guidance scale at every step) or ``"linear"``
                (none at t = T, rising to ``2 guidance_scale - 1`` at the end, the same mean:
                :func:`~vqdiffusion.diffusion.guidance.scheduled_guidance`).
        """
        cfg = self.transformer.config
        prompts, groups, labels = check_condition(cfg, prompt, class_labels, batch_size)
        if sampler is None and sampler_options:
            sampler = self.sampler.name
        chosen = self.sampler if sampler is None else make_sampler(sampler, **(sampler_options or {}))
        num_images_per_prompt, callback_steps, num_inference_steps = check_counts(
            chosen.most_inference_steps(self.schedule, cfg.height * cfg.width), num_images_per_prompt,
            callback_steps, num_inference_steps, output_type)
        check_generator(generator)
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_schedule = check_guidance_schedule(guidance_schedule)
        truncation_rate = check_truncation_rate(truncation_rate)
        batch = groups * num_images_per_prompt
        guidance = guidance_scale > 1.0 and (cfg.context_dim is not None or cfg.num_classes is not None)

        conditions = self._conditions(prompts, labels, num_images_per_prompt, guidance)
        x_t = initial_tokens(cfg, self.schedule, latents, batch, chosen, generator, self.device)
        if edit_image is not None:
            if edit_tokens is not None:
                raise ValueError("pass edit_image or edit_tokens, not both")
            edit_tokens = self.encode_images(edit_image)
        edit = edit_spec(cfg, self.schedule, edit_tokens, edit_start_step, keep_mask, batch, self.device)
        check_first_time(cfg, chosen, chosen.first_time(self.schedule, num_inference_steps, edit))
        progress = _Progress(callback, callback_steps, self.progress_bar_config, num_inference_steps, self.device)
        chosen.compile_math = self.speed.compile
        with self.fast.attention():
            tokens = chosen(
                self.denoiser(conditions, guidance_scale, guidance, guidance_schedule),
                self.schedule,
                x_t,
                num_inference_steps=num_inference_steps,
                truncation_rate=truncation_rate,
                generator=generator,
                callback=progress,
                callback_steps=1,
                edit=edit,
            )
        progress.close()
        images = self.decode(tokens, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def encode_images(self, images: Image.Image | list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Images (PIL, or (B, 3, H, W) in [0, 1]) -> (B, N) codes on the transformer's grid."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, list):
            arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be PIL images or a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
        vqvae_dtype = next(self.vqvae.parameters()).dtype
        codes = self.vqvae.encode((images * 2 - 1).to(self.device, vqvae_dtype))  # (B, h, w)
        cfg = self.transformer.config
        if codes.shape[1:] != (cfg.height, cfg.width):
            factor = self.vqvae.config.downsample_factor
            raise ValueError(f"images of {tuple(images.shape[2:])} pixels give a {tuple(codes.shape[1:])} token grid; "
                             f"this model needs {cfg.height * factor}x{cfg.width * factor} pixels")
        return codes.reshape(codes.shape[0], -1)

    def decode(self, tokens: torch.Tensor, output_type: str = "pil"):
        """(B, N) codes -> images in the requested ``output_type``."""
        if output_type in ("tokens", "latent"):
            return tokens
        cfg = self.transformer.config
        grid = tokens.view(tokens.shape[0], cfg.height, cfg.width)
        images = (self.fast.decode(grid).float() / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)
        if output_type == "pt":
            return images
        if output_type == "np":
            return images.cpu().permute(0, 2, 3, 1).numpy()
        return to_pil(images)


class _Progress:
    """Wraps the user's callback (called every ``callback_steps``) with a progress bar. The
    callback gets the timestep as a 0-d long tensor on the pipeline's device, as diffusers'."""

    def __init__(self, callback, callback_steps: int, bar_config: dict, total: int, device: torch.device) -> None:
        from tqdm.auto import tqdm

        self.callback, self.every, self.device = callback, callback_steps, device
        self.bar = tqdm(**{"total": total, "desc": "sampling", "unit": "step", "leave": False, **bar_config})

    def __call__(self, step: int, timestep: int, tokens: torch.Tensor) -> None:
        self.bar.update(1)
        if self.callback is not None and step % self.every == 0:
            self.callback(step, torch.tensor(timestep, device=self.device), tokens)

    def close(self) -> None:
        self.bar.close()
