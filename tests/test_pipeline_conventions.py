"""diffusers' pipeline conventions: progress bar settings, callback arguments, output types,
the model card and ``push_to_hub`` (against a local stand-in for the hub)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqdiffusion import VQDiffusionPipeline
from vqdiffusion.tiny import tiny_pipeline


def test_progress_bar_config_takes_tqdm_arguments_and_names_the_others(capsys):
    pipe = tiny_pipeline("uncond")
    pipe.set_progress_bar_config(disable=False, desc="drawing", ascii=True)
    pipe(batch_size=1, num_inference_steps=3)
    assert "drawing" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=1, num_inference_steps=3)
    assert "drawing" not in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\['colour_of_bar'\], which are not tqdm arguments"):
        pipe.set_progress_bar_config(colour_of_bar="red")


def test_the_callback_gets_the_timestep_as_a_zero_dim_tensor_as_diffusers_passes_it():
    seen = []
    tiny_pipeline("uncond")(batch_size=2, num_inference_steps=4,
                            callback=lambda step, timestep, tokens: seen.append((step, timestep, tokens.shape)))
    assert [step for step, _, _ in seen] == [0, 1, 2, 3]
    assert all(isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype == torch.long for _, t, _ in seen)
    assert [int(t) for _, t, _ in seen] == [99, 74, 49, 24]
    assert all(shape == (2, 16) for _, _, shape in seen)


def test_output_types():
    pipe = tiny_pipeline("uncond")

    def draw(output_type):
        return pipe(batch_size=2, num_inference_steps=3, output_type=output_type,
                    generator=torch.Generator().manual_seed(0)).images

    tokens, latent, pt, array = draw("tokens"), draw("latent"), draw("pt"), draw("np")
    assert tokens.shape == (2, 16) and torch.equal(tokens, latent)
    assert pt.shape == (2, 3, 8, 8) and isinstance(array, np.ndarray) and array.shape == (2, 8, 8, 3)
    assert np.array_equal(pt.permute(0, 2, 3, 1).numpy(), array)
    with pytest.raises(ValueError, match="output_type must be one of"):
        draw("jpeg")


def test_saved_folders_carry_a_model_card(tmp_path):
    tiny_pipeline("class").save_pretrained(tmp_path / "model", model_card={
        "training_data": "Fashion-MNIST train split", "base_model": "someone/base",
        "sampler": {"num_inference_steps": 25, "guidance_scale": 2.0}, "metrics": {"fid": 9.5, "eval": {"kid": 0.001}}})
    card = (tmp_path / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: \"vqdiffusion\"\npipeline_tag: \"unconditional-image-generation\"")
    assert "base_model: \"someone/base\"" in card and "| training data | Fashion-MNIST train split |" in card
    assert "| images | 8×8 pixels, 4×4 tokens of a 15-code VQ-VAE (f2) |" in card
    assert "pipe(class_labels=[0, 1, 2], num_inference_steps=25, guidance_scale=2.0, truncation_rate=1.0)" in card
    assert "| fid | 9.5 |" in card and "| eval.kid | 0.001 |" in card
    text_card = tmp_path / "text"
    tiny_pipeline("text").save_pretrained(text_card)
    assert "pipeline_tag: \"text-to-image\"" in (text_card / "README.md").read_text()


class LocalHub:
    """Stands in for ``huggingface_hub.HfApi``: repositories are folders under ``root``."""

    root: Path
    calls: list

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok, self.token))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message, create_pr=False):
        self.calls.append(("upload_folder", repo_id, commit_message, create_pr))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"commit of {repo_id}"


def test_push_to_hub_uploads_a_folder_that_loads_back(tmp_path, monkeypatch):
    import huggingface_hub

    LocalHub.root, LocalHub.calls = tmp_path / "hub", []
    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    pipe = tiny_pipeline("text")
    result = pipe.push_to_hub("me/tiny-vq", token="secret", private=True, model_card={"training_data": "shapes"})
    assert result == "commit of me/tiny-vq"
    assert LocalHub.calls == [("create_repo", "me/tiny-vq", True, True, "secret"),
                              ("upload_folder", "me/tiny-vq", "Upload VQ-Diffusion pipeline", False)]
    uploaded = LocalHub.root / "me/tiny-vq"
    assert "| training data | shapes |" in (uploaded / "README.md").read_text()
    again = VQDiffusionPipeline.from_pretrained(uploaded)
    again.set_progress_bar_config(disable=True)

    def draw(p):
        return p("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(1),
                 output_type="tokens").images

    assert torch.equal(draw(again), draw(pipe))
