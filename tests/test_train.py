"""Training through the real Hydra configs, shrunk to seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import (
    make_caption_folder,
    make_class_folders,
    make_coco,
    make_cub,
    make_emojione,
    make_fashion_mnist,
    make_image_folder,
    make_mnist_pickle,
    make_twemoji,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from vqdiffusion.tasks import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))

# Both stages at toy size (configs/debug/tiny.yaml), plus the CSV logger's offline files.
TINY = ["debug=tiny"]


def _shards(root: Path) -> Path:
    from vqdiffusion.data.folders import CaptionFolder
    from vqdiffusion.data.shards import write_shards

    write_shards(CaptionFolder(str(make_caption_folder(root / "src")), size=32), root / "shards",
                 samples_per_shard=4, progress=False)
    return root / "shards"


# Per experiment: fake data in the official layout, and the overrides that point at it.
EXPERIMENT_DATA = {
    "coco": lambda p: [f"data.train.root={make_coco(p / 'coco')}", "data.train.size=32"],
    "cub200": lambda p: [f"data.train.root={make_cub(p / 'cub')}", "data.train.size=32"],
    "imagenet": lambda p: [f"data.train.root={make_class_folders(p / 'in' / 'train')}",
                           f"data.val.root={make_class_folders(p / 'in' / 'val')}", "data.train.size=32"],
    "ffhq": lambda p: [f"data.train.root={make_image_folder(p / 'ffhq')}", "data.train.size=32"],
    "ithq": lambda p: [f"data.train.urls={_shards(p)}", "data.train.size=32", "data.train.shuffle_buffer=4"],
    "fashion_mnist": lambda p: [f"data.train.root={make_fashion_mnist(p / 'fm')}"],
    "fashion_mnist_gpu": lambda p: [f"data.train.root={make_fashion_mnist(p / 'fm')}"],
    "mnist_gpu": lambda p: [f"data.train.path={make_mnist_pickle(p / 'mnist.pkl.gz')}"],
    "emoji_gpu": lambda p: [f"data.train.emojione_root={make_emojione(p / 'gem')}",
                            f"data.train.twemoji_root={make_twemoji(p / 'npm')}", "data.train.size=32"],
}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


def read_losses(run: Path) -> dict[int, float]:
    losses = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_trains_both_stages(experiment, tmp_path, tiny_clip_folder):
    overrides = [f"experiment={experiment}", *TINY, *EXPERIMENT_DATA.get(experiment, lambda p: [])(tmp_path / "data")]
    if compose_train(overrides).condition.get("encoder") == "openai/clip-vit-base-patch32":
        overrides.append(f"condition.encoder={tiny_clip_folder}")  # offline: a tiny local CLIP
    tmp_path = tmp_path / "run"
    cfg = compose_train([*overrides, f"output_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["diffusion"]["steps"] == 2
    assert (tmp_path / "pipeline" / "model_index.json").exists()
    assert (tmp_path / "final_grid.png").exists() and (tmp_path / "config.yaml").exists()
    assert OmegaConf.load(tmp_path / "config.yaml").name == cfg.name


def _trainer_for(overrides: list[str], tmp_path: Path):
    from vqdiffusion.tasks.training import _trainer

    cfg = compose_train([*overrides, f"output_dir={tmp_path}", "logger=csv"])
    return _trainer(cfg, tmp_path, "diffusion", max_steps=7, val_every=5)


# ids "trainer=gpu", not "gpu": a bare "gpu" keyword would mark the test as needing a GPU
@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIGS / "trainer").glob("*.yaml")),
                         ids=lambda option: f"trainer={option}")
def test_every_trainer_option_instantiates_with_the_stage_steps(option, tmp_path):
    trainer = _trainer_for([f"trainer={option}", "trainer.accelerator=cpu"], tmp_path)
    assert trainer.max_steps == 7 and trainer.val_check_interval == 5
    assert trainer.accumulate_grad_batches == 1 and trainer.gradient_clip_val == 0.5
    assert trainer.num_sanity_val_steps == 0


def test_any_trainer_argument_is_settable_without_plus(tmp_path):
    trainer = _trainer_for(["trainer.max_time=00:00:02:00", "trainer.limit_train_batches=3",
                            "trainer.gradient_clip_val=1.5", "trainer.max_steps=4"], tmp_path)
    assert trainer.max_steps == 4 and trainer.val_check_interval == 4  # capped at the steps
    assert trainer.gradient_clip_val == 1.5 and trainer.limit_train_batches == 3
    (timer,) = [c for c in trainer.callbacks if type(c).__name__ == "Timer"]
    assert timer._duration == 120
    assert _trainer_for(["trainer.fast_dev_run=true"], tmp_path).fast_dev_run is True


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIGS / "debug").glob("*.yaml")))
def test_every_debug_option_composes_onto_every_experiment_and_instantiates(option, tmp_path):
    for experiment in EXPERIMENTS:
        _trainer_for([f"experiment={experiment}", f"debug={option}", "trainer.accelerator=cpu"], tmp_path)
    trainer = _trainer_for([f"debug={option}"], tmp_path)
    expected = {"fdr": ("fast_dev_run", True), "overfit": ("overfit_batches", 4),
                "profiler": ("profiler", "SimpleProfiler"), "tiny": ("max_steps", 7)}[option]
    value = getattr(trainer, expected[0])
    assert (type(value).__name__ if option == "profiler" else value) == expected[1]


def test_debug_fdr_runs_the_quickstart_end_to_end_in_one_batch_per_stage(tmp_path):
    cfg = compose_train(["experiment=quickstart", "debug=fdr", "logger=csv", "sampler.num_inference_steps=2",
                         f"output_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["diffusion"]["steps"] == 1 and metrics["diffusion"]["final_images"] == 2
    assert (tmp_path / "pipeline" / "model_index.json").exists()
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run writes no checkpoints
    card = (tmp_path / "pipeline" / "README.md").read_text()  # the model card: the run's data, settings, numbers
    assert "pipeline_tag: \"text-to-image\"" in card and "| training data | ShapesDataset (" in card
    assert "num_inference_steps=2" in card and "| final_images | 2 |" in card


def test_coco_debug_fdr_reaches_the_missing_data_message(tmp_path):
    from vqdiffusion.data.robust import DatasetNotFoundError

    cfg = compose_train(["experiment=coco", "debug=fdr", f"data.train.root={tmp_path / 'coco'}", "logger=csv",
                         f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(DatasetNotFoundError, match="annotations/captions_train2014.json"):
        train(cfg)


@pytest.mark.parametrize("setting", ["validation.guidance_scale=-2", "validation.truncation_rate=1.5",
                                     "validation.guidance_schedule=cosine"])
def test_a_bad_validation_setting_stops_the_run_before_it_trains(tmp_path, setting):
    cfg = compose_train(["experiment=quickstart", *TINY, setting, f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"(guidance_scale must be a finite number >= 0, got -2"
                                         r"|truncation_rate must be in \(0, 1\], got 1.5"
                                         r"|guidance_schedule must be one of .*, got 'cosine')"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_validation_samples_with_the_samplers_guidance_schedule_and_the_experiments_truncation(tmp_path,
                                                                                              monkeypatch):
    from vqdiffusion import VQDiffusionPipeline

    calls: list[dict] = []
    original = VQDiffusionPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("sampler", "guidance_schedule", "truncation_rate")})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VQDiffusionPipeline, "__call__", recording)
    # the quickstart sets its own truncation (0.6); maskgit brings its linear guidance schedule
    cfg = compose_train(["experiment=quickstart", *TINY, "sampler=maskgit_halton", f"output_dir={tmp_path}"])
    train(cfg)
    assert calls and all(c["guidance_schedule"] == "linear" and c["truncation_rate"] == 0.6 for c in calls)
    assert all(c["sampler"].name == "maskgit" and c["sampler"].order == "halton" for c in calls)
    card = (tmp_path / "pipeline" / "README.md").read_text()
    # the card's call samples as validation did: the Halton order named, the defaults left out
    assert "guidance_schedule='linear'" in card and "sampler_options={'order': 'halton'})" in card
    plain = compose_train(["experiment=emoji_gpu", "sampler=maskgit"]).validation  # no truncation of its own
    assert (plain.guidance_schedule, plain.truncation_rate) == ("linear", 0.9)


def test_coco_without_data_stops_with_the_layout_and_the_fix(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "train.py", "experiment=coco", f"data.train.root={tmp_path / 'coco'}", "logger=csv",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=CONFIGS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr
    assert str(tmp_path / "coco") in message and "annotations/captions_train2014.json" in message
    assert "python scripts/prepare_data.py coco" in message and "Traceback" not in message


def test_ddp_on_two_cpu_processes_trains_both_stages(tmp_path):
    """trainer=ddp on 2 gloo processes with 2 batches per optimizer step: rank 1 waits for rank
    0's tokenizer export (it used to read the folder before it existed), rank 0 writes the run's
    files, and the step count is in optimizer steps."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("trainer=")]
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=quickstart", *overrides, "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.precision=32-true", "trainer.accumulate_grad_batches=2",
         "diffusion_training.max_steps=8",
         "diffusion_training.val_every_n_steps=8", f"hydra.run.dir={run}"],
        cwd=CONFIGS.parent, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diffusion"]["steps"] == 8 and "faithfulness" in metrics["diffusion"]
    assert (run / "pipeline" / "model_index.json").exists()


