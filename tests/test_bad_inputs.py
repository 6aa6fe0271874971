"""Every bad input gets an error that names the value and what was expected."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("text")


def call(pipe, prompt="a red circle", **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "tokens")
    return pipe(prompt, **kwargs)


@pytest.mark.parametrize("prompt,error,message", [
    (42, TypeError, "prompt must be a str or a list of str, got int"),
    (["ok", 3], TypeError, "every prompt must be a str, got int: 3"),
    ([], ValueError, "prompt is an empty list"),
    (None, ValueError, "text-to-image pipeline: pass a prompt"),
])
def test_bad_prompts(pipe, prompt, error, message):
    with pytest.raises(error, match=message):
        call(pipe, prompt)


@pytest.mark.parametrize("kwargs,message", [
    (dict(truncation_rate=0.0), r"truncation_rate must be in \(0, 1\], got 0.0"),
    (dict(truncation_rate=1.5), r"truncation_rate must be in \(0, 1\], got 1.5"),
    (dict(guidance_scale=-1.0), r"guidance_scale must be a finite number >= 0, got -1.0"),
    (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number >= 0, got nan"),
    (dict(guidance_scale=float("inf")), r"guidance_scale must be a finite number >= 0, got inf"),
    (dict(num_inference_steps=True), r"num_inference_steps must be an integer in \[1, 100\], got True"),
    (dict(num_inference_steps=2.0), r"num_inference_steps must be an integer in \[1, 100\], got 2.0"),
    (dict(generator="seed"), r"generator must be a torch.Generator or a list of them .* got str: 'seed'"),
    (dict(latents=[[0] * 16]), r"latents must be a tensor or numpy array of token indices, got list"),
    (dict(sampler="purity", sampler_options={"purity_wieght": 2.0}),
     r"sampler 'purity' has no option \['purity_wieght'\]"),
    (dict(class_labels=[1]), r"text-to-image pipeline: it takes prompts, not class_labels"),
    (dict(num_inference_steps=0), r"num_inference_steps must be an integer in \[1, 100\], got 0"),
    (dict(num_inference_steps=101), r"num_inference_steps must be an integer in \[1, 100\], got 101"),
    (dict(num_images_per_prompt=0), r"num_images_per_prompt must be a positive integer, got 0"),
    (dict(callback_steps=0), r"callback_steps must be a positive integer, got 0"),
    (dict(latents=torch.zeros(2, 16, dtype=torch.long)), r"latents must have shape \(1, 16\).*got \(2, 16\)"),
    (dict(latents=torch.full((1, 16), 16)), r"latents must be integer token indices in \[0, 15\]"),
    (dict(latents=torch.full((1, 16), -1)), r"latents must be integer token indices in \[0, 15\]"),
    (dict(sampler="fast"), r"unknown sampler 'fast'"),
    (dict(output_type="jpeg"), r"output_type must be one of"),
])
def test_bad_arguments(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(pipe, **kwargs)


def test_numpy_counts_and_latents_are_accepted_as_their_torch_equals(pipe):
    generator = torch.Generator().manual_seed(0)
    expected = call(pipe, num_inference_steps=3, latents=torch.full((1, 16), 15), generator=generator).images
    got = call(pipe, num_inference_steps=np.int64(3), latents=np.full((1, 16), 15),
               generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(got, expected)


def test_long_prompt_is_truncated_with_a_warning(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        tokens = call(pipe, "a red circle " * 40).images
    assert tokens.shape == (1, 16)
    assert "exceed the text encoder's 77 tokens" in caplog.text


def test_class_and_unconditional_inputs():
    classes = tiny_pipeline("class")
    assert classes(class_labels=[1, 2], output_type="tokens", num_inference_steps=2).images.shape == (2, 16)
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 9\], got \[3, 10\]"):
        classes(class_labels=[3, 10])
    with pytest.raises(ValueError, match="takes no text"):
        classes("a prompt", class_labels=[1])
    uncond = tiny_pipeline("uncond")
    with pytest.raises(ValueError, match="unconditional: it takes no class_labels"):
        uncond(class_labels=[1])
    assert uncond(batch_size=3, output_type="tokens", num_inference_steps=2).images.shape == (3, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        uncond(batch_size=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_pipeline("text").save_pretrained(folder)
    return folder


def test_folder_missing_a_component(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(FileNotFoundError, match=r"missing component folder\(s\) \['transformer'\]"):
        VQDiffusionPipeline.from_pretrained(broken)
    shutil.copytree(saved, tmp_path / "no_text")
    shutil.rmtree(tmp_path / "no_text" / "tokenizer")
    with pytest.raises(FileNotFoundError, match="missing component folder 'tokenizer'"):
        VQDiffusionPipeline.from_pretrained(tmp_path / "no_text")


def test_checkpoint_that_does_not_match_its_config(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    config_path = broken / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"transformer checkpoint does not match its config.*missing key"):
        VQDiffusionPipeline.from_pretrained(broken)


def test_not_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a pipeline folder nor a hub id"):
        VQDiffusionPipeline.from_pretrained(tmp_path / "nowhere" / "at" / "all")


def test_saved_pipeline_round_trips(saved):
    original = tiny_pipeline("text")
    loaded = VQDiffusionPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    a = original("a red circle", output_type="np", num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    b = loaded("a red circle", output_type="np", num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert (a.images == b.images).all()


def test_class_conditional_pipeline_saves_in_its_own_class_and_round_trips(tmp_path):
    pipe = tiny_pipeline("class")
    pipe.save_pretrained(tmp_path / "cls")
    config = json.loads((tmp_path / "cls" / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "VQDiffusionTransformer" and config["num_classes"] == 10
    loaded = VQDiffusionPipeline.from_pretrained(tmp_path / "cls")
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[4, 7], num_inference_steps=4, output_type="tokens")
    a = pipe(generator=torch.Generator().manual_seed(1), **kwargs).images
    b = loaded(generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.equal(a, b)


def test_editing_from_an_image_keeps_the_kept_tokens(pipe):
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype("uint8"))
    codes = pipe.encode_images(image)
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, :8] = True
    out = pipe("a red circle", edit_image=image, keep_mask=keep, edit_start_step=50, num_inference_steps=5,
               output_type="tokens", sampler_options={"purity_weight": 2.0}, sampler="purity").images
    assert torch.equal(out[0, :8], codes[0, :8])
    with pytest.raises(ValueError, match=r"give a \(2, 2\) token grid; this model needs 8x8 pixels"):
        pipe.encode_images(torch.rand(1, 3, 4, 4))
