"""``sample.py``: images from a pipeline, one PNG per global index, resumable.

Output folder: ``000000.png ...`` (image i of the job), ``samples.jsonl`` (one line per image:
index, prompt or class, seed, settings), ``grid.png`` (a row per class for class-conditional
jobs, with ``class_grids/`` holding a grid per class; ``prompt_grid.png`` for text jobs: a row per
prompt, labelled) and the resolved ``config.yaml``. Image i
is drawn with its own generator seeded by (seed, i), so re-running skips the images already
written and the final set never depends on the batch size or on interruptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ..convert.lightning_checkpoint import is_training_checkpoint
from ..diffusion.guidance import check_guidance_scale, check_guidance_schedule, check_truncation_rate
from ..diffusion.samplers import Sampler
from ..pipeline import VQDiffusionPipeline
from ..speed import SpeedSettings
from ..utils.atomic import atomic_write_bytes
from ..utils.images import indexed_png, labelled_rows, make_grid, pad_row, save_png
from .sample_folder import SampleFolderError, checkpoint_identity, claim_folder, fingerprint, folder_lock

__all__ = ["sample", "load_pipeline", "job_items", "release_pipeline"]

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pipeline(checkpoint: str, device: str = "auto", dtype: str = "float32",
                  ema: bool = True) -> VQDiffusionPipeline:
    """A pipeline from a pipeline folder, a training run folder (its ``pipeline/``), a training
    checkpoint (``.ckpt``: its EMA weights, or the optimiser's with ``ema=False``) or a hub id."""
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
                                f"folder, a training checkpoint .ckpt or a hub id 'owner/name')")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {"ema": ema} if is_training_checkpoint(path) else {}
    pipe = VQDiffusionPipeline.from_pretrained(path if path.exists() else checkpoint, **options)
    return pipe.to(device, DTYPES[dtype])


def job_items(cfg: DictConfig, pipe: VQDiffusionPipeline) -> list[dict]:
    """One entry per image: {"index", "prompt" | "class_label" | nothing, "seed"}."""
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    model = pipe.transformer.config
    if model.context_dim is not None:
        prompts = _split_captions(cfg) if cfg.get("prompts_from") else _prompts(cfg)
        conditions = [{"prompt": p} for p in prompts for _ in range(cfg.n)]
    elif model.num_classes is not None:
        if cfg.get("prompts_from") and not cfg.class_labels:  # every class of the model
            conditions = [{"class_label": c} for c in range(model.num_classes) for _ in range(cfg.n)]
        elif not cfg.class_labels:
            raise ValueError(f"this model is class-conditional: set class_labels=[...] in [0, {model.num_classes - 1}]")
        else:
            conditions = [{"class_label": int(c)} for c in cfg.class_labels for _ in range(cfg.n)]
    else:
        conditions = [{} for _ in range(cfg.n)]
    return [{"index": i, **c, "seed": _image_seed(cfg.seed, i)} for i, c in enumerate(conditions)]


def _split_captions(cfg: DictConfig) -> list[str]:
    """The captions of the first ``prompts_count`` items of ``data``'s ``prompts_from`` split, in
    order (the text-to-image protocol: one generated image per reference caption)."""
    from ..data.datamodule import split_dataset

    split = cfg.prompts_from
    if cfg.prompt or cfg.prompts_file:
        raise ValueError("set prompts_from or prompt/prompts_file, not both")
    dataset = split_dataset(cfg, split, f"prompts_from={split!r} reads a dataset split")
    count = min(int(cfg.prompts_count), len(dataset))
    captions = [dataset[i].get("caption") for i in range(count)]
    if not all(isinstance(c, str) and c for c in captions):
        raise ValueError(f"prompts_from={split!r}: this dataset's items carry no captions")
    return captions


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


def distributed_context(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) of this process. Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins
    the default process group torchrun describes: NCCL with one GPU per local rank, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, device if use_cuda else "cpu"