def test_step_sampler_ranks_read_disjoint_data_that_resumes():
    from vqdiffusion.data.datamodule import StepSampler

    ranks = [list(StepSampler(100, seed=3, rank=r, num_replicas=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == list(range(100))
    single = list(StepSampler(100, seed=3))
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]  # one stream, dealt to the ranks
    resumed = StepSampler(100, seed=3, start=20, rank=1, num_replicas=2)
    assert list(resumed)[:10] == [single[2 * p + 1] for p in range(20, 30)]


def test_unknown_preset_fails_at_composition_with_the_options():
    with pytest.raises(Exception, match=r"(?s)Could not find 'schedule/maskonly'.*mask_only"):
        compose_train(["schedule=maskonly"])


@pytest.mark.parametrize("stop", [7])  # between two checkpoint steps (at one: the ckpt_path test below)
def test_resumed_run_repeats_the_uninterrupted_losses(stop, tmp_path):
    base = [*TINY, "trainer.log_every_n_steps=1", "diffusion_training.val_every_n_steps=1000",
            "diffusion_training.checkpoint_every_n_steps=12", "diffusion_training.ema_every=1"]
    tokenizer_run = tmp_path / "tok"
    train(compose_train([*base, "stage=tokenizer", f"output_dir={tokenizer_run}"]))
    diffusion = [*base, "stage=diffusion", f"tokenizer_checkpoint={tokenizer_run}"]

    full = tmp_path / "full"
    train(compose_train([*diffusion, "diffusion_training.max_steps=24", f"output_dir={full}"]))
    first = tmp_path / "first"
    train(compose_train([*diffusion, "diffusion_training.max_steps=24", f"output_dir={first}",
                         f"stop_after_steps={stop}"]))
    checkpoint = first / "checkpoints" / f"step_{stop:07d}.ckpt"
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == stop
    resumed = tmp_path / "resumed"
    train(compose_train([*diffusion, "diffusion_training.max_steps=24", f"output_dir={resumed}",
                         f"ckpt_path={checkpoint}"]))  # the name needs no quoting

    expected, got = read_losses(full), read_losses(resumed)
    steps = list(range(stop, 24))
    assert all(step in expected and step in got for step in steps), (sorted(expected), sorted(got))
    assert [got[s] for s in steps] == [expected[s] for s in steps]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == stop
    # The EMA too: the checkpoint holds its step's update, so the resumed run applies every one.
    for name in ("transformer", "learned_classifier_free_sampling_embeddings"):
        full_weights = load_file(next((full / "pipeline" / name).glob("*.safetensors")))
        resumed_weights = load_file(next((resumed / "pipeline" / name).glob("*.safetensors")))
        assert full_weights.keys() == resumed_weights.keys()
        assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights), name


@pytest.mark.parametrize("steps, ema_is_live", [(1, False), (2, True)])
def test_the_first_ema_update_copies_the_weights_at_step_ema_every(steps, ema_is_live, tmp_path):
    """ema_every=2: nothing after step 1 (the EMA is still the initial weights), a copy after
    step 2, and the checkpoint of that step holds it (an update counted from 0 fails both)."""
    train(compose_train([*TINY, f"diffusion_training.max_steps={steps}", "diffusion_training.ema_every=2",
                         "diffusion_training.checkpoint_every_n_steps=1", f"output_dir={tmp_path}"]))
    state = torch.load(tmp_path / "checkpoints" / f"step_{steps:07d}.ckpt", weights_only=True)["state_dict"]
    live = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    ema = {k.removeprefix("ema_transformer."): v for k, v in state.items() if k.startswith("ema_transformer.")}
    assert live.keys() == ema.keys()
    assert all(torch.equal(live[k], ema[k]) for k in live) == ema_is_live


def test_a_training_checkpoint_samples_as_the_pipeline_exported_from_its_weights(tmp_path):
    from vqdiffusion import VQDiffusionPipeline

    run = tmp_path / "run"
    # Stopped mid-training: the pipeline folder is exported from the same weights as the checkpoint.
    train(compose_train([*TINY, "diffusion_training.max_steps=6", "diffusion_training.checkpoint_every_n_steps=3",
                         "diffusion_training.ema_every=1", "diffusion_training.val_every_n_steps=1000",
                         "stop_after_steps=3", f"output_dir={run}"]))
    checkpoint = run / "checkpoints" / "step_0000003.ckpt"

    def images(pipe, seed=0):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a red circle", num_inference_steps=4, num_images_per_prompt=3, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(seed), output_type="pt").images

    exported = images(VQDiffusionPipeline.from_pretrained(run / "pipeline"))
    torch.testing.assert_close(images(VQDiffusionPipeline.from_pretrained(checkpoint)), exported, rtol=0, atol=0)
    raw = VQDiffusionPipeline.from_pretrained(checkpoint, ema=False)
    ema = VQDiffusionPipeline.from_pretrained(checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(raw.transformer.parameters(), ema.transformer.parameters()))
    # sample.py takes the checkpoint as it takes a run folder, and draws the same images
    def sample_folder(checkpoint, out):
        from vqdiffusion.tasks import sample

        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            sample(compose("sample", overrides=[f"checkpoint={checkpoint}", "prompt=a red circle", "n=2",
                                                "sampler.num_inference_steps=3", f"output_dir={out}"]))
        return [torch.from_numpy(np.array(Image.open(p))) for p in sorted(out.glob("*.png")) if p.stem.isdigit()]

    from_checkpoint, from_run = sample_folder(checkpoint, tmp_path / "a"), sample_folder(run, tmp_path / "b")
    assert len(from_checkpoint) == 2 and all(torch.equal(a, b) for a, b in zip(from_checkpoint, from_run))
    with pytest.raises(ValueError, match="apply to training checkpoints"):
        VQDiffusionPipeline.from_pretrained(run / "pipeline", ema=False)
    with pytest.raises(ValueError, match="not a diffusion-stage checkpoint"):
        torch.save({"state_dict": {}, "hyper_parameters": {"vqvae": {}}}, tmp_path / "tokenizer.ckpt")
        VQDiffusionPipeline.from_pretrained(tmp_path / "tokenizer.ckpt")


def test_stage_diffusion_without_tokenizer_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="stage=diffusion needs tokenizer_checkpoint="):
        train(compose_train([*TINY, "stage=diffusion", f"output_dir={tmp_path}"]))


