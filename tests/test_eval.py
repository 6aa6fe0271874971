"""FID/KID against direct numpy/scipy computations, feature backends and the reference cache."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from vqdiffusion.eval import (
    DistributionMetrics,
    TorchScriptInception,
    cache_key,
    cached_features,
    extract_features,
    load_feature_extractor,
)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 over the whole sets."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


class TinyExtractor(nn.Module):
    """A fixed random stand-in for Inception: uint8 images -> 8 pooled conv features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, images):
        return torch.tanh(self.conv(images.float() / 127.5 - 1)).mean((2, 3))


def features(seed: int, n: int = 300, d: int = 8, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    return torch.randn(n, d, generator=g) @ (torch.eye(d) + mix) + shift


def test_fid_and_kid_equal_direct_computations():
    real, fake = features(0), features(1, shift=0.3)
    metrics = DistributionMetrics(8, kid_subsets=3, kid_subset_size=10_000)
    for chunk in real.split(64):  # streaming in batches gives the full-set statistics
        metrics.update(chunk, real=True)
    metrics.update(fake, real=False)
    result = metrics.compute()
    assert result["fid"] == pytest.approx(scipy_fid(real.double().numpy(), fake.double().numpy()), rel=1e-5)
    # subsets capped at the set size are the whole (permuted) sets: KID is exactly the full MMD
    assert result["kid_subset_size"] == 300
    assert result["kid"] == pytest.approx(numpy_kid(real.double().numpy(), fake.double().numpy()), rel=1e-6)
    assert result["kid_std"] == pytest.approx(0.0, abs=1e-12)
    assert (result["num_real"], result["num_generated"]) == (300, 300)


def test_a_set_against_itself_is_zero_and_a_shift_is_not():
    real = features(0)
    same = DistributionMetrics(8, kid_subsets=5, kid_subset_size=100)
    same.update(real, real=True)
    same.update(real, real=False)
    shifted = DistributionMetrics(8, kid_subsets=5, kid_subset_size=100)
    shifted.update(real, real=True)
    shifted.update(real + 1.0, real=False)  # the mean moves by 1 in each of 8 dims: FID = 8
    assert same.compute()["fid"] == pytest.approx(0.0, abs=1e-6)
    assert shifted.compute()["fid"] == pytest.approx(8.0, rel=1e-5)


def test_kid_is_reproducible_for_a_seed():
    def kid(seed):
        m = DistributionMetrics(8, kid_subsets=4, kid_subset_size=50, seed=seed)
        m.update(features(0), real=True)
        m.update(features(1, shift=0.2), real=False)
        return m.compute()["kid"]

    assert kid(3) == kid(3)
    assert kid(3) != kid(4)


def test_wrong_feature_width_is_named():
    with pytest.raises(ValueError, match=r"expected \(N, 8\) features, got shape \(5, 3\)"):
        DistributionMetrics(8).update(torch.zeros(5, 3), real=True)


def test_reference_features_are_computed_once_and_cached(tmp_path):
    calls = []
    images = [torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for _ in range(3)]

    def compute():
        calls.append(1)
        return extract_features(TinyExtractor(), images, progress=False)

    path = tmp_path / f"{cache_key(dataset='x', split='test', resolution=16, count=12, backend='tiny')}.pt"
    first = cached_features(path, compute)
    second = cached_features(path, compute)
    assert len(calls) == 1 and first.shape == (12, 8)
    assert torch.equal(first, second)
    assert path.name == "dataset=x-split=test-resolution=16-count=12-backend=tiny.pt"


class RecordingInception(nn.Module):
    """A scripted stand-in with default_1.pt's contract: records what it was given."""

    def forward(self, x):
        return torch.stack([x.amin((1, 2, 3)), x.amax((1, 2, 3)), torch.full_like(x[:, 0, 0, 0], x.shape[-1])], 1)


def test_torchscript_backend_feeds_tensorflow_range_at_299(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(RecordingInception()).save(str(path))
    extractor = load_feature_extractor(str(path))
    assert isinstance(extractor, TorchScriptInception)
    images = torch.zeros(2, 3, 28, 28, dtype=torch.uint8)
    images[1] = 255
    out = extractor(images)
    assert float(out[0, 0]) == -1 and float(out[1, 1]) == pytest.approx(1 - 1 / 128)  # uint8 / 128 - 1
    assert torch.all(out[:, 2] == 299)  # resized to Inception's input size


def test_backend_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown feature backend 'inceptoin'"):
        load_feature_extractor("inceptoin")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_feature_extractor(str(tmp_path / "missing.pt"))
    path = tmp_path / "inception.pt"
    torch.jit.script(RecordingInception()).save(str(path))
    with pytest.raises(TypeError, match="uint8"):
        load_feature_extractor(str(path))(torch.zeros(1, 3, 8, 8))
