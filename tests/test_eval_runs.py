"""sample.py with eval.metrics: FID/KID against a dataset split, the reference cache, sweep summaries."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from test_eval import scipy_fid

from vqdiffusion.eval.run import dataset_batches, reference_label
from vqdiffusion.eval.summary import summarize
from vqdiffusion.tasks import sample
from vqdiffusion.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]


class PooledConv(torch.nn.Module):
    """A tiny stand-in with the FID Inception's contract (float 299 px in, (N, D) out)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean((2, 3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    tiny_pipeline("text").save_pretrained(root / "pipe")
    torch.jit.script(PooledConv()).save(str(root / "extractor.pt"))
    return root


def run_sample(setup, out, *extra, data=("data=shapes", "data.train.size=16")):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[
            f"checkpoint={setup / 'pipe'}", "prompt=[a red circle,a blue square]", "n=6", "batch_size=4",
            "sampler.num_inference_steps=3", *data, "seed=0",
            f"eval.backend={setup / 'extractor.pt'}", f"eval.cache_dir={setup / 'cache'}", "eval.kid_subset_size=5",
            f"output_dir={out}", *extra])
    return sample(cfg), cfg


def test_fid_kid_and_shapes_land_in_metrics_json_and_equal_a_direct_computation(setup, tmp_path):
    out, cfg = run_sample(setup, tmp_path / "a", "eval.metrics=[fid,kid,shapes]")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 12 and metrics["num_real"] == 12 and metrics["num_generated"] == 12
    assert 0.0 <= metrics["shapes_faithfulness"] <= 1.0
    assert metrics["protocol"]["reference_count"] == 12 and metrics["images_per_second"] > 0
    assert metrics["images_per_second_steady"] > 0  # 3 batches of 4: the last two timed alone
    assert metrics["num_inference_steps"] == 3 and metrics["sampler"] == "ancestral"

    # the same number from the features directly (PNG pixels and the dataset's first 12 images)
    from hydra.utils import instantiate

    from vqdiffusion.eval import load_feature_extractor

    extractor = load_feature_extractor(str(setup / "extractor.pt"))
    generated = torch.from_numpy(np.stack([np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB"))
                                           for i in range(12)])).permute(0, 3, 1, 2)
    reference = torch.cat(list(dataset_batches(instantiate(cfg.data.val), 12)))
    expected = scipy_fid(extractor(reference).double().numpy(), extractor(generated).double().numpy())
    assert metrics["fid"] == pytest.approx(expected, rel=1e-3, abs=1e-6)

    cache = Path(metrics["protocol"]["reference_cache"])
    assert cache.is_file() and "split=val" in cache.name and "count=12" in cache.name
    stamp = cache.stat().st_mtime_ns
    again, _ = run_sample(setup, tmp_path / "b", "eval.metrics=[fid]")
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    assert json.loads((again / "metrics.json").read_text())["fid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_another_reference_split_is_not_read_from_the_cache(setup, tmp_path):
    # the same data config name and split key, other images: the cached reference must not be reused
    first, _ = run_sample(setup, tmp_path / "a", "eval.metrics=[fid]", "eval.reference_count=8")
    other, _ = run_sample(setup, tmp_path / "b", "eval.metrics=[fid]", "eval.reference_count=8", "data.val.seed=7")
    first, other = (json.loads((out / "metrics.json").read_text()) for out in (first, other))
    assert first["protocol"]["reference_cache"] != other["protocol"]["reference_cache"]
    assert (first["protocol"]["reference_data"]["seed"], other["protocol"]["reference_data"]["seed"]) == (1, 7)
    assert first["fid"] != pytest.approx(other["fid"])


def test_the_reference_label_names_the_images_not_only_the_config_key():
    assert reference_label("MNIST", "val", {"split": "test", "size": 32}) == "MNIST test (data.val)"
    assert reference_label("MNIST", "val", {"split": "val"}) == "MNIST val"
    assert reference_label("Shapes", "val", {"seed": 1}) == "Shapes val"


def test_another_extractor_under_the_same_file_name_is_not_read_from_the_cache(setup, tmp_path):
    scores = []
    for seed in (0, 1):
        extractor = PooledConv()
        extractor.conv.weight.data += seed
        (tmp_path / str(seed)).mkdir()
        torch.jit.script(extractor).save(str(tmp_path / str(seed) / "extractor.pt"))
        out, _ = run_sample(setup, tmp_path / f"out{seed}", "eval.metrics=[fid]", "eval.reference_count=8",
                            f"eval.backend={tmp_path / str(seed) / 'extractor.pt'}",
                            f"eval.cache_dir={tmp_path / 'cache'}")
        scores.append(json.loads((out / "metrics.json").read_text()))
    assert scores[0]["protocol"]["reference_cache"] != scores[1]["protocol"]["reference_cache"]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_fid_without_a_reference_dataset_says_to_add_one(setup, tmp_path):
    with pytest.raises(ValueError, match="add data=<name>"):
        run_sample(setup, tmp_path, "eval.metrics=[fid]", data=())


@pytest.mark.parametrize("overrides,error,message", [
    (["eval.metrics=[fdi]"], ValueError, r"unknown eval.metrics \['fdi'\]"),
    (["eval.metrics=[fid]", "eval.backend=inceptoin"], ValueError, "unknown feature backend 'inceptoin'"),
    (["eval.metrics=[fid]", "eval.reference_count=100000"], ValueError, "fewer than the 100000 asked for"),
])
def test_evaluation_errors_say_what_to_change(setup, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run_sample(setup, tmp_path, *overrides)


def test_the_steady_rate_leaves_out_the_first_batch():
    from vqdiffusion.tasks.sampling import _rates

    # a first batch that compiles (10 s), then two batches of 1 s
    assert _rates([(4, 10.0), (4, 1.0), (4, 1.0)], world=1) == {"images_per_second": 1.0,
                                                               "images_per_second_steady": 4.0}
    assert _rates([(4, 2.0)], world=1) == {"images_per_second": 2.0}  # one batch: no steady rate
    assert _rates([], world=1) == {}  # nothing left to draw (a resumed job)


def test_summary_table_and_plots_from_metrics_files(tmp_path):
    for job, (steps, fid) in enumerate([(10, 30.0), (25, 20.0), (50, 15.0), (100, 14.0)]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({
            "sampler": "ancestral", "num_inference_steps": steps, "guidance_scale": 3.0, "fid": fid,
            "images_per_second": 100.0 / steps, "protocol": {"ignored": "nested"}}))
    files = summarize(tmp_path)
    names = {f.name for f in files}
    assert {"summary.csv", "summary.md", "fid_vs_steps.png", "speed_vs_quality.png"} <= names
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["fid"]) for r in rows] == [30.0, 20.0, 15.0, 14.0]
    assert "protocol" not in rows[0]
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        summarize(tmp_path / "0" / "nothing_here")


