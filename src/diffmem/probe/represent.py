"""Noise an image, run the denoiser once, capture layers, pool, and compute spikiness statistics."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from diffmem.errors import DiffmemError
from diffmem.probe.adapters import Adapter, gaussian_like
from diffmem.probe.capture import Capture
from diffmem.probe.pooling import pool as pool_fn
from diffmem.stats import all_stats


def noise_seed(seed: int, key: str, repeat: int = 0) -> int:
    """A 63-bit seed for one image's noise: a function of (seed, image key, repeat) only, so scores
    do not depend on batch composition, order, resumption or the engine."""
    h = hashlib.sha256(f"{seed}:{key}:{repeat}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generators(seed: int, keys: Sequence[str], repeat: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(noise_seed(seed, k, repeat)) for k in keys]


@dataclass
class Forward:
    """One denoiser call on images noised at t: ``eps`` the noise drawn (B, C', H', W'), ``eps_hat`` the
    noise prediction (None after an early exit), ``activations`` {layer: raw output} of the captured layers,
    ``z_t`` the noised input (B, C', H', W') the denoiser saw."""

    eps: torch.Tensor
    eps_hat: torch.Tensor | None
    activations: dict[str, torch.Tensor]
    z_t: torch.Tensor | None = None

    def pooled(self, pool: str) -> dict[str, torch.Tensor]:
        """{layer: (B, C)} float32 pooled activations, on the CPU."""
        return {name: pool_fn(act.float(), pool).cpu() for name, act in self.activations.items()}


@torch.no_grad()
def forward(adapter: Adapter, x: torch.Tensor | None, t: float,
            noise: Sequence[torch.Generator] | torch.Tensor | None = None, layers: Sequence[str] = (), cond=None,
            early_exit: bool = False, z: torch.Tensor | None = None) -> Forward:
    """THE primitive every score, detector, monitor and concept vector calls: pixel images x
    (B, C, H, W) → model space (``prepare``, or the given ``z``), noise ε drawn from ``noise`` (one
    generator per image) or given as a tensor (B, C', H', W'), at timestep t, one denoiser call with
    ``cond`` (default: the null condition), the ``layers`` captured (hooks always removed);
    ``early_exit`` stops after the last captured layer."""
    adapter.validate_t(t)
    z = adapter.prepare(x) if z is None else z                                   # (B, C', H', W')
    eps = noise if isinstance(noise, torch.Tensor) else gaussian_like(z, noise)  # (B, C', H', W')
    z_t = adapter.add_noise(z, t, eps)                                           # (B, C', H', W')
    cond = adapter.null_condition(z.shape[0]) if cond is None else cond
    eps_hat = None
    with Capture(adapter.denoiser, list(layers), adapter.call_counts, early_exit=early_exit and bool(layers)) as cap:
        eps_hat = adapter.predict_eps(z_t, t, cond)
    return Forward(eps, eps_hat, cap.activations, z_t)


def capture_layers(adapter: Adapter, x: torch.Tensor, layers: Sequence[str], t: float,
                   gens: Sequence[torch.Generator], cond=None, early_exit: bool = True,
                   z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Raw activations of ``layers`` for pixel images x (B, C, H, W) noised at t (:func:`forward`)."""
    return forward(adapter, x, t, gens, layers, cond, early_exit, z).activations


def represent(adapter: Adapter, x: torch.Tensor, layers: Sequence[str], t: float, pool: str,
              gens: Sequence[torch.Generator], cond=None, early_exit: bool = True) -> dict[str, torch.Tensor]:
    """Pooled vectors {layer: (B, C')} of pixel images x (B, C, H, W)."""
    out = {}
    for name, v in forward(adapter, x, t, gens, layers, cond, early_exit).pooled(pool).items():
        if not bool(torch.isfinite(v).all()):
            raise DiffmemError(f"layer {name!r}: NaN or infinite activations")
        out[name] = v
    return out


def spikiness(adapter: Adapter, x: torch.Tensor, keys: Sequence[str], layer: str | None = None,
              t: float | None = None, pool: str | None = None, seed: int = 0, repeats: int = 1
              ) -> dict[str, torch.Tensor]:
    """Every statistic (B,) of the pooled ``layer`` of images x (null condition), averaged over
    ``repeats`` noise draws.

    ``keys`` (one string per image, e.g. its sha256) seed each image's noise. An image whose activations
    are not finite gets NaN statistics (callers refuse or record them: the scan writes an error row).
    """
    layer = layer or adapter.default_layer
    t = adapter.default_t if t is None else t
    pool = pool or adapter.default_pool
    if repeats < 1:
        raise DiffmemError(f"repeats={repeats}: must be >= 1")
    z = None
    totals: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        gens = generators(seed, keys, r)
        if z is None:
            with torch.no_grad():
                z = adapter.prepare(x)
        v = forward(adapter, x, t, gens, [layer], early_exit=True, z=z).pooled(pool)[layer]   # (B, C)
        v[~torch.isfinite(v).all(dim=1)] = float("nan")
        for k, s in all_stats(v).items():
            totals[k] = totals.get(k, 0) + s / repeats
    return totals
