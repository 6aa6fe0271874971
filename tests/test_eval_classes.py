"""Inception Score, class accuracy with a domain classifier, FID from cached sums, protocol presets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import Dataset

from vqdiffusion.eval.class_metrics import ClassAccuracy, InceptionScore, inception_score
from vqdiffusion.eval.classifier import (
    ClassifierInfo,
    SmallClassifier,
    UInt8Classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from vqdiffusion.eval.distribution import DistributionMetrics, feature_statistics
from vqdiffusion.eval.features import load_inception_logits
from vqdiffusion.tasks import sample
from vqdiffusion.tiny import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]


def numpy_is(logits: np.ndarray, splits: int) -> list[float]:
    """IS per split, straight from the definition (the splits are consecutive rows)."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(0)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(marginal)), 1))))
    return scores


def test_inception_score_equals_the_definition_and_its_bounds():
    logits = torch.randn(60, 7, generator=torch.Generator().manual_seed(0)) * 3
    order = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    expected = numpy_is(logits[order].double().numpy(), 3)
    mean, std = inception_score(logits, splits=3, seed=5)
    assert mean == pytest.approx(np.mean(expected), rel=1e-9) and std == pytest.approx(np.std(expected), rel=1e-9)
    # one class predicted for everything: 1; confident and balanced over C classes: C
    assert inception_score(torch.zeros(20, 5).index_fill_(1, torch.tensor([2]), 50.0), 2)[0] == pytest.approx(1.0)
    confident = torch.full((40, 4), -50.0)
    confident[torch.arange(40), torch.arange(40) % 4] = 50.0
    assert inception_score(confident, 1)[0] == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(torch.zeros(5, 3), splits=10)


def test_streaming_metrics_match_their_one_shot_values():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    metric = InceptionScore(splits=5, seed=0)
    for part in logits.split(13):
        metric.update(part)
    assert metric.compute()["mean"] == pytest.approx(inception_score(logits, 5, 0)[0], rel=1e-6)

    accuracy = ClassAccuracy(3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0])
    accuracy.update(torch.nn.functional.one_hot(predicted, 3).float(), labels)
    value = accuracy.compute()
    assert value["accuracy"] == pytest.approx(3 / 6)
    assert value["per_class"] == pytest.approx([0.5, 2 / 3, 0.0])
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 2\]"):
        accuracy.update(torch.zeros(1, 3), torch.tensor([3]))


def test_fid_from_cached_sums_equals_fid_from_features():
    generator = torch.Generator().manual_seed(2)
    real, fake = torch.randn(40, 6, generator=generator), torch.randn(30, 6, generator=generator) + 0.3
    from_features = DistributionMetrics(6, kid=False)
    from_features.update(real, real=True)
    from_features.update(fake, real=False)
    from_sums = DistributionMetrics(6, kid=False)
    statistics = feature_statistics(torch.nn.Identity(), real.split(7), progress=False)
    assert int(statistics["count"]) == 40
    from_sums.add_statistics(statistics)
    from_sums.update(fake, real=False)
    expected = from_features.compute()["fid"]
    assert from_sums.compute()["fid"] == pytest.approx(expected, rel=1e-9)
    both_sums = DistributionMetrics(6, kid=False)
    both_sums.add_statistics(statistics, real=True)
    both_sums.add_statistics(feature_statistics(torch.nn.Identity(), fake.split(4), progress=False), real=False)
    assert both_sums.compute()["fid"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="KID needs the features themselves"):
        DistributionMetrics(6).add_statistics(statistics)


def test_sums_added_after_a_compute_count_and_raise_no_warning():
    import warnings

    generator = torch.Generator().manual_seed(3)
    real, fake = torch.randn(40, 6, generator=generator), torch.randn(60, 6, generator=generator) + 0.3
    first, second = (feature_statistics(torch.nn.Identity(), part.split(10), progress=False)
                     for part in fake.split(30))
    metrics = DistributionMetrics(6, kid=False)
    metrics.add_statistics(feature_statistics(torch.nn.Identity(), real.split(10), progress=False))
    metrics.add_statistics(first, real=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' "compute before update" warning
        half = metrics.compute()
        metrics.add_statistics(second, real=False)
        whole = metrics.compute()
    reference = DistributionMetrics(6, kid=False)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert whole["num_generated"] == 60 and half["num_generated"] == 30
    assert whole["fid"] == pytest.approx(reference.compute()["fid"], rel=1e-9) and whole["fid"] != half["fid"]


def test_the_fid_helper_backend_has_no_head_for_the_inception_score():
    with pytest.raises(ValueError, match="eval.backend=torch-fidelity"):
        load_inception_logits("fid-helper")


class Brightness(Dataset):
    """Two classes a classifier must separate: dark and bright noisy images."""

    class_names = ("dark", "bright")

    def __len__(self):
        return 256

    def __getitem__(self, index):
        label = index % 2
        generator = torch.Generator().manual_seed(index)
        image = (torch.rand(3, 12, 12, generator=generator) * 0.6 + 0.4 * label) * 2 - 1
        return {"image": image, "label": label}


def test_classifier_trains_saves_and_loads_with_its_description(tmp_path):
    network, val_accuracy = train_classifier(Brightness(), Brightness(), 2, epochs=2, batch_size=32, lr=1e-2,
                                             width=4, progress=False)
    assert val_accuracy > 0.95
    path = tmp_path / "c.pt"
    save_classifier(network, ClassifierInfo(["dark", "bright"], 12, val_accuracy, "Brightness"), path)
    loaded, info = load_classifier(path)
    assert info.class_names == ["dark", "bright"] and info.size == 12 and info.val_accuracy == val_accuracy
    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)  # another size: resized inside
    with torch.no_grad():
        assert torch.allclose(loaded(images), UInt8Classifier(network, 12)(images), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="train one with"):
        load_classifier(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a TorchScript classifier"):
        load_classifier(tmp_path / "junk.pt")


def run_class_sample(root, out, *extra):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[f"checkpoint={root / 'pipe'}", "class_labels=[0,1,2]", "n=4",
                                           "batch_size=5", "sampler.num_inference_steps=3", "seed=0",
                                           f"output_dir={out}", *extra])
    return sample(cfg)