def test_summarize_py_tables_nested_sweeps_and_names_a_wrong_folder(tmp_path, monkeypatch, capsys):
    import runpy

    script = str(Path(__file__).resolve().parents[1] / "scripts" / "summarize.py")
    for sampler in ("ancestral", "maskgit"):  # one sweep folder per sampler under a common parent
        (tmp_path / sampler / "0").mkdir(parents=True)
        (tmp_path / sampler / "0" / "metrics.json").write_text(json.dumps({
            "sampler": sampler, "num_inference_steps": 8, "guidance_scale": 2.5, "fid": 10.0}))
    monkeypatch.setattr(sys, "argv", ["summarize.py", str(tmp_path)])
    runpy.run_path(script, run_name="__main__")
    with open(tmp_path / "summary.csv") as f:
        assert sorted(row["sampler"] for row in csv.DictReader(f)) == ["ancestral", "maskgit"]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["summarize.py", str(tmp_path / "empty")])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(script, run_name="__main__")
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error == f"error: no metrics.json under {tmp_path / 'empty'}: run sample.py with eval.metrics=[...] first\n"


def test_runs_that_differ_only_in_sampler_options_stay_apart(setup, tmp_path):
    for order in ("confidence", "halton"):
        run_sample(setup, tmp_path / order, "eval.metrics=[shapes]", "sampler=maskgit",
                   f"sampler.algorithm.order={order}")
        recorded = json.loads((tmp_path / order / "metrics.json").read_text())
        assert recorded["sampler"] == "maskgit"
        assert recorded["sampler_options"] == f"float64_draws=False order={order} temperature=4.5"
        assert (recorded["guidance_schedule"], recorded["truncation_rate"]) == ("linear", 0.9)  # maskgit's own
    summarize(tmp_path)
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sampler_options"] for r in rows] == ["float64_draws=False order=confidence temperature=4.5",
                                                "float64_draws=False order=halton temperature=4.5"]
    from vqdiffusion.eval.summary import _variant

    # the plots' lines name the option that differs, not those the runs share
    assert [_variant(r, rows) for r in rows] == ["maskgit order=confidence", "maskgit order=halton"]
    assert _variant({"sampler": "ancestral"}, [{"sampler": "ancestral"}]) == "ancestral"