def end_distributed() -> None:
    """Leave the process group :func:`distributed_context` joined, after a barrier (no rank leaves
    while another still talks to it). A gloo group left open until interpreter exit can abort a
    rank as its threads are torn down ("terminate called without an active exception": a
    two-process CI run exited 1 that way after writing every result)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sample(cfg: DictConfig) -> Path:
    """Write the job's images (skipping those already there); returns the output folder. The
    pipeline stays loaded for the next call with the same checkpoint and settings (a sweep's
    jobs); :func:`release_pipeline` frees it.

    Under ``torchrun`` each rank draws the images whose index is its rank modulo the world size;
    since image i's draws come from its own generator, the set equals a single process's.
    """
    from hydra.core.hydra_config import HydraConfig

    rank, world, device = distributed_context(cfg.device)
    speed = _speed_settings(cfg)
    identity = checkpoint_identity(str(cfg.checkpoint))
    # the model first: a wrong checkpoint stops the job before it creates an output folder
    pipe = _job_pipeline(cfg, identity, device, speed)
    # and the settings every call checks, before any folder exists
    check_guidance_scale(cfg.guidance_scale)
    check_guidance_schedule(cfg.guidance_schedule)
    check_truncation_rate(cfg.truncation_rate)
    sampler = instantiate(cfg.sampler.algorithm)
    items = job_items(cfg, pipe)
    options = sampler_options(cfg.sampler.algorithm)
    settings = {"sampler": sampler.name, **({"sampler_options": options} if options else {}),
                "num_inference_steps": cfg.sampler.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, "truncation_rate": cfg.truncation_rate,
                **({"guidance_schedule": cfg.guidance_schedule} if cfg.guidance_schedule != "constant" else {}),
                **({"ema": bool(cfg.ema)} if is_training_checkpoint(cfg.checkpoint) else {}),
                **({"speed": "+".join(f"{k}={v}" for k, v in speed.items())} if speed else {})}
    out = Path(cfg.output_dir) if cfg.output_dir else Path(HydraConfig.get().runtime.output_dir)
    if world > 1:  # one folder for all ranks: rank 0's (run folders are named by start time)
        import torch.distributed as dist

        shared = [str(out)]
        dist.broadcast_object_list(shared, src=0)
        out = Path(shared[0])
    expected = fingerprint(identity, {
        **settings, "dtype": cfg.dtype, "device": pipe.device.type}, items)
    with folder_lock(out) if rank == 0 else contextlib.nullcontext():
        _claim(out, expected, bool(cfg.get("fresh", False)), rank, world)
        if rank == 0:
            atomic_write_bytes(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        return _draw_and_record(cfg, pipe, sampler, items, settings, out, rank, world)


# The last job's pipeline in this process, by what built it. The jobs of a ``sample.py -m`` sweep
# run one after another in one process; those sharing a checkpoint, device, dtype, EMA choice and
# speed settings reuse it, so a compiled model compiles once per sweep rather than once per job.
_last_pipeline: tuple[str, VQDiffusionPipeline] | None = None


def release_pipeline() -> None:
    """Forget the pipeline kept for the next job, freeing its memory (for a process that samples
    and then goes on to other work)."""
    global _last_pipeline
    _last_pipeline = None


def _job_pipeline(cfg: DictConfig, identity: dict, device: str, speed: dict) -> VQDiffusionPipeline:
    """The job's pipeline, loaded and optimised, or the previous job's when it was built the same way
    (``identity``: :func:`checkpoint_identity` of ``cfg.checkpoint``)."""
    global _last_pipeline
    key = json.dumps({"checkpoint": str(cfg.checkpoint), "identity": identity,
                      "device": device, "dtype": cfg.dtype, "ema": cfg.ema, "speed": speed}, sort_keys=True)
    if _last_pipeline is not None and _last_pipeline[0] == key:
        log.info("reusing the previous job's pipeline (same checkpoint, device, dtype and speed settings)")
        return _last_pipeline[1]
    _last_pipeline = None  # free the previous model before loading the next
    pipe = load_pipeline(cfg.checkpoint, device, cfg.dtype, ema=cfg.ema)
    if speed:
        pipe.optimize(**speed)
    _last_pipeline = (key, pipe)
    return pipe


def _claim(out: Path, expected: dict, fresh: bool, rank: int, world: int) -> None:
    """Rank 0 claims the folder (:func:`claim_folder`); under torchrun every rank learns the outcome."""
    error = None
    if rank == 0:
        try:
            cleared = claim_folder(out, expected, fresh)
            if cleared:
                log.info("fresh=true: deleted %d images of an earlier job in %s", cleared, out)
        except SampleFolderError as mismatch:
            error = str(mismatch)
    if world > 1:
        import torch.distributed as dist

        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error is not None:
        raise SampleFolderError(error)


def _draw_and_record(cfg: DictConfig, pipe: VQDiffusionPipeline, sampler: Sampler, items: list[dict],
                     settings: dict, out: Path, rank: int, world: int) -> Path:
    """Draw this rank's missing images, then (rank 0) the records, the grid and the metrics."""
    from tqdm.auto import tqdm

    mine = items[rank::world]
    todo = [item for item in mine if not indexed_png(out, item["index"]).exists()]
    log.info("%d images (%d on this rank), %d already in %s", len(items), len(mine), len(mine) - len(todo), out)
    batch_size = int(cfg.get("batch_size", 1))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler.name == "diffusers":
        batch_size = 1  # diffusers' draws come from one generator per call
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole job below
    timed: list[tuple[int, float]] = []  # (images, seconds) of each batch, its PNGs written
    with tqdm(total=len(todo), desc=f"images (rank {rank})" if world > 1 else "images", unit="img") as bar:
        for batch in _batches(todo, batch_size):
            start = time.perf_counter()
            for item, image in zip(batch, _generate(pipe, sampler, batch, cfg)):
                save_png(image, indexed_png(out, item["index"]))  # atomic: a killed run leaves no half file
            timed.append((len(batch), time.perf_counter() - start))
            bar.update(len(batch))
    rate = _rates(timed, world)
    if rank == 0:
        lines = "".join(json.dumps({**item, **settings}) + "\n" for item in items)
        atomic_write_bytes(out / "samples.jsonl", lines.encode())
        _write_grids(out, items, cfg.n)
    if cfg.get("eval") and cfg.eval.metrics:
        from ..eval.run import evaluate_folder

        name = torch.cuda.get_device_name(pipe.device) if str(pipe.device).startswith("cuda") else "cpu"
        result = evaluate_folder(cfg, out, items, {
            **settings, **rate, "batch_size": batch_size, "dtype": cfg.dtype, "checkpoint": str(cfg.checkpoint),
            "device": name, "world_size": world}, device=pipe.device, rank=rank, world=world)
        log.info("metrics: %s", {k: v for k, v in result.items() if isinstance(v, float)})
    return out