def test_ckpt_path_last_and_auto_resume_the_newest_run_and_reuse_its_tokenizer(tmp_path):
    """ckpt_path=auto starts afresh where nothing was trained, then resumes like ckpt_path=last:
    one command for every job of a requeued chain."""
    base = [*TINY, "diffusion_training.max_steps=6", "diffusion_training.checkpoint_every_n_steps=2",
            "diffusion_training.val_every_n_steps=1000"]
    first = train(compose_train([*base, f"output_dir={tmp_path / 'first'}", "ckpt_path=auto", "stop_after_steps=2"]))
    assert first["diffusion"]["steps"] == 2
    trained = json.loads((tmp_path / "first" / "tokenizer" / "metrics.json").read_text())
    metrics = train(compose_train([*base, f"output_dir={tmp_path / 'second'}", "ckpt_path=auto",
                                   "stop_after_steps=3"]))
    assert metrics["tokenizer"] == first["tokenizer"] == trained  # reused from the first run, not retrained
    assert metrics["diffusion"]["steps"] == 5  # three more than the step it resumed at, between checkpoints
    copied = tmp_path / "second" / "tokenizer"
    original = tmp_path / "first" / "tokenizer"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in original.iterdir())
    # a resume of the resumed run finds the tokenizer in it, and trains none
    (tmp_path / "first" / "tokenizer").rename(tmp_path / "first" / "tokenizer_gone")
    metrics = train(compose_train([*base, f"output_dir={tmp_path / 'third'}", "ckpt_path=last"]))
    assert metrics["tokenizer"] == trained and metrics["diffusion"]["steps"] == 6
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no complete checkpoint under"):
        train(compose_train([*base, f"output_dir={tmp_path / 'elsewhere' / 'run'}", "ckpt_path=last"]))


