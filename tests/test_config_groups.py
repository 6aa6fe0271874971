"""Every option of every config group builds the object it describes.

A typo in a key, a value the class refuses or a missing ``_target_`` fails here, not hours into
a run. Large models are built on the meta device (shapes only, no memory).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vqdiffusion.components import build_components
from vqdiffusion.conditions import Condition, make_condition
from vqdiffusion.data.robust import DatasetNotFoundError
from vqdiffusion.diffusion.samplers import Sampler
from vqdiffusion.diffusion.schedule import NoiseSchedule
from vqdiffusion.models.vqvae import VQVAE, VQVAEConfig
from vqdiffusion.tasks.training import build_datamodule, stage_callbacks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def test_every_group_of_the_train_config_is_covered_here():
    covered = {"data", "tokenizer", "model", "condition", "schedule", "sampler", "lr_scheduler", "logger",
               "callbacks", "loss", "trainer", "debug", "experiment",
               "cluster"}  # trainer, debug, experiment: tests/test_train.py; cluster: tests/test_cluster.py
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir()} - {"protocol"}  # protocol: sample.py's
    assert groups == covered


@pytest.mark.parametrize("option", options("data"))
def test_every_data_option_builds_or_says_where_the_data_goes(option, tmp_path):
    overrides = [f"data={option}", f"output_dir={tmp_path}"]
    if "root" in compose_train(overrides).data.train:
        overrides.append(f"data.train.root={tmp_path / 'none'}")
    cfg = compose_train(overrides)
    try:
        datamodule = build_datamodule(cfg)
    except DatasetNotFoundError as error:  # the files are not here: the error says how to get them
        assert str(tmp_path / "none") in str(error) or "prepare" in str(error).lower(), str(error)
        return
    assert isinstance(datamodule, pl.LightningDataModule)


@pytest.mark.parametrize("option", options("tokenizer"))
def test_every_tokenizer_option_builds_its_vqvae(option):
    config = plain(compose_train([f"tokenizer={option}"]).tokenizer)
    with torch.device("meta"):
        vqvae = VQVAE(VQVAEConfig(**config))
    assert vqvae.num_codes == config["num_vq_embeddings"]


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_builds_its_transformer(option):
    cfg = compose_train([f"model={option}", "condition=class", "condition.num_classes=10"])
    with torch.device("meta"):
        parts = build_components(plain(cfg.model), plain(cfg.tokenizer), instantiate(cfg.condition),
                                 instantiate(cfg.schedule))
    config = parts["transformer"].config
    assert (config.num_layers, config.num_heads) == (cfg.model.num_layers, cfg.model.num_heads)


@pytest.mark.parametrize("option", options("condition"))
def test_every_condition_option_builds_its_components(option, tiny_clip_folder):
    cfg = compose_train([f"condition={option}", "model.num_layers=1"])
    condition = instantiate(cfg.condition)
    assert isinstance(condition, Condition)
    if getattr(condition, "encoder", None) == "openai/clip-vit-base-patch32":
        condition.encoder = str(tiny_clip_folder)  # offline: a tiny local CLIP of the same kind
    condition = condition.for_dataset(SimpleNamespace(num_classes=10))
    parts = build_components(plain(cfg.model), plain(cfg.tokenizer), condition, instantiate(cfg.schedule))
    assert (parts["text_encoder"] is not None) == (condition.kind == "text") == (parts["null_embedding"] is not None)
    assert (parts["transformer"].config.num_classes == 10) == (condition.kind == "class")
    assert make_condition(condition.config()) == condition  # what a checkpoint records rebuilds it


@pytest.mark.parametrize("option", options("schedule"))
def test_every_schedule_option_builds_a_schedule_of_distributions(option):
    schedule = NoiseSchedule(16, instantiate(compose_train([f"schedule={option}"]).schedule))
    gbar = schedule.mask_probability(torch.arange(schedule.num_timesteps + 1))
    assert gbar[0] == 0 and torch.all(gbar[1:] >= gbar[:-1])


@pytest.mark.parametrize("option", options("loss"))
def test_every_loss_option_builds_a_loss_on_a_mask_only_schedule(option):
    from vqdiffusion.diffusion.loss import DiffusionLoss, LossConfig

    cfg = compose_train([f"loss={option}", "schedule=mask_only"])
    config = instantiate(cfg.loss)
    assert isinstance(config, LossConfig) and config.objective == option
    loss = DiffusionLoss(NoiseSchedule(16, instantiate(cfg.schedule)), config)
    x0 = torch.randint(0, 16, (3, 10))
    terms = loss(lambda x_t, t: torch.zeros(3, 16, 10), x0, t=torch.tensor([1, 50, 100]))
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0


@pytest.mark.parametrize("option", options("sampler"))
def test_every_sampler_option_builds_its_sampler(option):
    sampler = compose_train([f"sampler={option}"]).sampler
    assert isinstance(instantiate(sampler.algorithm), Sampler)
    assert sampler.num_inference_steps >= 1
    assert sampler.guidance_schedule in ("constant", "linear") and 0 < sampler.truncation_rate <= 1


def compose_sample(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=["checkpoint=x", *overrides])


def test_sample_py_guides_and_truncates_as_its_sampler_says_unless_told_otherwise():
    ancestral, maskgit = (compose_sample([f"sampler={name}"]) for name in ("ancestral", "maskgit"))
    assert (ancestral.guidance_schedule, ancestral.truncation_rate) == ("constant", 1.0)
    assert (maskgit.guidance_schedule, maskgit.truncation_rate) == ("linear", 0.9)
    told = compose_sample(["sampler=maskgit", "guidance_schedule=constant", "truncation_rate=0.5"])
    assert (told.guidance_schedule, told.truncation_rate) == ("constant", 0.5)
    # a sampler file of one's own without the pair samples as the Python call does
    bare = compose_sample(["~sampler.guidance_schedule", "~sampler.truncation_rate"])
    assert (bare.guidance_schedule, bare.truncation_rate) == ("constant", 1.0)


@pytest.mark.parametrize("option", options("lr_scheduler"))
@pytest.mark.parametrize("stage", ["tokenizer_training", "diffusion_training"])
def test_every_lr_scheduler_option_schedules_each_stage(option, stage):
    section = compose_train([f"lr_scheduler@{stage}.lr_scheduler={option}"])[stage]
    optimizer = instantiate(section.optimizer, _convert_="all")([torch.nn.Parameter(torch.zeros(2))])
    entry = instantiate(section.lr_scheduler, _convert_="all")(optimizer)
    assert entry["interval"] == "step" and isinstance(entry["scheduler"], torch.optim.lr_scheduler.LRScheduler
                                                      | torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert optimizer.param_groups[0]["lr"] <= section.optimizer.lr


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_option_builds_a_logger(option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = instantiate(compose_train([f"logger={option}", f"output_dir={tmp_path}"]).logger, save_dir=str(tmp_path))
    assert isinstance(logger, pl.loggers.Logger)


@pytest.mark.parametrize("option", options("callbacks"))
@pytest.mark.parametrize("stage", ["tokenizer", "diffusion"])
def test_every_callbacks_option_builds_each_stage_callbacks(option, stage, tmp_path):
    cfg = compose_train([f"callbacks={option}", f"output_dir={tmp_path}", "logger=csv"])
    built = stage_callbacks(cfg, stage, logger=True)
    assert all(isinstance(callback, pl.Callback) for callback in built)
    assert len(built) == len(cfg.callbacks[stage])
    if option == "default" and stage == "diffusion":
        (checkpoint,) = [c for c in built if isinstance(c, pl.callbacks.ModelCheckpoint)]
        assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"
        assert checkpoint._every_n_train_steps == cfg.diffusion_training.checkpoint_every_n_steps


@pytest.mark.parametrize("section, module_class", [
    ("tokenizer_training", "vqdiffusion.lit.tokenizer_module.TokenizerModule"),
    ("diffusion_training", "vqdiffusion.lit.diffusion_module.DiffusionModule"),
])
def test_train_yaml_sets_every_module_argument_to_the_signature_default(section, module_class):
    """The defaults live in the YAML; the signatures (for Python use) say the same."""
    import inspect

    from hydra.utils import get_class

    from vqdiffusion.tasks.training import STAGE_SETTINGS

    values = plain(compose_train([])[section])
    assert values.pop("_target_") == module_class
    parameters = inspect.signature(get_class(module_class)).parameters
    given = {"vqvae", "transformer", "tokenizer", "condition", "schedule", "loss", "seed"}  # from other groups
    assert set(values) - set(STAGE_SETTINGS) == set(parameters) - given
    for key, value in values.items():
        if key in parameters and not isinstance(value, dict):  # dicts: objects built from config
            default = parameters[key].default
            assert (list(default) if isinstance(default, tuple) else default) == value, key


def test_a_misspelt_stage_setting_is_named_with_the_valid_ones(tmp_path):
    from vqdiffusion.tasks import train

    cfg = compose_train(["debug=tiny", "+tokenizer_training.l2_weigth=5", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"tokenizer_training has no setting \['l2_weigth'\].*'l2_weight'"):
        train(cfg)
