"""sample.py: files per global index, resumable, seeds independent of interruptions."""

import json
from pathlib import Path

import numpy as np
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


def interrupt_after_one_image(monkeypatch):
    """The job stops (as on Ctrl-C) right after writing its first image."""
    import vqdiffusion.tasks.sampling as sampling

    save_png = sampling.save_png

    def save_then_stop(image, path):
        save_png(image, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "save_png", save_then_stop)


def test_writes_indexed_images_and_resumes_identically(checkpoint, tmp_path, monkeypatch):
    args = [f"checkpoint={checkpoint}", "prompt=a red circle", "n=3", "sampler.num_inference_steps=3"]
    full = sample(compose_sample([*args, f"output_dir={tmp_path / 'full'}"]))
    names = sorted(p.name for p in full.glob("0*.png"))
    assert names == ["000000.png", "000001.png", "000002.png"]
    records = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and records[0]["prompt"] == "a red circle"
    assert (full / "grid.png").exists() and (full / "config.yaml").exists()

    partial = tmp_path / "partial"
    interrupt_after_one_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sample(compose_sample([*args, f"output_dir={partial}"]))
    monkeypatch.undo()
    assert sorted(p.name for p in partial.glob("0*.png")) == ["000000.png"]
    before = (partial / "000000.png").stat().st_mtime_ns
    sample(compose_sample([*args, f"output_dir={partial}"]))
    assert (partial / "000000.png").stat().st_mtime_ns == before  # skipped, not redrawn
    for name in names:
        assert np.array_equal(np.asarray(Image.open(full / name)), np.asarray(Image.open(partial / name)))


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
        assert np.array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(four / name)))


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


@pytest.mark.parametrize("change,differs", [
    (["prompt=a blue square"], "items"),
    (["seed=1"], "items"),
    (["guidance_scale=2.0"], "guidance_scale"),
    (["sampler.num_inference_steps=2"], "num_inference_steps"),
    (["sampler=purity"], "sampler"),
])
def test_a_folder_refuses_another_jobs_images_and_fresh_starts_over(checkpoint, tmp_path, change, differs):
    from vqdiffusion.tasks.sample_folder import SampleFolderError

    args = [f"checkpoint={checkpoint}", "prompt=a red circle", "n=2", "sampler.num_inference_steps=3",
            f"output_dir={tmp_path}"]
    sample(compose_sample(args))
    first = json.loads((tmp_path / "fingerprint.json").read_text())
    with pytest.raises(SampleFolderError, match=f"holds images of another job \\({differs}: .* there, .* now"):
        sample(compose_sample([*args, *change]))
    assert json.loads((tmp_path / "fingerprint.json").read_text()) == first  # the folder is left as it was
    sample(compose_sample([*args, *change, "fresh=true"]))
    again = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(again) == 2 and json.loads((tmp_path / "fingerprint.json").read_text()) != first
    sample(compose_sample([*args, *change]))  # the same job again: it resumes (nothing left to draw)


def test_images_without_a_fingerprint_are_not_adopted(checkpoint, tmp_path):
    from vqdiffusion.tasks.sample_folder import SampleFolderError

    Image.new("RGB", (8, 8)).save(tmp_path / "000000.png")
    with pytest.raises(SampleFolderError, match="holds 1 images but no fingerprint.json"):
        sample(compose_sample([f"checkpoint={checkpoint}", "prompt=x", f"output_dir={tmp_path}"]))