def test_a_checkpoint_cut_off_mid_write_is_passed_over_on_resume(tmp_path, caplog):
    """A kill during the write of the newest checkpoint: ckpt_path=last takes the newest whole one."""
    import os
    import time

    from vqdiffusion.tasks.training import _resume_path

    run = tmp_path / "runs" / "a"
    base = [*TINY, "diffusion_training.max_steps=4", "diffusion_training.checkpoint_every_n_steps=2",
            "diffusion_training.val_every_n_steps=1000"]
    train(compose_train([*base, f"output_dir={run}"]))
    last, older = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "step_0000002.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill mid-write of a non-atomic writer leaves
    newer = time.time() + 5
    os.utime(last, (newer, newer))
    cfg = compose_train([*base, f"output_dir={tmp_path / 'runs' / 'b'}", "ckpt_path=last"])
    with caplog.at_level("WARNING"):
        chosen = _resume_path(cfg, tmp_path / "runs" / "b")
    assert chosen in (str(older), str(run / "checkpoints" / "step_0000004.ckpt"))
    assert "not a complete checkpoint" in caplog.text
    assert not list(run.rglob("*.tmp"))  # the atomic writer leaves no temporary files behind


def test_validation_fid_scores_the_ema_weights_as_an_evaluation_of_their_images(tmp_path):
    """callbacks=fid: val/fid at each validation equals the textbook FID of the exported pipeline's
    images (drawn again from the saved folder) against the validation images, through the same
    extractor, and each validation's row lands in fid.csv."""
    from hydra.utils import instantiate
    from test_eval import scipy_fid
    from test_eval_runs import PooledConv

    from vqdiffusion import VQDiffusionPipeline
    from vqdiffusion.eval import load_feature_extractor
    from vqdiffusion.eval.run import dataset_batches

    extractor_path = tmp_path / "extractor.pt"
    torch.jit.script(PooledConv()).save(str(extractor_path))
    run = tmp_path / "run"
    cfg = compose_train([*TINY, "callbacks=fid", f"callbacks.diffusion.fid.backend={extractor_path}",
                         "callbacks.diffusion.fid.num_images=10", "callbacks.diffusion.fid.batch_size=4",
                         "diffusion_training.max_steps=4", "diffusion_training.val_every_n_steps=2",
                         "diffusion_training.ema_every=1", f"output_dir={run}"])
    train(cfg)
    rows = list(csv.DictReader((run / "fid.csv").read_text().splitlines()))
    assert [int(row["step"]) for row in rows] == [2, 4] and all(int(row["num_generated"]) == 10 for row in rows)

    pipe = VQDiffusionPipeline.from_pretrained(run / "pipeline")  # the weights of the last validation
    pipe.set_progress_bar_config(disable=True)
    dataset = instantiate(cfg.data.val)
    prompts = list(dataset.validation_prompts(10))
    prompts = [prompts[i % len(prompts)] for i in range(10)]
    generator = torch.Generator().manual_seed(0)
    images = torch.cat([pipe(prompts[i:i + 4], generator=generator, num_inference_steps=2, guidance_scale=3.0,
                             output_type="pt").images for i in range(0, 10, 4)])
    extractor = load_feature_extractor(str(extractor_path))
    with torch.no_grad():
        generated = extractor((images * 255).round().to(torch.uint8)).double().numpy()
        reference = extractor(torch.cat(list(dataset_batches(dataset, 10)))).double().numpy()
    assert float(rows[-1]["fid"]) == pytest.approx(scipy_fid(reference, generated), rel=1e-4, abs=1e-6)


