"""``train.py``'s work: build both stages from the composed config, fit, export, report."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ..convert.diffusers_format import resolve_folder, vqvae_config_from_diffusers
from ..convert.state_dict import load_checked
from ..data.robust import DatasetNotFoundError
from ..diffusion.guidance import check_guidance_scale, check_guidance_schedule, check_truncation_rate
from ..lit.callbacks import BestValidationCheckpoint, StopAfterSteps, grid_columns, sample_for_validation
from ..lit.checkpoint_io import newest_valid_checkpoint
from ..models.vqvae import VQVAE
from ..utils.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from ..utils.finite import non_finite_tensors
from ..utils.images import make_grid, save_png, signed_to_pil

__all__ = ["train", "run_dir"]

log = logging.getLogger(__name__)
STAGES = ("tokenizer", "diffusion", "all")


def run_dir(cfg: DictConfig) -> Path:
    """The folder of this run: ``cfg.output_dir`` (Hydra's run folder unless set)."""
    return Path(cfg.output_dir)


def _is_global_zero() -> bool:
    """Rank 0 of a DDP job (Lightning re-launches this script once per rank), or a single process."""
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@contextmanager
def _frozen_in_eval_mode(module: torch.nn.Module, frozen: torch.nn.Module) -> Iterator[None]:
    """Fit without Lightning's "N module(s) in eval mode" warning when the modules in eval mode are
    exactly ``frozen``'s (the tokenizer, frozen by design); any other module in eval mode still warns."""
    frozen_ids = {id(m) for m in frozen.modules()}
    by_design = all(id(m) in frozen_ids for m in module.modules() if not m.training)
    with warnings.catch_warnings():
        if by_design:
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        yield


def _trainer(cfg: DictConfig, out: Path, stage: str, max_steps: int, val_every: int,
             callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    """The ``trainer`` config instantiated for one stage: its ``max_steps`` and validation interval
    unless the config sets them, the logger group, the stage's callbacks group and ``callbacks``."""
    logger = instantiate(cfg.logger, save_dir=str(out)) if cfg.get("logger") else False
    if isinstance(logger, pl.loggers.WandbLogger):
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    steps = cfg.trainer.max_steps
    steps = max_steps if steps is None else steps
    interval = cfg.trainer.val_check_interval
    return instantiate(
        cfg.trainer, max_steps=steps, logger=logger, callbacks=[*stage_callbacks(cfg, stage, logger), *callbacks],
        val_check_interval=min(val_every, steps) if interval is None else interval,
    )


def stage_callbacks(cfg: DictConfig, stage: str, logger=None) -> list[pl.Callback]:
    """``callbacks.<stage>`` instantiated; without a logger no LR monitor (it needs one), and under
    ``fast_dev_run`` no checkpoint: Lightning would still write save_last's one-batch last.ckpt,
    which ``ckpt_path=last`` would then resume as if it were a real run."""
    specs = (cfg.get("callbacks") or {}).get(stage) or {}
    built = [instantiate(spec, _convert_="all") for spec in specs.values()]
    dropped = (() if logger else (pl.callbacks.LearningRateMonitor,)) + (
        (pl.callbacks.ModelCheckpoint,) if cfg.trainer.fast_dev_run else ())
    return [callback for callback in built if not isinstance(callback, dropped)]


def train(cfg: DictConfig) -> dict:
    """Train the stage(s) ``cfg.stage`` asks for; returns the final metrics (also in metrics.json)."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {cfg.stage!r}")
    # the validation sampler's settings, checked now rather than at the first validation
    check_guidance_scale(cfg.validation.guidance_scale)
    check_guidance_schedule(cfg.validation.guidance_schedule)
    check_truncation_rate(cfg.validation.truncation_rate)
    check_export_best_by(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if _is_global_zero():  # under DDP every rank runs this function; one writes the run's files
        atomic_write_bytes(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    datamodule = build_datamodule(cfg)
    datamodule.split(cfg.validation.prompts_from)  # a bad value or a missing split stops the run before it trains
    metrics: dict = {"name": cfg.name, "stage": cfg.stage}
    start = time.perf_counter()

    tokenizer_folder = out / "tokenizer"
    resume = _resume_path(cfg, out)
    resumed_tokenizer = Path(resume).parent.parent / "tokenizer" if resume else None
    if cfg.stage == "all" and resumed_tokenizer is not None and (resumed_tokenizer / "config.json").exists():
        log.info("resuming: reusing the tokenizer of %s", resumed_tokenizer.parent)
        tokenizer_folder = resumed_tokenizer
        metrics["tokenizer"] = _adopt_tokenizer(resumed_tokenizer, out / "tokenizer")
    elif cfg.stage in ("tokenizer", "all"):
        metrics["tokenizer"] = train_tokenizer(cfg, datamodule, out)
    elif cfg.tokenizer_checkpoint:
        tokenizer_folder = _tokenizer_folder(cfg.tokenizer_checkpoint)
    else:
        raise ValueError("stage=diffusion needs tokenizer_checkpoint=<tokenizer folder, run folder, "
                         "pipeline folder or diffusers VQModel hub id>")
    if cfg.stage in ("diffusion", "all"):
        metrics["diffusion"] = train_diffusion(cfg, datamodule, out, tokenizer_folder, resume)
    metrics["wall_seconds"] = time.perf_counter() - start
    if _is_global_zero():
        atomic_write_json(out / "metrics.json", metrics, default=float)
        if (out / "pipeline").is_dir():
            write_card(cfg, out / "pipeline", metrics)
    log.info("run folder: %s", out)
    return metrics


def _adopt_tokenizer(source: Path, folder: Path) -> dict:
    """A resumed run's copy of the tokenizer it reuses (so that resuming it in turn finds one), and
    that tokenizer's metrics."""
    if _is_global_zero() and source.resolve() != folder.resolve():
        with atomic_directory(folder) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
    recorded = source / "metrics.json"
    return json.loads(recorded.read_text()) if recorded.exists() else {}


def validation_sampling(cfg: DictConfig) -> dict:
    """The pipeline-call settings of the run's own samples (the final grid, and the model card's
    example call); the validation callbacks take the same keys from the config."""
    return {"num_inference_steps": cfg.sampler.num_inference_steps, "guidance_scale": cfg.validation.guidance_scale,
            "guidance_schedule": cfg.validation.guidance_schedule, "truncation_rate": cfg.validation.truncation_rate}


def changed_sampler_options(algorithm: DictConfig) -> dict:
    """The sampler config's arguments that differ from its class's defaults: what a pipeline call
    naming the sampler must add as ``sampler_options`` to sample as the config does."""
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(get_class(algorithm._target_)).parameters.items()}
    options = OmegaConf.to_container(algorithm, resolve=True)
    return {key: value for key, value in options.items()
            if not key.startswith("_") and defaults.get(key, inspect.Parameter.empty) != value}


def write_card(cfg: DictConfig, folder: Path, metrics: dict) -> None:
    """The exported pipeline's model card with what the run knows: data, sampler settings, metrics."""
    from ..convert.model_card import write_model_card

    data = OmegaConf.to_container(cfg.data.train, resolve=True)
    name = data.pop("_target_").rsplit(".", 1)[-1]
    sampler = {"sampler": instantiate(cfg.sampler.algorithm).name, **validation_sampling(cfg)}
    if sampler["guidance_schedule"] == "constant":  # the call's default; named only when it differs
        del sampler["guidance_schedule"]
    options = changed_sampler_options(cfg.sampler.algorithm)
    if options:  # e.g. MaskGIT's Halton order: the name alone would call the confidence order
        sampler["sampler_options"] = options
    write_model_card(folder, training_data=f"{name} ({', '.join(f'{k}={v}' for k, v in data.items())})",
                     base_model=cfg.tokenizer_checkpoint if cfg.stage == "diffusion" else None,
                     sampler=sampler, metrics=metrics.get("diffusion"))


def build_datamodule(cfg: DictConfig):
    """``cfg.data`` instantiated; a missing dataset raises its own DatasetNotFoundError (Hydra
    would bury the layout and the preparation command inside an InstantiationException)."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(cfg.data)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DatasetNotFoundError):
            raise cause from None
        raise


def load_tokenizer(path: str) -> VQVAE:
    """A frozen VQVAE from a run folder, tokenizer/VQModel folder or hub id (strict load)."""
    from ..convert.diffusers_format import load_weights, read_json

    folder = _tokenizer_folder(path)
    vqvae = VQVAE(vqvae_config_from_diffusers(read_json(folder / "config.json")))
    return load_checked(vqvae, load_weights(folder), "tokenizer").eval().requires_grad_(False)


def _tokenizer_folder(path: str) -> Path:
    """A VQModel folder (config.json + weights) from a run folder, pipeline folder or hub id."""
    root = resolve_folder(path)
    for candidate in (root, root / "tokenizer", root / "vqvae", root / "pipeline" / "vqvae"):
        if (candidate / "config.json").exists():
            return candidate
    raise FileNotFoundError(f"no tokenizer in {root}: expected config.json in it or in tokenizer/ or vqvae/")


# Settings of a stage's section that the stage reads itself (the trainer's length, the batch, the
# validation and checkpoint intervals); every other key is an argument of the stage's module.
STAGE_SETTINGS = ("max_steps", "batch_size", "val_every_n_steps", "checkpoint_every_n_steps", "export_best_by")
# What ``diffusion_training.export_best_by`` can rank validations by (lower is better for both).
BEST_BY = ("val/vb", "val/fid")


def stage_module(section: DictConfig, name: str, **given) -> pl.LightningModule:
    """A stage's LightningModule: its section (``tokenizer_training``, ``diffusion_training``)
    instantiated, the optimiser and LR schedule as partials, with ``given`` (the components from
    the other groups) passed as they are. A key that is neither an argument of the module nor a
    stage setting is an error that names the valid ones."""
    config = OmegaConf.to_container(section, resolve=True)
    for key in STAGE_SETTINGS:
        config.pop(key, None)
    arguments = set(inspect.signature(get_class(config["_target_"])).parameters) - set(given)
    unknown = sorted(set(config) - {"_target_"} - arguments)
    if unknown:
        raise ValueError(f"{name} has no setting {unknown}; its settings are {sorted(arguments | set(STAGE_SETTINGS))}")
    # a partial first, so that the given objects reach the module as they are (instantiate's own
    # keyword arguments would be merged into the config)
    return instantiate(config, _partial_=True, _convert_="all")(**given)


def train_tokenizer(cfg: DictConfig, datamodule, out: Path) -> dict:
    from ..convert.diffusers_format import save_module, vqvae_config_to_diffusers

    folder = out / "tokenizer"
    if (folder / "config.json").exists():
        log.info("tokenizer already trained in %s: skipping (delete it to retrain)", folder)
        return json.loads((folder / "metrics.json").read_text())
    hp = cfg.tokenizer_training
    module = stage_module(hp, "tokenizer_training", vqvae=OmegaConf.to_container(cfg.tokenizer, resolve=True))
    trainer = _trainer(cfg, out, "tokenizer", hp.max_steps, hp.val_every_n_steps)
    shared_batch = datamodule.batch_size
    datamodule.batch_size = hp.batch_size or shared_batch  # the stage may use its own batch
    try:
        trainer.fit(module, datamodule)
    finally:
        datamodule.batch_size = shared_batch
    poisoned = non_finite_tensors(module.vqvae.state_dict())
    if poisoned:  # an update after the last checked loss: nothing non-finite is exported or trained on
        raise FloatingPointError(f"the trained tokenizer holds NaN or inf in {len(poisoned)} tensors (first: "
                                 f"{poisoned[0]}); it is not exported: lower tokenizer_training.optimizer.lr")
    psnr = float(trainer.callback_metrics.get("val/tokenizer_psnr", float("nan")))
    usage = float((module.code_usage > module.hparams.dead_code_threshold).float().mean())
    metrics = {"val_psnr_db": psnr, "codes_used": usage}
    if trainer.is_global_zero:  # the one rank that writes metrics.json
        ceiling = reconstruction_faithfulness(module.vqvae, datamodule.val_set, count=cfg.ceiling_num_images)
        if ceiling is not None:
            metrics["reconstruction_faithfulness"] = ceiling
            log.info("tokenizer: %.1f%% of validation images stay faithful to their caption through "
                     "encode + decode (the ceiling of generated faithfulness)", 100 * ceiling)

        with atomic_directory(folder) as staging:
            frozen = _frozen_tokenizer(module.vqvae)
            save_module(frozen, vqvae_config_to_diffusers(frozen.config), staging)
            example = getattr(module, "example", None)
            if example is not None:
                grid = signed_to_pil(example)
                save_png(make_grid(grid, columns=8, scale=2), staging / "reconstructions.png")
            atomic_write_json(staging / "metrics.json", metrics, default=float)
    # The other ranks go on to the diffusion stage, which reads this folder: wait until it is written.
    trainer.strategy.barrier("tokenizer_export")
    return metrics


@torch.no_grad()
def reconstruction_faithfulness(vqvae: VQVAE, dataset, count: int = 256, batch_size: int = 64) -> float | None:
    """Share of the first ``count`` items of a captioned dataset with an analyzer (``dataset.score``,
    e.g. shapes) whose encode + decode the analyzer still finds faithful; None for other datasets.

    A generated image can only be as faithful as the codes allow, so this bounds the diffusion
    stage's score: a tokenizer that blurs two colours into one caps it however long that trains.
    """
    if dataset is None or not callable(getattr(dataset, "score", None)) or len(dataset) == 0:
        return None
    count = min(count, len(dataset))
    was_training = vqvae.training
    vqvae.eval()
    device = next(vqvae.parameters()).device
    hits = 0
    try:
        for begin in range(0, count, batch_size):
            items = [dataset[i] for i in range(begin, min(begin + batch_size, count))]
            images = torch.stack([item["image"] for item in items]).to(device)
            for image, item in zip(signed_to_pil(vqvae.decode(vqvae.encode(images))), items):
                hits += bool(dataset.score(image, item["caption"]))
    finally:
        vqvae.train(was_training)
    return hits / count


def _frozen_tokenizer(vqvae: VQVAE) -> VQVAE:
    """The inference part of a trained tokenizer: a plain VQModel without EMA codebook statistics,
    so the exported folder loads strictly here and in diffusers."""
    frozen = VQVAE(dataclasses.replace(vqvae.config, ema_decay=None))
    state = {k: v for k, v in vqvae.state_dict().items() if not k.startswith("quantize.ema_")}
    return load_checked(frozen, state, "tokenizer").eval()


def train_diffusion(cfg: DictConfig, datamodule, out: Path, tokenizer_folder: Path, resume: str | None) -> dict:
    from ..convert.diffusers_format import load_weights, read_json

    hp = cfg.diffusion_training
    tokenizer_config = vqvae_config_from_diffusers(read_json(tokenizer_folder / "config.json")).to_dict()
    condition = instantiate(cfg.condition).for_dataset(datamodule.train_set)
    # The transformer's initialisation must not depend on what ran before it (a tokenizer stage).
    pl.seed_everything(cfg.seed + 1, workers=True)
    module = stage_module(hp, "diffusion_training", transformer=OmegaConf.to_container(cfg.model, resolve=True),
                          tokenizer=tokenizer_config, condition=condition, schedule=instantiate(cfg.schedule),
                          loss=instantiate(cfg.loss), seed=cfg.seed)
    load_checked(module.tokenizer, load_weights(tokenizer_folder), "tokenizer")
    callbacks = [StopAfterSteps(cfg.stop_after_steps)] if cfg.stop_after_steps else []
    best = best_validation_checkpoint(cfg, out)
    trainer = _trainer(cfg, out, "diffusion", hp.max_steps, hp.val_every_n_steps, callbacks + ([best] if best else []))
    with _frozen_in_eval_mode(module, module.tokenizer):
        trainer.fit(module, datamodule, ckpt_path=resume, weights_only=True)  # a checkpoint is data, never code
    result = {"steps": trainer.global_step, "train_loss": float(trainer.callback_metrics.get("train/loss", "nan"))}
    if trainer.is_global_zero:
        if best is not None:
            result["exported_weights"] = best.load_best_into(module)
        module.pipeline().save_pretrained(out / "pipeline")
        # Lightning's teardown moved the module to the CPU: sample on the training device (a GPU
        # is an order of magnitude faster for the final images)
        module.to(trainer.strategy.root_device)
        result.update(final_evaluation(cfg, module, datamodule, out))
    return result


def best_validation_checkpoint(cfg: DictConfig, out: Path) -> BestValidationCheckpoint | None:
    """With ``diffusion_training.export_best_by`` set, a checkpoint of the weights at the validation
    that scored lowest by it, kept in ``checkpoints/best/`` (apart from the step checkpoints, so that
    ``ckpt_path=last`` never resumes from it); None when unset or under ``fast_dev_run``."""
    metric = cfg.diffusion_training.get("export_best_by")
    if metric is None or cfg.trainer.fast_dev_run:
        return None
    return BestValidationCheckpoint(out / "checkpoints" / "best", metric)


def check_export_best_by(cfg: DictConfig) -> None:
    """``diffusion_training.export_best_by`` names a metric logged at every validation: ``val/vb``
    always is; ``val/fid`` needs a ValidationFID callback that scores every validation (Lightning
    would otherwise rank a later validation by the FID an earlier one logged)."""
    metric = cfg.diffusion_training.get("export_best_by")
    if metric is None:
        return
    if metric not in BEST_BY:
        raise ValueError(f"diffusion_training.export_best_by must be null or one of {BEST_BY}, got {metric!r}")
    if metric != "val/fid":
        return
    from ..lit.validation_fid import ValidationFID

    specs = ((cfg.get("callbacks") or {}).get("diffusion") or {}).values()
    scored = [spec for spec in specs if issubclass(get_class(spec._target_), ValidationFID)]
    if not scored:
        raise ValueError("diffusion_training.export_best_by=val/fid needs the FID at each validation: "
                         "add callbacks=fid")
    every = scored[0].get("every_n_validations", 1)
    if every != 1:
        raise ValueError(f"diffusion_training.export_best_by=val/fid needs the FID at every validation, but it is "
                         f"scored every {every}: set callbacks.diffusion.fid.every_n_validations=1")


def _resume_path(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path=last``: the newest complete checkpoint among this name's runs (a job of a sweep:
    among its own; a write cut off by a kill is passed over); ``auto``: the same, or a fresh start
    when there is none (one command for every job of a requeued chain); any other value as given."""
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path not in ("last", "auto"):
        if not Path(cfg.ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path {cfg.ckpt_path!r} does not exist")
        return cfg.ckpt_path
    # A sweep's jobs share one parent folder and differ in their settings: each resumes its own.
    root, pattern = (out, "checkpoints/*.ckpt") if _in_a_sweep() else (out.parent, "*/checkpoints/*.ckpt")
    newest = newest_valid_checkpoint(root, pattern)
    if newest is None and cfg.ckpt_path == "auto":
        log.info("ckpt_path=auto: no checkpoint under %s/%s, starting afresh", root, pattern)
        return None
    if newest is None:
        raise FileNotFoundError(f"ckpt_path=last: no complete checkpoint under {root}/{pattern} "
                                "(ckpt_path=auto starts afresh when there is none)")
    log.info("resuming from %s", newest)
    return str(newest)


def _in_a_sweep() -> bool:
    """Whether this is one job of a Hydra multirun (``-m``), whose folder is the sweep's ``<n>/``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def final_evaluation(cfg: DictConfig, module, datamodule, out: Path) -> dict:
    """A grid of the validation prompts and, for datasets with a scorer, the faithfulness."""
    dataset = datamodule.split(cfg.validation.prompts_from)
    images, prompts = sample_for_validation(
        module, dataset, cfg.validation.prompts, cfg.final_num_images, seed=1234,
        sampler=instantiate(cfg.sampler.algorithm), **validation_sampling(cfg))
    save_png(make_grid(images, columns=grid_columns(module), scale=2), out / "final_grid.png")
    result = {"final_grid": str(out / "final_grid.png"), "final_images": len(images)}
    if prompts is not None and hasattr(dataset, "score"):
        hits = [bool(dataset.score(image, prompt)) for image, prompt in zip(images, prompts)]
        result["faithfulness"] = sum(hits) / len(hits)
        with open(out / "final_prompts.txt", "w") as f:
            f.writelines(f"{p}\t{'ok' if h else 'wrong'}\n" for p, h in zip(prompts, hits))
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result
