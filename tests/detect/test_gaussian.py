"""The Gaussian denoiser of held-out data and the residual ratio it calibrates."""

import numpy as np
import pytest
import torch

from diffmem.detect.detector import image_keys
from diffmem.detect.gaussian import GaussianDenoiser, fit_gaussian, residual_ratio
from diffmem.detect.labelfree import LabelFreeDetector
from diffmem.errors import DiffmemError
from tests.helpers import uniform_images as _images


def _dense_z0(z, z_t, a, b):
    """E[z | z_t] by the textbook formula μ + aΣ(a²Σ + b²I)⁻¹(z_t − aμ), with the D × D sample covariance."""
    flat = z.flatten(1).double()
    mu, cov = flat.mean(0), torch.cov(flat.T)
    gain = a * cov @ torch.linalg.inv(a ** 2 * cov + b ** 2 * torch.eye(len(cov), dtype=cov.dtype))
    return (mu + (z_t.flatten(1).double() - a * mu) @ gain.T).view(z_t.shape)


@pytest.mark.parametrize("n", [40, 6])                  # more references than dimensions, and fewer
def test_the_posterior_mean_is_the_dense_formulas_without_a_dense_matrix(n):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, 3, 2, generator=g) * torch.linspace(0.2, 2.0, 12).view(1, 2, 3, 2) + 0.5   # D = 12
    z_t = torch.randn(5, 2, 3, 2, generator=g)
    den = GaussianDenoiser().fit(z)
    assert den.components_.shape[0] == min(n - 1, 12)
    np.testing.assert_allclose(den.predict_z0(z_t, 0.8, 0.6).double(), _dense_z0(z, z_t, 0.8, 0.6), atol=1e-5)
    eps = den.predict_eps(z_t, 0.8, 0.6)
    np.testing.assert_allclose(z_t, 0.8 * den.predict_z0(z_t, 0.8, 0.6) + 0.6 * eps, atol=1e-5)


def test_on_gaussian_data_it_beats_any_other_shrinkage():
    """The posterior mean is the least-squares denoiser of Gaussian data: scaling its shrinkage either way
    makes the error grow."""
    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.1, 3.0, 16)
    z = torch.randn(4000, 16, generator=g) * scale
    den = GaussianDenoiser().fit(z[:2000])
    clean, eps = z[2000:], torch.randn(2000, 16, generator=g)
    z_t = 0.9 * clean + 0.5 * eps
    err = lambda d: (d.predict_z0(z_t, 0.9, 0.5) - clean).pow(2).sum(1).mean()   # noqa: E731
    best = err(den)
    for f in (0.8, 1.25):
        other = GaussianDenoiser().fit(z[:2000])
        other.variances_ = den.variances_ * f
        assert err(other) > best


def test_the_residual_ratio_is_the_detectors_and_does_not_depend_on_the_batch(adapter):
    ref, x = _images(20, 0), _images(7, 1)
    gauss = fit_gaussian(adapter, ref)
    keys = image_keys(x)
    one = residual_ratio(adapter, gauss, x, keys, 92, draws=3, seed=2, batch_size=256)
    np.testing.assert_allclose(residual_ratio(adapter, gauss, x, keys, 92, 3, 2, batch_size=2), one, rtol=1e-5)
    assert np.isfinite(one).all() and one.shape == (7,)
    assert not np.allclose(residual_ratio(adapter, gauss, x, keys, 92, 1, 2), one)        # more draws, other value
    det = LabelFreeDetector(adapter, combine="residual_ratio", seed=2, draws=3).fit(ref)
    np.testing.assert_allclose(det.score(x), one, rtol=1e-6)
    assert "Gaussian denoiser at t = 92" in det.describe() and det.t_ == 92
    with pytest.raises(DiffmemError, match="draws=0"):
        residual_ratio(adapter, gauss, x, keys, 92, 0, 2)
    with pytest.raises(DiffmemError, match="call fit"):
        GaussianDenoiser().predict_z0(x, 1.0, 1.0)