def test_export_best_by_exports_the_weights_of_the_lowest_validation(tmp_path):
    """A learning rate that overshoots after a few steps: the validation VB falls, then rises. The
    pipeline holds the EMA weights of the lowest validation's checkpoint, not the last ones, and
    the run records which."""
    from safetensors.torch import load_file

    from vqdiffusion.lit.callbacks import BestValidationCheckpoint

    run = tmp_path / "run"
    settings = [*TINY, "diffusion_training.max_steps=6", "diffusion_training.val_every_n_steps=1",
                "diffusion_training.checkpoint_every_n_steps=1", "diffusion_training.ema_every=1",
                "diffusion_training.optimizer.lr=3", "diffusion_training.lr_scheduler.warmup_steps=0",
                "diffusion_training.export_best_by=val/vb"]
    metrics = train(compose_train([*settings, "logger=csv", f"output_dir={run}"]))
    scores = [float(row["val/vb"]) for path in run.glob("logs/version_*/metrics.csv")
              for row in csv.DictReader(path.read_text().splitlines()) if row.get("val/vb")]
    exported = metrics["diffusion"]["exported_weights"]
    assert len(scores) == 6 and exported["score"] == pytest.approx(min(scores)) and exported["monitor"] == "val/vb"
    assert exported["step"] == scores.index(min(scores)) + 1 < 6  # the overshoot made a later validation worse
    assert sorted(p.name for p in (run / "checkpoints" / "best").iterdir()) == [
        "best.json", f"step_{exported['step']:07d}.ckpt"]
    assert json.loads((run / "checkpoints" / "best" / "best.json").read_text())["step"] == exported["step"]

    weights = load_file(next((run / "pipeline" / "transformer").glob("*.safetensors")))

    def ema(checkpoint: str) -> dict[str, torch.Tensor]:
        state = torch.load(run / "checkpoints" / checkpoint, weights_only=True)["state_dict"]
        return {k.removeprefix("ema_transformer."): v for k, v in state.items() if k.startswith("ema_transformer.")}

    best, last = ema(f"step_{exported['step']:07d}.ckpt"), ema("last.ckpt")
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in weights)
    assert any(not torch.equal(weights[k], last[k]) for k in weights)
    assert json.loads((run / "metrics.json").read_text())["diffusion"]["exported_weights"]["step"] == exported["step"]

    # Resumed into a new folder from the best step's checkpoint, written before that step's
    # validation (its own copy of the ranking lags: best.json does not), the first job's best still
    # ranks, so the worse validation after the resume is not exported as the best.
    step_file = run / "checkpoints" / f"step_{exported['step']:07d}.ckpt"
    resumed = train(compose_train([*settings, f"ckpt_path={step_file}", f"output_dir={tmp_path / 'b'}"]))
    resumed = resumed["diffusion"]["exported_weights"]
    assert resumed["step"] == exported["step"] and resumed["score"] == pytest.approx(exported["score"])
    assert Path(resumed["checkpoint"]).parent == run / "checkpoints" / "best"
    assert not list((tmp_path / "b" / "checkpoints").glob("best/*.ckpt"))
    # Resumed from a step before that best: another branch, which ranks its own validations from
    # there (the first job's later best is not its own).
    earlier = run / "checkpoints" / f"step_{exported['step'] - 1:07d}.ckpt"
    branch = train(compose_train([*settings, f"ckpt_path={earlier}", f"output_dir={tmp_path / 'branch'}"]))
    branch = branch["diffusion"]["exported_weights"]
    assert Path(branch["checkpoint"]).parent == tmp_path / "branch" / "checkpoints" / "best"
    assert branch["step"] == exported["step"] and branch["score"] == pytest.approx(exported["score"])
    # A best file deleted since (an earlier job's folder): the module keeps its last weights, and
    # the record says so.
    callback = BestValidationCheckpoint(tmp_path / "elsewhere", "val/vb")
    callback.best_model_path, callback.best_model_score = str(tmp_path / "gone.ckpt"), torch.tensor(6.5)
    module = torch.nn.Linear(2, 2)
    before = [p.clone() for p in module.parameters()]
    gone = callback.load_best_into(module)
    assert gone == {"weights": "last", "best_checkpoint_missing": str(tmp_path / "gone.ckpt"), "monitor": "val/vb",
                    "score": 6.5}
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    unranked = BestValidationCheckpoint(tmp_path / "elsewhere", "val/vb")  # stopped before its first validation
    assert unranked.load_best_into(module) == {"weights": "last", "monitor": "val/vb", "score": None}