def test_a_second_job_cannot_write_a_locked_folder(checkpoint, tmp_path):
    import subprocess
    import sys

    from vqdiffusion.tasks.sample_folder import SampleFolderError, folder_lock

    holder = ("import sys, time; from pathlib import Path; from vqdiffusion.tasks.sample_folder import folder_lock\n"
              "with folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(SampleFolderError, match=r"being written by another sample.py job \(pid \d+\)"):
            sample(compose_sample([f"checkpoint={checkpoint}", "prompt=x", f"output_dir={tmp_path}"]))
    finally:
        process.kill()
        process.wait()
    with folder_lock(tmp_path):  # a killed holder leaves no stale lock
        pass
    assert not list(tmp_path.glob("*.png"))


def test_a_missing_checkpoint_leaves_no_output_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample(compose_sample(["checkpoint=/no/such/model", "prompt=x", f"output_dir={tmp_path / 'out'}"]))
    assert not (tmp_path / "out").exists()


def test_sample_py_reports_a_mistake_in_one_line_and_leaves_no_folder(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, str(CONFIGS.parent / "sample.py"), "checkpoint=/no/such/model", "prompt=x"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: checkpoint '/no/such/model' does not exist")
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("setting, message", [
    ("guidance_schedule=cosine", "guidance_schedule must be one of ('constant', 'linear'), got 'cosine'"),
    ("guidance_scale=-1", "guidance_scale must be a finite number >= 0, got -1"),
    ("truncation_rate=0", "truncation_rate must be in (0, 1], got 0"),
])
def test_a_bad_sampling_setting_stops_the_job_before_its_folder_exists(tmp_path, setting, message):
    folder = tmp_path / "pipe"
    tiny_pipeline("class").save_pretrained(folder)
    with pytest.raises(ValueError) as error:
        sample(compose_sample([f"checkpoint={folder}", "class_labels=[1]", "n=1", setting,
                               f"output_dir={tmp_path / 'out'}"]))
    assert str(error.value) == message and not (tmp_path / "out").exists()


def test_the_class_grid_shows_every_class_of_a_ten_class_job(tmp_path):
    folder = tmp_path / "pipe"
    tiny_pipeline("class").save_pretrained(folder)
    out = sample(compose_sample([f"checkpoint={folder}", "class_labels=[0,1,2,3,4,5,6,7,8,9]", "n=1",
                                 "sampler.num_inference_steps=1", f"output_dir={tmp_path / 'out'}"]))
    tile = Image.open(out / "000000.png").size[0] + 2
    assert Image.open(out / "grid.png").size == (tile + 2, 10 * tile + 2)  # a row for each class


def test_class_jobs_grid_a_row_per_class_and_a_grid_file_per_class(tmp_path):
    import numpy as np

    folder = tmp_path / "pipe"
    tiny_pipeline("class").save_pretrained(folder)
    out = sample(compose_sample([f"checkpoint={folder}", "class_labels=[2,0,1]", "n=3",
                                 "sampler.num_inference_steps=2", f"output_dir={tmp_path / 'out'}"]))
    tile = Image.open(out / "000000.png").size[0] + 2  # an image and the grid's padding
    assert Image.open(out / "grid.png").size == (3 * tile + 2, 3 * tile + 2)  # 3 classes x 3 images
    assert sorted(p.name for p in (out / "class_grids").iterdir()) == [
        "class_0000.png", "class_0001.png", "class_0002.png"]
    # class 0 is the job's second label: images 3, 4, 5, and the second row of grid.png
    grid = np.asarray(Image.open(out / "grid.png"))
    per_class = np.asarray(Image.open(out / "class_grids" / "class_0000.png"))
    for column, index in enumerate((3, 4, 5)):
        image = np.asarray(Image.open(out / f"{index:06d}.png").convert("RGB"))
        size = image.shape[0]
        x = 2 + column * tile
        assert np.array_equal(grid[2 + tile:2 + tile + size, x:x + size], image)
        assert np.array_equal(per_class[2:2 + size, x:x + size], image)


def test_text_jobs_write_a_labelled_row_per_prompt(checkpoint, tmp_path):
    import numpy as np

    out = sample(compose_sample([f"checkpoint={checkpoint}", "prompt=[a red circle,a blue square]", "n=3",
                                 "sampler.num_inference_steps=2", f"output_dir={tmp_path}"]))
    grid = np.asarray(Image.open(out / "prompt_grid.png").convert("RGB"))
    size = Image.open(out / "000000.png").size[0]
    assert grid.shape[0] == 2 * (size + 2) + 2  # two prompts, one row each
    label_width = grid.shape[1] - 3 * (size + 2) - 2
    assert label_width > 40 and grid[:, :label_width].max() > 200  # the prompts, written in white
    # the second row holds images 3, 4, 5 (the second prompt's), in order
    for column, index in enumerate((3, 4, 5)):
        image = np.asarray(Image.open(out / f"{index:06d}.png").convert("RGB"))
        top, left = 2 + size + 2, label_width + column * (size + 2)
        assert np.array_equal(grid[top:top + size, left:left + size], image)


def test_fresh_also_clears_the_grids_of_the_old_images(tmp_path, monkeypatch):
    folder = tmp_path / "pipe"
    tiny_pipeline("class").save_pretrained(folder)
    args = [f"checkpoint={folder}", "n=2", "sampler.num_inference_steps=2", f"output_dir={tmp_path / 'out'}"]
    out = sample(compose_sample([*args, "class_labels=[0,1]"]))
    assert (out / "class_grids" / "class_0001.png").exists()
    interrupt_after_one_image(monkeypatch)  # the new job is cut off after its first image
    with pytest.raises(KeyboardInterrupt):
        sample(compose_sample([*args, "class_labels=[2]", "fresh=true"]))
    assert not (out / "class_grids").exists() and not (out / "grid.png").exists()


def test_jobs_of_one_process_share_a_pipeline_built_the_same_way(checkpoint, tmp_path, monkeypatch):
    """A sweep's jobs (one process) load the model once while checkpoint, dtype and speed settings
    stay; changing one of them, or the checkpoint's files, loads it again. Reuse changes no image."""
    import vqdiffusion.tasks.sampling as sampling

    loads = []
    load = sampling.load_pipeline
    monkeypatch.setattr(sampling, "load_pipeline", lambda *a, **k: loads.append(a) or load(*a, **k))
    sampling.release_pipeline()
    args = [f"checkpoint={checkpoint}", "prompt=a red circle", "n=2"]

    def job(name, *more):
        return sample(compose_sample([*args, *more, f"output_dir={tmp_path / name}"]))

    three = job("three", "sampler.num_inference_steps=3")
    job("five", "sampler.num_inference_steps=5", "guidance_scale=2")
    assert len(loads) == 1
    job("math", "sampler.num_inference_steps=3", "speed.attention=math")
    assert len(loads) == 2
    sampling.release_pipeline()  # as a new process: loaded afresh
    again = job("again", "sampler.num_inference_steps=3")
    assert len(loads) == 3
    sampling.release_pipeline()
    assert sampling._last_pipeline is None
    for name in ("000000.png", "000001.png"):
        assert np.array_equal(np.asarray(Image.open(three / name)), np.asarray(Image.open(again / name)))


def test_a_changed_checkpoint_is_loaded_again(tmp_path):
    import vqdiffusion.tasks.sampling as sampling

    folder = tmp_path / "pipe"
    tiny_pipeline("class").save_pretrained(folder)
    sampling.release_pipeline()
    args = [f"checkpoint={folder}", "class_labels=[1]", "n=2", "sampler.num_inference_steps=3"]
    first = sample(compose_sample([*args, f"output_dir={tmp_path / 'a'}"]))
    tiny_pipeline("class", seed=1).save_pretrained(folder)  # retrained in place: other weights
    second = sample(compose_sample([*args, f"output_dir={tmp_path / 'b'}"]))
    first_image, second_image = (np.asarray(Image.open(run / "000000.png")) for run in (first, second))
    assert not np.array_equal(first_image, second_image)