def test_a_guidance_schedule_is_recorded_and_keeps_its_runs_apart(setup, tmp_path):
    for schedule in ("constant", "linear"):
        run_sample(setup, tmp_path / schedule, "eval.metrics=[shapes]", f"guidance_schedule={schedule}")
    constant, linear = (json.loads((tmp_path / s / "metrics.json").read_text()) for s in ("constant", "linear"))
    assert "guidance_schedule" not in constant and linear["guidance_schedule"] == "linear"
    images = [np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / s).glob("0*.png"))])
              for s in ("constant", "linear")]
    assert images[0].shape[0] == 12 and not np.array_equal(*images)  # the same seeds, guided otherwise
    summarize(tmp_path)
    from vqdiffusion.eval.summary import _variant

    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(_variant(r, rows) for r in rows) == ["ancestral guidance constant", "ancestral guidance linear"]


def test_multirun_over_steps_ends_with_the_summary(setup, tmp_path):
    """`python sample.py -m ... sampler.num_inference_steps=2,4` tabulates and plots in one command."""
    command = [sys.executable, "sample.py", "-m", f"checkpoint={setup / 'pipe'}", "prompt=a red circle", "n=2",
               "eval.metrics=[shapes]", "sampler.num_inference_steps=2,4", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "summary.csv") as f:
        assert [r["num_inference_steps"] for r in csv.DictReader(f)] == ["2", "4"]
    assert (tmp_path / "shapes_faithfulness_vs_steps.png").is_file()


