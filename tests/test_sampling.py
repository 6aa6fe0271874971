"""sample.py: files per global index, resumable, seeds independent of interruptions."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from vqdiffusion.tasks import sample
from vqdiffusion.tiny import tiny_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    tiny_pipeline("text").save_pretrained(folder)
    return folder


def compose_sample(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=overrides)


def test_writes_indexed_images_and_resumes_identically(checkpoint, tmp_path):
    args = [f"checkpoint={checkpoint}", "prompt=a red circle", "n=3", "sampler.num_inference_steps=3"]
    full = sample(compose_sample([*args, f"output_dir={tmp_path / 'full'}"]))
    names = sorted(p.name for p in full.glob("0*.png"))
    assert names == ["000000.png", "000001.png", "000002.png"]
    records = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and records[0]["prompt"] == "a red circle"
    assert (full / "grid.png").exists() and (full / "config.yaml").exists()

    partial = tmp_path / "partial"
    sample(compose_sample([*args, "n=1", f"output_dir={partial}"]))  # an "interrupted" run: 1 of 3
    before = (partial / "000000.png").stat().st_mtime_ns
    sample(compose_sample([*args, f"output_dir={partial}"]))
    assert (partial / "000000.png").stat().st_mtime_ns == before  # skipped, not redrawn
    for name in names:
        assert list(Image.open(full / name).getdata()) == list(Image.open(partial / name).getdata())


def test_batch_size_does_not_change_the_images(checkpoint, tmp_path):
    """Each image has its own generator: batches of 1 and of 4 (mixed prompts) give the same files."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = [f"checkpoint={checkpoint}", f"prompts_file={prompts}", "n=3", "sampler.num_inference_steps=3"]
    one = sample(compose_sample([*args, "batch_size=1", f"output_dir={tmp_path / 'one'}"]))
    four = sample(compose_sample([*args, "batch_size=4", f"output_dir={tmp_path / 'four'}"]))
    names = sorted(p.name for p in one.glob("0*.png"))
    assert len(names) == 6
    for name in names:
        assert list(Image.open(one / name).getdata()) == list(Image.open(four / name).getdata())


@pytest.mark.parametrize("overrides,error,message", [
    (["checkpoint=/no/such/dir/at/all", "prompt=x"], FileNotFoundError, "does not exist"),
    (["prompt=null"], ValueError, "set prompt="),
    (["n=0", "prompt=x"], ValueError, "n must be >= 1, got 0"),
    (["batch_size=0", "prompt=x"], ValueError, "batch_size must be >= 1, got 0"),
])
def test_bad_sampling_inputs(checkpoint, tmp_path, overrides, error, message):
    base = [f"checkpoint={checkpoint}", f"output_dir={tmp_path}"]
    with pytest.raises(error, match=message):
        sample(compose_sample([*base, *overrides]))


def test_empty_prompts_file(checkpoint, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        sample(compose_sample([f"checkpoint={checkpoint}", f"prompts_file={empty}", f"output_dir={tmp_path}"]))