# Per-class grids are written for class-conditional jobs of at most this many classes.
MAX_CLASS_GRIDS = 100
# grid.png shows a row for each of the first this many classes: every class of a 10-class set.
GRID_CLASS_ROWS = 16


def _write_grids(out: Path, items: list[dict], per_condition: int) -> None:
    """``grid.png``: the first 64 images, or for class-conditional jobs up to 8 images of each of
    the first 16 classes, a row per class, and ``class_grids/class_<id>.png`` (64 images each); for
    text jobs also ``prompt_grid.png``: up to 8 images of each of the first 16 prompts, a row per
    prompt with the prompt written beside it."""
    def open_all(chosen: list[dict]) -> list[Image.Image]:
        return [Image.open(indexed_png(out, item["index"])) for item in chosen]

    classes: dict[int, list[dict]] = {}
    prompts: dict[str, list[dict]] = {}
    for item in items:
        if "class_label" in item:
            classes.setdefault(item["class_label"], []).append(item)
        if "prompt" in item:
            prompts.setdefault(item["prompt"], []).append(item)
    if prompts:
        rows = [(prompt, open_all(members[:8])) for prompt, members in list(prompts.items())[:16]]
        save_png(labelled_rows(rows), out / "prompt_grid.png")
    if not classes:
        save_png(make_grid(open_all(items[:64]), columns=min(8, max(1, per_condition))), out / "grid.png")
        return
    columns = min(8, max(len(members) for members in classes.values()))
    rows = [members[:columns] for members in list(classes.values())[:GRID_CLASS_ROWS]]
    tiles = [image for row in rows for image in pad_row(open_all(row), columns)]
    save_png(make_grid(tiles, columns=columns), out / "grid.png")
    if len(classes) <= MAX_CLASS_GRIDS:
        (out / "class_grids").mkdir(exist_ok=True)
        for label, members in classes.items():
            save_png(make_grid(open_all(members[:64]), columns=8), out / "class_grids" / f"class_{label:04d}.png")