def test_class_accuracy_and_classifier_is_of_a_sample_folder(tmp_path):
    tiny_pipeline("class").save_pretrained(tmp_path / "pipe")
    torch.manual_seed(0)
    network = SmallClassifier(3, width=4).eval()
    save_classifier(network, ClassifierInfo(["a", "b", "c"], 16), tmp_path / "c.pt")
    out = run_class_sample(tmp_path, tmp_path / "s", "eval.metrics=[class_accuracy,classifier_is]",
                           f"eval.classifier={tmp_path / 'c.pt'}", "eval.is_splits=2")
    metrics = json.loads((out / "metrics.json").read_text())

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    images = torch.from_numpy(np.stack([np.asarray(Image.open(out / f"{item['index']:06d}.png").convert("RGB"))
                                        for item in lines])).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = UInt8Classifier(network, 16)(images)
    labels = torch.tensor([item["class_label"] for item in lines])
    assert metrics["class_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert metrics["classifier_is"] == pytest.approx(inception_score(logits, 2)[0], rel=1e-5)
    assert len(metrics["class_accuracy_per_class"]) == 3

    with pytest.raises(ValueError, match="need eval.classifier="):
        run_class_sample(tmp_path, tmp_path / "t", "eval.metrics=[class_accuracy]")


def test_protocol_presets_set_the_published_evaluation():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        text = compose("sample", overrides=["checkpoint=x", "protocol=text_to_image_30k"])
        imagenet = compose("sample", overrides=["checkpoint=x", "protocol=imagenet_50k", "n=5"])
    assert (text.prompts_from, text.prompts_count, text.n) == ("val", 30000, 1)
    assert (text.eval.reference_split, text.eval.reference_count, text.eval.protocol) == ("val", 30000,
                                                                                        "text_to_image_30k")
    assert list(text.eval.metrics) == ["fid", "kid"]
    assert (imagenet.prompts_from, imagenet.eval.reference_split, imagenet.eval.reference_count) == (
        "train", "train", "all")
    assert imagenet.n == 5  # the command line still wins over the preset


def test_a_guidance_sweep_plots_fid_against_class_accuracy(tmp_path):
    from vqdiffusion.eval.summary import summarize

    for job, (scale, fid, accuracy) in enumerate([(1.0, 64.0, 0.77), (2.0, 63.0, 0.86), (5.0, 85.0, 0.86)]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(
            {"sampler": "ancestral", "guidance_scale": scale, "fid": fid, "class_accuracy": accuracy}))
    names = {f.name for f in summarize(tmp_path)}
    assert "fid_vs_class_accuracy.png" in names and "class_accuracy_vs_steps.png" not in names


def test_samplers_at_one_guidance_scale_each_are_not_joined_into_a_guidance_curve(tmp_path):
    from vqdiffusion.eval.summary import summarize

    for job, (sampler, scale) in enumerate([("ancestral", 2.0), ("maskgit", 2.5)]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(
            {"sampler": sampler, "num_inference_steps": 16, "guidance_scale": scale, "fid": 5.0 + job,
             "class_accuracy": 0.99}))
    assert "fid_vs_class_accuracy.png" not in {f.name for f in summarize(tmp_path)}


def test_inception_score_of_a_sample_folder_uses_the_backends_head(tmp_path, monkeypatch):
    """eval.metrics=[is]: logits of every PNG from the backend's classifier head, IS over them."""
    import vqdiffusion.eval.features as features

    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(5))

    class StandIn(torch.nn.Module):  # uint8 images -> (N, 5) logits, as torch-fidelity's head
        def forward(self, images):
            return head(images.float() / 255)

    monkeypatch.setattr(features, "load_inception_logits", lambda backend: StandIn())
    tiny_pipeline("class").save_pretrained(tmp_path / "pipe")
    out = run_class_sample(tmp_path, tmp_path / "s", "eval.metrics=[is]", "eval.backend=torch-fidelity",
                           "eval.is_splits=3")
    metrics = json.loads((out / "metrics.json").read_text())
    images = torch.from_numpy(np.stack([np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB"))
                                        for i in range(12)])).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = inception_score(StandIn()(images), splits=3)
    assert metrics["is"] == pytest.approx(expected[0], rel=1e-5) and metrics["is_std"] == pytest.approx(
        expected[1], rel=1e-4, abs=1e-7)
    assert metrics["is_splits"] == 3