def test_two_processes_draw_the_same_images_and_metrics_as_one(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo): images split by index, torchmetrics gathers the states."""
    common = [f"checkpoint={setup / 'pipe'}", "prompt=[a red circle,a blue square]", "n=5", "batch_size=3",
              "sampler.num_inference_steps=3", "data=shapes", "data.train.size=16", "device=cpu",
              "eval.metrics=[fid,kid,shapes]", f"eval.backend={setup / 'extractor.pt'}",
              f"eval.cache_dir={tmp_path / 'cache'}", "eval.kid_subset_size=4"]
    runs = {1: [sys.executable, "sample.py"],
            2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "sample.py"]}
    for world, launcher in runs.items():
        done = subprocess.run([*launcher, *common, f"output_dir={tmp_path / str(world)}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / w / "metrics.json").read_text()) for w in ("1", "2"))
    assert two["world_size"] == 2 and two["num_generated"] == 10 and two["num_real"] == 10
    assert two["shapes_faithfulness"] == one["shapes_faithfulness"]
    for key in ("fid", "kid"):  # float32 features of other batch compositions: equal to ~1e-7, and
        assert two[key] == pytest.approx(one[key], rel=1e-3)  # a 10-image FID's matrix root amplifies that
    for i in range(10):
        a, b = (np.asarray(Image.open(tmp_path / w / f"{i:06d}.png")) for w in ("1", "2"))
        assert np.array_equal(a, b)


def test_an_interrupted_evaluation_run_ends_with_the_same_metrics(setup, tmp_path):
    full, _ = run_sample(setup, tmp_path / "full", "eval.metrics=[fid,kid]")
    expected = json.loads((full / "metrics.json").read_text())
    for i in range(3, 12):  # a run killed after its first 3 images
        (full / f"{i:06d}.png").unlink()
    (full / "metrics.json").unlink()
    resumed, _ = run_sample(setup, tmp_path / "full", "eval.metrics=[fid,kid]")
    got = json.loads((resumed / "metrics.json").read_text())
    assert (got["fid"], got["kid"], got["num_generated"]) == (expected["fid"], expected["kid"], 12)


@pytest.fixture(scope="module")
def tiny_clip_pair(tmp_path_factory):
    """A random CLIPModel (text + vision) with its CLIPProcessor, saved like a hub folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vqdiffusion.tiny import tiny_clip

    text, tokenizer = tiny_clip()
    config = CLIPConfig(text_config=text.config.to_dict(), projection_dim=16, vision_config=dict(
        image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip_pair")
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_equals_the_formula_on_the_models_own_embeddings(setup, tmp_path, tiny_clip_pair):
    from transformers import CLIPModel, CLIPProcessor

    out, _ = run_sample(setup, tmp_path, "eval.metrics=[clip]", f"eval.clip_model={tiny_clip_pair}")
    got = json.loads((out / "metrics.json").read_text())["clip_score"]
    model, processor = CLIPModel.from_pretrained(tiny_clip_pair).eval(), CLIPProcessor.from_pretrained(tiny_clip_pair)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    images = [Image.open(out / f"{r['index']:06d}.png").convert("RGB") for r in records]
    inputs = processor(text=[r["prompt"] for r in records], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        text = model.text_projection(model.text_model(input_ids=inputs["input_ids"],
                                                      attention_mask=inputs["attention_mask"]).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert got == pytest.approx(float((100 * cosine.clamp_min(0)).mean()), rel=1e-4)


def test_clip_model_that_cannot_load_is_named(setup, tmp_path):
    with pytest.raises(RuntimeError, match="eval.clip_model='/no/clip' cannot be loaded"):
        run_sample(setup, tmp_path, "eval.metrics=[clip]", "eval.clip_model=/no/clip")
    with pytest.raises(ValueError, match="needs eval.clip_model="):
        run_sample(setup, tmp_path, "eval.metrics=[clip]")


def test_prompts_from_a_split_are_its_captions_in_order(setup, tmp_path):
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[
            f"checkpoint={setup / 'pipe'}", "n=1", "sampler.num_inference_steps=2", "data=shapes",
            "data.train.size=16", "prompts_from=val", "prompts_count=5", f"output_dir={tmp_path}"])
        bad = compose("sample", overrides=[f"checkpoint={setup / 'pipe'}", "prompts_from=val",
                                           f"output_dir={tmp_path / 'bad'}"])
    out = sample(cfg)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    dataset = instantiate(cfg.data.val)
    assert [r["prompt"] for r in records] == [dataset[i]["caption"] for i in range(5)]
    with pytest.raises(ValueError, match="add data=<name>"):
        sample(bad)


def test_prompts_from_gives_a_class_model_every_class(tmp_path):
    from vqdiffusion.tasks.sampling import job_items

    pipe = tiny_pipeline("class")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=["checkpoint=x", "n=2", "prompts_from=val"])
    labels = [item["class_label"] for item in job_items(cfg, pipe)]
    classes = pipe.transformer.config.num_classes
    assert labels == [c for c in range(classes) for _ in range(2)]