def sampler_options(algorithm: DictConfig) -> str:
    """The sampler's own arguments as one sorted ``key=value`` string ("" when it takes none):
    recorded beside its name, so runs that differ only in, say, MaskGIT's order stay apart."""
    options = OmegaConf.to_container(algorithm, resolve=True)
    return " ".join(f"{key}={options[key]}" for key in sorted(options) if not key.startswith("_"))


def _speed_settings(cfg: DictConfig) -> dict:
    """The ``speed`` options that differ from "as loaded" (empty: no optimisation)."""
    options = OmegaConf.to_container(cfg.get("speed") or {}, resolve=True)
    # a pipeline as loaded; the config spells "no compile" as false where SpeedSettings holds None
    off = {**dataclasses.asdict(SpeedSettings()), "compile": False}
    unknown = sorted(set(options) - set(off))
    if unknown:
        raise ValueError(f"unknown speed options {unknown}; expected {sorted(off)}")
    return options if any(options[k] != off[k] for k in options) else {}


def _rates(timed: list[tuple[int, float]], world: int) -> dict:
    """``images_per_second`` of the job (every batch, all ranks) and ``images_per_second_steady``:
    over the batches after each rank's first, which carries compiling and warm-up (absent when
    no rank drew a second batch), the rate a longer run of the same settings keeps."""
    drawn, seconds = _all_ranks(sum(n for n, _ in timed), sum(s for _, s in timed), world)
    later, later_seconds = _all_ranks(sum(n for n, _ in timed[1:]), sum(s for _, s in timed[1:]), world)
    rates = {"images_per_second": drawn / seconds} if drawn else {}
    if later and later_seconds > 0:
        rates["images_per_second_steady"] = later / later_seconds
    return rates


def _all_ranks(drawn: int, seconds: float, world: int) -> tuple[int, float]:
    """Images drawn on all ranks and the slowest rank's time (a barrier: every PNG is written)."""
    if world == 1:
        return drawn, seconds
    import torch.distributed as dist

    on = "cuda" if dist.get_backend() == "nccl" else "cpu"
    count, slowest = torch.tensor([float(drawn)], device=on), torch.tensor([seconds], device=on)
    dist.all_reduce(count)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return int(count.item()), float(slowest.item())


def _batches(items: list[dict], size: int) -> list[list[dict]]:
    """Consecutive runs of at most ``size`` items with the same kind of condition."""
    batches: list[list[dict]] = []
    for item in items:
        if batches and len(batches[-1]) < size and batches[-1][0].keys() == item.keys():
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _generate(pipe: VQDiffusionPipeline, sampler: Sampler, items: list[dict], cfg: DictConfig) -> list[Image.Image]:
    """Images for ``items`` in one pipeline call, each drawn from its own generator seeded by
    (seed, index): the same image whatever the batch size or the rank that draws it."""
    generators = [torch.Generator(pipe.device).manual_seed(item["seed"]) for item in items]
    generator = generators[0] if sampler.name == "diffusers" else generators
    kwargs = dict(num_inference_steps=cfg.sampler.num_inference_steps, guidance_scale=cfg.guidance_scale,
                  guidance_schedule=cfg.guidance_schedule, truncation_rate=cfg.truncation_rate, generator=generator,
                  sampler=sampler)
    if "prompt" in items[0]:
        return pipe([item["prompt"] for item in items], **kwargs).images
    if "class_label" in items[0]:
        return pipe(class_labels=[item["class_label"] for item in items], **kwargs).images
    return pipe(batch_size=len(items), **kwargs).images
