"""DDIM / DDPM sampling through an adapter, with classifier-free guidance.

``ddim`` is deterministic (η = 0); ``ddpm`` is ancestral sampling (DDIM with η = 1, which is DDPM
when ``steps`` equals the training steps), its fresh noise drawn per sample. The schedule and its
steps come from the adapter (``adapter.sampler``): DDIM for diffusers families, Euler steps in σ
for the theory family.

Each sample's initial noise (and DDPM noise) comes from its own generator seeded by
(seed, sample index), so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from diffmem.errors import DiffmemError, check
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators


def guided_eps(adapter: Adapter, x: torch.Tensor, t: int, cond, guidance: float) -> torch.Tensor:
    """ε̂ = ε(x, ∅) + w (ε(x, c) − ε(x, ∅)); w = 1 runs the conditional branch only.

    The two branches run as one batch in the family's order (``adapter.cfg_order``).
    """
    if cond is None or guidance == 1.0:
        return adapter.predict_eps(x, t, cond)
    b = x.shape[0]
    null = adapter.null_condition(b)
    pair = (null, cond) if adapter.cfg_order == "uncond_cond" else (cond, null)
    out = adapter.predict_eps(torch.cat([x, x]), t, torch.cat(pair))
    first, second = out[:b], out[b:]
    eps_u, eps_c = (first, second) if adapter.cfg_order == "uncond_cond" else (second, first)
    return eps_u + guidance * (eps_c - eps_u)


def _noise(adapter: Adapter, scale: float, gens) -> torch.Tensor:
    return (scale * torch.stack([torch.randn(adapter.latent_shape, generator=g) for g in gens])
            ).to(adapter.device, adapter.dtype)                                  # (B, *latent_shape)


def initial_noise(adapter: Adapter, scale: float, seed: int, origins: Sequence[str]) -> torch.Tensor:
    """The initial noise z_T (B, *latent_shape) that :func:`sample` drew for the samples named ``origins``
    (``"sample{j}"``) with ``seed``; ``scale`` is the sampler's ``init_scale``."""
    return _noise(adapter, scale, generators(seed, list(origins)))


@dataclass(frozen=True)
class Sampler:
    """How to sample: classifier-free ``guidance`` (1 = the conditional branch only), DDIM ``steps``,
    ``kind`` (``ddim`` | ``ddpm``) and the ``batch_size`` of one denoiser call."""

    guidance: float = 1.0
    steps: int = 50
    kind: str = "ddim"
    batch_size: int = 128

    def __post_init__(self):
        check(self.kind in ("ddim", "ddpm"), f"sampler={self.kind!r}: 'ddim' or 'ddpm'")
        check(self.guidance == self.guidance and 0 <= self.guidance < float("inf"),
              f"guidance={self.guidance}: must be finite and >= 0")
        check(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")


@torch.no_grad()
def sample(adapter: Adapter, n: int, conditions: Sequence | None = None, how: Sampler = Sampler(), seed: int = 0,
           quiet: bool = False, indices: Sequence[int] | None = None) -> torch.Tensor:
    """n samples (n, *latent_shape) in model space (``adapter.decode`` gives pixels), drawn as ``how`` says.

    ``conditions`` (n,): class labels or prompts from :meth:`Adapter.conditions` (None:
    unconditional / null). ``indices`` (n,) name the samples whose noise to use (default 0…n−1):
    sample j of one call equals sample j of any other call with the same seed, steps and condition.
    """
    check(n >= 1, f"n={n}: must be >= 1")
    adapter.check_count(n)
    batch_size, guidance, steps = min(how.batch_size, n), how.guidance, how.steps
    eta = 0.0 if how.kind == "ddim" else 1.0
    names = list(range(n)) if indices is None else [int(j) for j in indices]
    check(len(names) == n, "sample: one index per sample")
    check(conditions is None or len(conditions) == n, "sample: one condition per sample")
    out = []
    bar = progress(total=n * steps, desc=f"sample ({how.kind}, w={guidance})", disable=quiet)
    for i in range(0, n, batch_size):
        idx = list(range(i, min(n, i + batch_size)))
        plan = adapter.sampler(steps, eta)
        gens = generators(seed, [f"sample{names[j]}" for j in idx])
        x = _noise(adapter, plan.init_scale, gens)
        cond = adapter.condition([conditions[j] for j in idx]) if conditions is not None else None
        for k, t in enumerate(plan.timesteps):
            eps = guided_eps(adapter, x, t, cond, guidance)
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x) if plan.eta else None
            x = plan.step(eps, k, x, noise)
            if not bool(torch.isfinite(x).all()):
                raise DiffmemError(f"guidance {guidance:g} made the samples non-finite at step {k + 1} of {steps}; "
                                   f"nothing was written")
            bar.update(len(idx))
        out.append(x.float().cpu())
    bar.close()
    return torch.cat(out)


def sample_images(adapter: Adapter, n: int, conditions: Sequence | None = None, how: Sampler = Sampler(),
                  seed: int = 0, quiet: bool = False, indices: Sequence[int] | None = None) -> torch.Tensor:
    """:func:`sample`, decoded to pixel images (n, C, H, W) in [-1, 1] (through the VAE for latent models)."""
    z = sample(adapter, n, conditions, how, seed, quiet, indices)
    return torch.cat([adapter.decode(z[i:i + how.batch_size]) for i in range(0, n, how.batch_size)])


@torch.no_grad()
def regenerate(adapter: Adapter, x: torch.Tensor, t0: float, steps: int = 50, seed: int = 0,
               batch_size: int = 128, keys: Sequence[str] | None = None) -> torch.Tensor:
    """The model's own rendering of given images (SDEdit): each image (N, C, H, W) in [-1, 1] is
    noised to the last sampler timestep ≤ ``t0`` of a ``steps``-step schedule and denoised from there
    by DDIM, unconditionally; returns pixel images (N, C, H, W). The noise of image i comes from
    ``keys[i]`` (default: its :func:`~diffmem.data.images.image_key`). Small t0 keeps the image and
    replaces its fine detail by the model's."""
    from diffmem.data.images import image_key
    plan = adapter.sampler(steps)
    start = [k for k, t in enumerate(plan.timesteps) if t <= t0]
    check(len(start) > 0, f"regenerate: t0 {t0:g} is below every timestep of a {steps}-step schedule "
                          f"(smallest {plan.timesteps[-1]:g})")
    keys = [image_key(im) for im in x] if keys is None else list(keys)
    out = []
    for i in range(0, len(x), batch_size):
        z = adapter.prepare(x[i:i + batch_size].to(adapter.device, adapter.dtype))        # (B, C', H', W')
        gens = generators(seed, [f"regenerate:{k}" for k in keys[i:i + batch_size]])   # not the scores' noise
        z = adapter.noise(z, plan.timesteps[start[0]], gens)
        null = adapter.null_condition(len(z))
        for k in start:
            z = plan.step(guided_eps(adapter, z, plan.timesteps[k], null, 1.0), k, z, None)
        out.append(adapter.decode(z).float().cpu())
    return torch.cat(out)
