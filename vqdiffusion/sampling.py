"""``sample.py``: images from a pipeline, one PNG per global index, resumable.

Output folder: ``000000.png ...`` (image i of the job), ``samples.jsonl`` (one line per image:
index, prompt or class, seed, settings), ``grid.png`` and the resolved ``config.yaml``. Image i
is drawn with its own generator seeded by (seed, i), so re-running skips the images already
written and the final set never depends on the batch size or on interruptions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from .pipeline import VQDiffusionPipeline
from .utils.atomic import atomic_write_bytes
from .utils.images import make_grid, save_png

__all__ = ["sample", "load_pipeline", "job_items"]

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pipeline(checkpoint: str, device: str = "auto", dtype: str = "float32") -> VQDiffusionPipeline:
    """A pipeline from a pipeline folder, a training run folder (its ``pipeline/``) or a hub id."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(checkpoint)
    if path.is_dir() and not (path / "model_index.json").exists():
        if (path / "pipeline" / "model_index.json").exists():
            path = path / "pipeline"
        else:
            raise FileNotFoundError(f"{checkpoint!r} is a folder but neither a pipeline (no model_index.json) nor a "
                                    f"training run folder (no pipeline/model_index.json)")
    elif not path.exists() and str(checkpoint).count("/") != 1:
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist (expected a pipeline folder, a run "
                                f"folder or a hub id 'owner/name')")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return VQDiffusionPipeline.from_pretrained(path if path.exists() else checkpoint).to(device, DTYPES[dtype])


def job_items(cfg: DictConfig, pipe: VQDiffusionPipeline) -> list[dict]:
    """One entry per image: {"index", "prompt" | "class_label" | nothing, "seed"}."""
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    model = pipe.transformer.config
    if model.context_dim is not None:
        prompts = _prompts(cfg)
        conditions = [{"prompt": p} for p in prompts for _ in range(cfg.n)]
    elif model.num_classes is not None:
        if not cfg.class_labels:
            raise ValueError(f"this model is class-conditional: set class_labels=[...] in [0, {model.num_classes - 1}]")
        conditions = [{"class_label": int(c)} for c in cfg.class_labels for _ in range(cfg.n)]
    else:
        conditions = [{} for _ in range(cfg.n)]
    return [{"index": i, **c, "seed": _image_seed(cfg.seed, i)} for i, c in enumerate(conditions)]


def _prompts(cfg: DictConfig) -> list[str]:
    if cfg.prompt and cfg.prompts_file:
        raise ValueError("set prompt or prompts_file, not both")
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.exists():
            raise FileNotFoundError(f"prompts_file {str(path)!r} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts_file {str(path)!r} holds no prompts (one per line expected)")
        return prompts
    if not cfg.prompt:
        raise ValueError('this is a text-to-image model: set prompt="..." or prompts_file=<file>')
    return [cfg.prompt] if isinstance(cfg.prompt, str) else list(cfg.prompt)


def _image_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def sample(cfg: DictConfig) -> Path:
    """Write the job's images (skipping those already there); returns the output folder."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(cfg.output_dir) if cfg.output_dir else Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    pipe = load_pipeline(cfg.checkpoint, cfg.device, cfg.dtype)
    items = job_items(cfg, pipe)
    todo = [item for item in items if not (out / f"{item['index']:06d}.png").exists()]
    log.info("%d images, %d already in %s", len(items), len(items) - len(todo), out)
    settings = {"sampler": cfg.sampler.name, "num_inference_steps": cfg.sampler.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, "truncation_rate": cfg.truncation_rate}
    from tqdm.auto import tqdm

    for item in tqdm(todo, desc="images", unit="img"):
        save_png(_generate(pipe, item, cfg), out / f"{item['index']:06d}.png")
    lines = "".join(json.dumps({**item, **settings}) + "\n" for item in items)
    atomic_write_bytes(out / "samples.jsonl", lines.encode())
    images = [Image.open(out / f"{item['index']:06d}.png") for item in items[:64]]
    save_png(make_grid(images, columns=min(8, max(1, cfg.n))), out / "grid.png")
    return out


def _generate(pipe: VQDiffusionPipeline, item: dict, cfg: DictConfig) -> Image.Image:
    """One image with its own generator, so its draws do not depend on any other image.

    (Batching several images would share one generator and change the draws; per-row
    generators inside the samplers are the planned fix.)
    """
    generator = torch.Generator(pipe.device).manual_seed(item["seed"])
    kwargs = dict(num_inference_steps=cfg.sampler.num_inference_steps, guidance_scale=cfg.guidance_scale,
                  truncation_rate=cfg.truncation_rate, generator=generator, sampler=cfg.sampler.name,
                  sampler_options=OmegaConf.to_container(cfg.sampler.options))
    if "prompt" in item:
        return pipe(item["prompt"], **kwargs).images[0]
    if "class_label" in item:
        return pipe(class_labels=[item["class_label"]], **kwargs).images[0]
    return pipe(batch_size=1, **kwargs).images[0]
