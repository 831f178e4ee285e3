"""Benchmark: vectorized grid runs against a Python loop over the same grids."""

from __future__ import annotations

import itertools
import time

import torch

from diffmem.theory.data import Cluster, make_clusters
from diffmem.theory.train import DAESpec, TrainConfig, train_grid

GRIDS = {
    # many small models around the memorization/generalization transition (n ≈ p)
    "transition": {"n_per_cluster": (1, 2, 4, 8), "p": (4, 8, 16)},
    # fewer, larger models: compute-bound, so batching gains less
    "large_n": {"n_per_cluster": (16, 64), "p": (8, 16)},
}


def _grid(n_per_cluster, p, seed: int) -> list[DAESpec]:
    g = torch.Generator().manual_seed(seed)
    data = {n: make_clusters([Cluster(n, 2)] * 4, 32, generator=g)[0] for n in n_per_cluster}
    combos = itertools.product(data, p, (0.05, 0.2), (1e-3, 1e-2), range(2))
    return [DAESpec(data[n], pp, s, lam, seed=seed * 1000 + i) for i, (n, pp, s, lam, _) in enumerate(combos)]


def bench_grid(steps: int = 300, seed: int = 0, quiet: bool = False) -> dict:
    """For each grid of :data:`GRIDS` (× σ ∈ {0.05, 0.2} × λ ∈ {1e-3, 1e-2} × 2 seeds), time one
    batched run against a loop of single-model runs, same steps and noise draws.

    Returns ``{grid: {"models", "steps", "seconds_vectorized", "seconds_loop", "speedup",
    "max_abs_weight_diff"}}``; the last checks that both ways trained the same models.
    """
    config = TrainConfig(steps=steps, noise_draws=4)
    train_grid(_grid((1,), (4,), seed)[:2], TrainConfig(steps=5), quiet=True)   # warm-up, untimed
    results = {}
    for name, axes in GRIDS.items():
        specs = _grid(axes["n_per_cluster"], axes["p"], seed)
        t0 = time.perf_counter()
        batched, _ = train_grid(specs, config, quiet=quiet, desc=f"{name}: vectorized")
        t1 = time.perf_counter()
        looped = [train_grid([s], config, quiet=True)[0][0] for s in specs]
        t2 = time.perf_counter()
        diff = max(float((a.W1 - b.W1).detach().abs().max()) for a, b in zip(batched, looped))
        results[name] = {"models": len(specs), "steps": steps, "seconds_vectorized": t1 - t0,
                         "seconds_loop": t2 - t1, "speedup": (t2 - t1) / (t1 - t0),
                         "max_abs_weight_diff": diff}
    return results
