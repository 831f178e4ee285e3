"""Detection methods compared in one harness on the same images, noise and timestep.

Each method maps a batch to one score per image; its natural orientation is "higher = memorized":

* ``spikiness`` — std of the pooled layer (early exit; no condition, no training data);
* ``wen`` — ‖ε(x_t, c) − ε(x_t, ∅)‖ (Wen et al., ICLR'24; needs the class/prompt);
* ``denoising_loss`` — −‖ε(x_t, ∅) − ε‖² (membership-inference style: low loss = memorized);
* ``nemo`` — max over units of the z-score of the pooled layer against reference activations of
  held-out real images (NeMo-style; no training data, but reference images);
* ``nn_oracle`` — −(distance to the nearest training image) (needs the training set: an upper bound);
* ``random`` — uniform noise (the floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from diffmem.bench.labels import nearest_two
from diffmem.probe.adapters import Adapter, gaussian_like
from diffmem.probe.represent import generators, noise_seed, represent, spikiness
from diffmem.probe.sampling import guided_eps


@dataclass
class Batch:
    """Images x (B, C, H, W) in [-1, 1], their keys (noise seeds) and classes (B,)."""

    x: torch.Tensor
    keys: list[str]
    classes: torch.Tensor | None


@dataclass
class Method:
    name: str
    needs_condition: bool
    needs_training_data: bool
    score: Callable[[Batch], np.ndarray]


@dataclass
class Setting:
    """Where every model-based method looks: layer, timestep, pooling, noise seed."""

    layer: str
    t: int
    pool: str
    seed: int


@torch.no_grad()
def _eps_pair(adapter: Adapter, b: Batch, s: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    z = adapter.prepare(b.x)
    eps = gaussian_like(z, generators(s.seed, b.keys))
    z_t = adapter.noise(z, s.t, generators(s.seed, b.keys))
    return z_t, eps


def methods(adapter: Adapter, setting: Setting, reference: torch.Tensor, train: torch.Tensor) -> list[Method]:
    """The six methods, with NeMo's reference statistics fitted on ``reference`` images (held out)."""
    s = setting

    def spiky(b: Batch):
        return spikiness(adapter, b.x, b.keys, s.layer, s.t, s.pool, s.seed)["std"].numpy()

    @torch.no_grad()
    def wen(b: Batch):
        z_t, _ = _eps_pair(adapter, b, s)
        cond = adapter.condition(b.classes.tolist())
        null = adapter.null_condition(len(b.x))
        out = adapter.denoise(torch.cat([z_t, z_t]), s.t, torch.cat([null, cond]))
        n = len(b.x)
        return (out[n:] - out[:n]).flatten(1).norm(dim=1).double().numpy()

    @torch.no_grad()
    def loss(b: Batch):
        z_t, eps = _eps_pair(adapter, b, s)
        pred = guided_eps(adapter, z_t, s.t, None, 1.0)
        return -(pred - eps).flatten(1).pow(2).sum(1).double().numpy()

    ref_keys = [f"reference{i}" for i in range(len(reference))]
    ref = torch.cat([represent(adapter, reference[i:i + 256], [s.layer], s.t, s.pool,
                               generators(s.seed, ref_keys[i:i + 256]))[s.layer]
                     for i in range(0, len(reference), 256)]).double()
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)

    def nemo(b: Batch):
        v = represent(adapter, b.x, [s.layer], s.t, s.pool, generators(s.seed, b.keys))[s.layer].double()
        return ((v - mu) / sd).amax(dim=1).numpy()

    def oracle(b: Batch):
        return -nearest_two(b.x, train)[1]

    def rand(b: Batch):
        return np.array([noise_seed(s.seed, k, 99) / 2.0 ** 63 for k in b.keys])

    return [Method("spikiness", False, False, spiky), Method("wen", True, False, wen),
            Method("denoising_loss", False, False, loss), Method("nemo", False, False, nemo),
            Method("nn_oracle", False, True, oracle), Method("random", False, False, rand)]