@pytest.mark.parametrize("overrides, message", [
    (["diffusion_training.export_best_by=val/loss"], r"export_best_by must be null or one of \('val/vb', 'val/fid'\)"),
    (["diffusion_training.export_best_by=val/fid"], "needs the FID at each validation: add callbacks=fid"),
    (["diffusion_training.export_best_by=val/fid", "callbacks=fid", "callbacks.diffusion.fid.every_n_validations=2"],
     "scored every 2: set callbacks.diffusion.fid.every_n_validations=1"),
])
def test_export_best_by_refuses_what_it_cannot_rank_before_training(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(compose_train([*TINY, *overrides, f"output_dir={tmp_path}"]))
    assert not (tmp_path / "tokenizer").exists()  # refused before the tokenizer stage


def test_validation_prompts_from_val_draws_the_grids_from_held_out_captions(tmp_path, monkeypatch):
    """Emoji's held-out split is by emoji: every caption of the validation grids and the final grid
    comes from it under validation.prompts_from=val, none from training (train by default)."""
    from vqdiffusion.conditions import TextCondition

    asked: list[str] = []
    original = TextCondition.validation_call

    def recording(self, dataset, prompts, num_images, num_classes):
        inputs, prompts = original(self, dataset, prompts, num_images, num_classes)
        asked.extend(prompts)
        return inputs, prompts

    monkeypatch.setattr(TextCondition, "validation_call", recording)
    cfg = compose_train(["experiment=emoji_gpu", *TINY, *EXPERIMENT_DATA["emoji_gpu"](tmp_path / "data"),
                         "validation.prompts_from=val", f"output_dir={tmp_path / 'run'}"])
    train(cfg)
    from hydra.utils import instantiate

    held_out, training = (set(instantiate(cfg.data[split]).all_captions()) for split in ("val", "train"))
    assert asked and set(asked) <= held_out and not set(asked) & training


@pytest.mark.parametrize("overrides, message", [
    (["validation.prompts_from=test"], "a data split is 'train' or 'val', got 'test'"),
    (["validation.prompts_from=val", "data.val=null"], r"no validation split \(data.val is null\)"),
])
def test_validation_prompts_from_refuses_a_split_it_cannot_draw_before_training(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(compose_train([*TINY, *overrides, f"output_dir={tmp_path}"]))
    assert not (tmp_path / "tokenizer").exists()


def test_an_update_that_poisons_the_weights_is_never_checkpointed(tmp_path, monkeypatch):
    """The weights turn NaN in the update of a checkpoint step, after its loss was checked: that
    step's checkpoint (and last.ckpt) must not be written, and the run stops naming the cause."""
    from vqdiffusion.lit.diffusion_module import DiffusionModule
    from vqdiffusion.utils.finite import non_finite_tensors

    update_ema = DiffusionModule.update_ema

    def poisoning_update(self, step):
        if step == 4:
            with torch.no_grad():
                next(self.transformer.parameters()).fill_(float("nan"))
        update_ema(self, step)

    monkeypatch.setattr(DiffusionModule, "update_ema", poisoning_update)
    cfg = compose_train(["experiment=quickstart", *TINY, f"output_dir={tmp_path}", "diffusion_training.max_steps=6",
                         "diffusion_training.checkpoint_every_n_steps=2", "diffusion_training.val_every_n_steps=100"])
    with pytest.raises(FloatingPointError, match=r"after step 4, [1-9]\d* weight and \d+ optimiser tensors"):
        train(cfg)
    written = {path.name: torch.load(path, map_location="cpu", weights_only=True)
               for path in (tmp_path / "checkpoints").glob("*.ckpt")}
    assert sorted(written) == ["last.ckpt", "step_0000002.ckpt"]
    for checkpoint in written.values():
        assert checkpoint["global_step"] == 2
        assert not non_finite_tensors(checkpoint["state_dict"])
        assert not non_finite_tensors(checkpoint["optimizer_states"])


def test_a_diverging_tokenizer_stops_the_run_and_exports_nothing(tmp_path):
    cfg = compose_train(["experiment=quickstart", *TINY, f"output_dir={tmp_path}", "tokenizer_training.max_steps=6",
                         "tokenizer_training.optimizer.lr=1e6", "trainer.gradient_clip_val=0"])
    with pytest.raises(FloatingPointError, match="tokenizer"):
        train(cfg)
    assert not (tmp_path / "tokenizer").exists() and not (tmp_path / "pipeline").exists()


def test_a_kill_at_a_random_point_resumes_to_the_same_losses_ema_and_images(tmp_path):
    """kill -9 of a real train.py process once it has a checkpoint, at a random moment after that,
    then ckpt_path=last: the remaining losses, the EMA weights and the final images equal an
    uninterrupted run's."""
    import random
    import signal
    import subprocess
    import sys
    import time

    base = [*TINY, "trainer.log_every_n_steps=1", "diffusion_training.val_every_n_steps=1000",
            "diffusion_training.checkpoint_every_n_steps=2", "diffusion_training.ema_every=2",
            "diffusion_training.max_steps=40"]
    tokenizer_run = tmp_path / "tok"
    train(compose_train([*base, "stage=tokenizer", f"output_dir={tokenizer_run}"]))
    diffusion = [*base, "stage=diffusion", f"tokenizer_checkpoint={tokenizer_run}"]
    full = tmp_path / "full"
    train(compose_train([*diffusion, f"output_dir={full}"]))

    killed, delay = tmp_path / "runs" / "killed", random.uniform(0.0, 1.0)
    process = subprocess.Popen([sys.executable, "train.py", *diffusion, f"output_dir={killed}"],
                               cwd=CONFIGS.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("checkpoints/step_*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(killed.glob("checkpoints/*.ckpt")) and not (killed / "pipeline").exists(), "not killed mid-run"
    resumed = tmp_path / "runs" / "resumed"
    train(compose_train([*diffusion, f"output_dir={resumed}", "ckpt_path=last"]))

    expected, got = read_losses(full), read_losses(resumed)
    assert got and all(expected[step] == loss for step, loss in got.items()), f"killed {delay:.2f} s in"
    for name in ("transformer", "learned_classifier_free_sampling_embeddings"):
        full_weights = load_file(next((full / "pipeline" / name).glob("*.safetensors")))
        resumed_weights = load_file(next((resumed / "pipeline" / name).glob("*.safetensors")))
        assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights), (name, delay)
    grids = [np.asarray(Image.open(run / "final_grid.png")) for run in (full, resumed)]
    assert np.array_equal(*grids), f"killed {delay:.2f} s in"


def test_the_quickstart_trains_on_a_caption_folder(tmp_path):
    """The quickstart's shapes settings live in its data option: another data= replaces them whole."""
    for i in range(6):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"picture {i}\n")
    cfg = compose_train(["experiment=quickstart", *TINY, "data=folder", f"data.train.root={tmp_path}",
                         "data.train.size=32", "data.num_workers=0", f"output_dir={tmp_path / 'run'}"])
    assert train(cfg)["diffusion"]["steps"] == 2


class _Planted:
    def __reduce__(self):
        return (print, ("planted code ran",))


def test_a_planted_checkpoint_is_refused_as_data_and_its_code_never_runs(tmp_path, capsys):
    import pickle

    planted = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": _Planted()}, planted)
    cfg = compose_train(["experiment=quickstart", *TINY, f"output_dir={tmp_path / 'run'}", f"ckpt_path={planted}"])
    with pytest.raises(pickle.UnpicklingError):
        train(cfg)
    assert "planted code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_another_dataset_whole(experiment, tmp_path):
    """An experiment's dataset-specific settings live in its data option, so data=folder replaces
    them all: the composed dataset builds."""
    from hydra.utils import instantiate

    for i in range(2):
        Image.new("RGB", (40, 40)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("a caption\n")
    cfg = compose_train([f"experiment={experiment}", "data=folder", f"data.train.root={tmp_path}", "output_dir=."])
    assert len(instantiate(cfg.data.train)) == 2


def test_lightnings_eval_mode_warning_is_silenced_for_the_frozen_tokenizer_only():
    import warnings

    from pytorch_lightning.utilities.warnings import PossibleUserWarning

    from vqdiffusion.tasks.training import _frozen_in_eval_mode

    def fit_warnings(module, frozen):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _frozen_in_eval_mode(module, frozen):
                count = sum(not m.training for m in module.modules())
                warnings.warn(f"Found {count} module(s) in eval mode at the start of training.", PossibleUserWarning,
                              stacklevel=1)
        return [str(w.message) for w in caught]

    module = torch.nn.ModuleDict({"tokenizer": torch.nn.Sequential(torch.nn.Linear(2, 2)),
                                  "transformer": torch.nn.Linear(2, 2)})
    module.tokenizer.eval()
    assert fit_warnings(module, module.tokenizer) == []
    module.transformer.eval()  # a trained module left in eval mode is a mistake: still reported
    assert fit_warnings(module, module.tokenizer) == ["Found 3 module(s) in eval mode at the start of training."]
