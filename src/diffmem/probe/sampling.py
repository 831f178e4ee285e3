"""DDIM / DDPM sampling through an adapter, with classifier-free guidance.

``ddim`` is deterministic (η = 0); ``ddpm`` is ancestral sampling (DDIM with η = 1, which is DDPM
when ``steps`` equals the training steps), its fresh noise drawn per sample.

Each sample's initial noise (and DDPM noise) comes from its own generator seeded by
(seed, sample index), so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from diffmem.errors import check
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators


def guided_eps(adapter: Adapter, x: torch.Tensor, t: int, cond, guidance: float) -> torch.Tensor:
    """ε̂ = ε(x, ∅) + w (ε(x, c) − ε(x, ∅)); w = 1 runs the conditional branch only.

    The two branches run as one batch in the family's order (``adapter.cfg_order``).
    """
    if cond is None or guidance == 1.0:
        return adapter.denoise(x, t, cond)
    b = x.shape[0]
    null = adapter.null_condition(b)
    pair = (null, cond) if adapter.cfg_order == "uncond_cond" else (cond, null)
    out = adapter.denoise(torch.cat([x, x]), t, torch.cat(pair))
    first, second = out[:b], out[b:]
    eps_u, eps_c = (first, second) if adapter.cfg_order == "uncond_cond" else (second, first)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def sample(adapter: Adapter, n: int, classes: Sequence[int] | None = None, guidance: float = 1.0,
           steps: int = 50, sampler: str = "ddim", seed: int = 0, batch_size: int = 128,
           quiet: bool = False, indices: Sequence[int] | None = None) -> torch.Tensor:
    """n samples (n, C, H, W) in model space (pixels in [-1, 1] for pixel models).

    ``classes`` (n,) are class labels for class-conditional models (None: unconditional/null).
    ``indices`` (n,) name the samples whose noise to use (default 0…n−1): sample j of one call
    equals sample j of any other call with the same seed, steps and class.
    """
    from diffusers import DDIMScheduler
    check(n >= 1, f"--n {n}: must be >= 1")
    check(sampler in ("ddim", "ddpm"), f"--sampler {sampler!r}: 'ddim' or 'ddpm'")
    check(guidance >= 0, f"--guidance {guidance}: must be >= 0")
    total = adapter.scheduler.config.num_train_timesteps
    check(1 <= steps <= total, f"--steps {steps}: must be in [1, {total}]")
    eta = 0.0 if sampler == "ddim" else 1.0
    out = []
    channels = adapter.denoiser.config.in_channels
    size = getattr(adapter, "latent_size", adapter.image_size)
    bar = progress(total=n * steps, desc=f"sample ({sampler}, w={guidance})", disable=quiet)
    names = list(range(n)) if indices is None else [int(j) for j in indices]
    check(len(names) == n, "sample: one index per sample")
    for i in range(0, n, batch_size):
        idx = list(range(i, min(n, i + batch_size)))
        sched = DDIMScheduler.from_config(adapter.scheduler.config)
        sched.set_timesteps(steps)
        gens = generators(seed, [f"sample{names[j]}" for j in idx])
        x = torch.stack([torch.randn(channels, size, size, generator=g) for g in gens]).to(adapter.device)
        cond = adapter.condition([classes[j] for j in idx]) if classes is not None else None
        for t in sched.timesteps:
            eps = guided_eps(adapter, x, int(t), cond, guidance)
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x) if eta else None
            x = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
            bar.update(len(idx))
        out.append(x.clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)

