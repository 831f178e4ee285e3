"""The Gaussian denoiser of held-out data, and the residual ratio it calibrates.

The best denoiser that knows only the data's mean and covariance (the linear, Wiener denoiser) is what a
model that generalizes from second-order statistics alone would do. How much better the model denoises
an image than it does measures memorization *relative to the image's difficulty*: a simple image is
easy for both (the plain residual flags it anyway), a training image the weights store is easy for the
model alone (difficulty calibration, as in membership inference, with a reference that needs no
training: Watson et al., ICLR 2022).

``residual_ratio = log(Σ_k ‖ε̂_G − ε_k‖² / Σ_k ‖ε̂ − ε_k‖²)`` over ``draws`` noise draws ε_k at one t,
ε̂_G the Gaussian denoiser's noise prediction from the same z_t, ε̂ the model's (null condition).
Higher = the model knows this image better than its statistics allow = memorized.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffmem.errors import check
from diffmem.estimator import Params
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import forward, generators


class GaussianDenoiser(Params):
    """E[z | z_t] under z ~ N(mean, cov), cov from ``fit(z)`` on held-out model-space images (R, …).

    Fitted: ``mean_`` (D,), ``components_`` (r, D) orthonormal rows, ``variances_`` (r,) — the principal
    axes of the sample covariance (r ≤ min(R − 1, D)); directions the references do not span have zero
    variance, so the denoiser sets them to the mean. Cost: O(r·D) per image, so SD-sized latents
    (D = 16,384) need no D × D matrix. With far fewer references than dimensions those unspanned
    directions dominate the Gaussian's error, and the ratio partly measures the distance from the
    references' span (the zoo's models have D ≤ 784 and 500 references; larger latents are not
    measured)."""

    def __init__(self, rtol: float = 1e-6):
        self.rtol = rtol

    def fit(self, z: torch.Tensor) -> "GaussianDenoiser":
        check(len(z) >= 2, f"GaussianDenoiser: needs >= 2 images, got {len(z)}")
        flat = z.flatten(1).double().cpu()                                            # (R, D)
        self.mean_ = flat.mean(0)                                                    # (D,)
        _, s, vh = torch.linalg.svd(flat - self.mean_, full_matrices=False)          # s (min(R, D),)
        keep = s > self.rtol * s.max().clamp_min(1e-30)
        self.components_, self.variances_ = vh[keep], s[keep] ** 2 / (len(flat) - 1)   # (r, D), (r,)
        return self

    def _z0(self, z_t: torch.Tensor, signal: float, noise: float) -> torch.Tensor:
        """E[z | z_t] flattened (B, D), float64 on the CPU."""
        check(hasattr(self, "mean_"), "GaussianDenoiser: call fit first")
        flat = z_t.flatten(1).double().cpu() - signal * self.mean_                    # (B, D)
        shrink = signal * self.variances_ / (signal ** 2 * self.variances_ + noise ** 2)   # (r,)
        return self.mean_ + ((flat @ self.components_.T) * shrink) @ self.components_   # (B, D)

    def predict_z0(self, z_t: torch.Tensor, signal: float, noise: float) -> torch.Tensor:
        """E[z | z_t] (B, …) for z_t = signal · z + noise · ε, shaped like z_t."""
        return self._z0(z_t, signal, noise).view(z_t.shape).to(z_t)

    def predict_eps(self, z_t: torch.Tensor, signal: float, noise: float) -> torch.Tensor:
        """The noise prediction (z_t − signal · E[z | z_t]) / noise (B, …), computed in float64."""
        eps = (z_t.flatten(1).double().cpu() - signal * self._z0(z_t, signal, noise)) / noise   # (B, D)
        return eps.view(z_t.shape).to(z_t)


@torch.no_grad()
def fit_gaussian(adapter: Adapter, reference: torch.Tensor, batch_size: int = 256) -> GaussianDenoiser:
    """The Gaussian denoiser of reference pixel images (R, C, H, W) in the model's space (latents for
    latent families)."""
    z = torch.cat([adapter.prepare(reference[i:i + batch_size].to(adapter.device, adapter.dtype)).float().cpu()
                   for i in range(0, len(reference), batch_size)])
    return GaussianDenoiser().fit(z)


@torch.no_grad()
def residual_ratio(adapter: Adapter, gauss: GaussianDenoiser, x: torch.Tensor, keys: Sequence[str], t: float,
                   draws: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """The residual ratio (N,) of pixel images x (N, C, H, W) at timestep t over ``draws`` noise draws
    (draw k of image i from its key and k: independent of the batch); the model's side is
    :func:`~diffmem.probe.represent.forward`, the null condition."""
    check(draws >= 1, f"draws={draws}: must be >= 1")
    signal, noise = adapter.signal_scale(t), adapter.noise_std(t)
    out = []
    for i in range(0, len(x), batch_size):
        z = adapter.prepare(x[i:i + batch_size].to(adapter.device, adapter.dtype))      # (B, C', H', W')
        model = gaussian = 0.0
        for k in range(draws):
            f = forward(adapter, None, t, generators(seed, keys[i:i + batch_size], repeat=k), z=z)
            eps = f.eps.float()                                                         # (B, C', H', W')
            model = model + (f.eps_hat.float() - eps).flatten(1).pow(2).sum(1)
            gaussian = gaussian + (gauss.predict_eps(f.z_t.float(), signal, noise) - eps).flatten(1).pow(2).sum(1)
        out.append((gaussian.clamp_min(1e-30).log() - model.clamp_min(1e-30).log()).double().cpu())   # (B,)
    return torch.cat(out).numpy()
