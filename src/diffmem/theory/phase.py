"""Phase diagram: where memorization turns into generalization as samples per cluster grow."""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

import numpy as np
import torch

from diffmem.errors import check
from diffmem.plotting import plt, save
from diffmem.theory.analysis import column_alignment, denoising_error, representation_stats
from diffmem.theory.data import Cluster, make_clusters
from diffmem.theory.model import check_hyper
from diffmem.theory.train import DAESpec, TrainConfig, train_grid

METRICS = ("frac_aligned", "rep_std_train", "denoise_err_heldout", "generalization_gap")


@dataclass(frozen=True)
class PhaseGrid:
    """The phase diagram's grid: ``n_per_cluster`` training samples per cluster × ``units`` hidden units ×
    noise levels ``sigmas``, on ``clusters`` rank-``rank`` clusters in ``d`` dimensions, weight decay
    ``lam``, ``steps`` training steps."""

    n_per_cluster: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    units: tuple[int, ...] = (4, 8, 16, 32)
    sigmas: tuple[float, ...] = (0.05,)
    clusters: int = 4
    rank: int = 2
    d: int = 32
    lam: float = 1e-3
    steps: int = 1500


def phase(grid: PhaseGrid = PhaseGrid(), seed: int = 0, quiet: bool = False) -> dict:
    """Train one model per (σ, n_k, p) of ``grid`` in a single batched run and measure each.

    Returns ``{"grid": [{"sigma", "n_per_cluster", "p", "frac_aligned", "rep_std_train",
    "denoise_err_train", "denoise_err_heldout", "generalization_gap"}, ...], "settings": {...}}``.
    ``frac_aligned`` is the fraction of live columns whose cosine to one training sample is ≥ 0.99
    (memorization); ``generalization_gap`` = held-out − training denoising error.
    """
    n_per_cluster, units, sigmas, clusters, rank, d, lam, steps = (
        grid.n_per_cluster, grid.units, grid.sigmas, grid.clusters, grid.rank, grid.d, grid.lam, grid.steps)
    for s in sigmas:
        check_hyper(s, lam, min(units))
    check(all(n >= 1 for n in n_per_cluster), "n_per_cluster: every value must be >= 1")
    g = torch.Generator().manual_seed(seed)
    data = {n: make_clusters([Cluster(n, rank)] * clusters, d, generator=g)[0] for n in n_per_cluster}
    held, _ = make_clusters([Cluster(100, rank)] * clusters, d, generator=g)
    specs = [DAESpec(data[n], p, s, lam, seed=seed * 7919 + i, tag={"sigma": s, "n_per_cluster": n, "p": p})
             for i, (s, n, p) in enumerate((s, n, p) for s in sigmas for n in n_per_cluster for p in units)]
    models, _ = train_grid(specs, TrainConfig(steps=steps, lr=3e-2, noise_draws=8), quiet=quiet,
                           desc=f"phase grid ({len(specs)} models)")
    rows = []
    for spec, m in zip(specs, models):
        ge = torch.Generator().manual_seed(seed + 1)
        tr = denoising_error(m, spec.X, spec.sigma, generator=ge)
        he = denoising_error(m, held, spec.sigma, generator=ge)
        rows.append({**spec.tag, "frac_aligned": column_alignment(m, spec.X)["frac_aligned"],
                     "rep_std_train": representation_stats(m, spec.X)["std"],
                     "denoise_err_train": tr, "denoise_err_heldout": he, "generalization_gap": he - tr})
    return {"grid": rows, "settings": {"clusters": clusters, "rank": rank, "d": d, "lambda": lam,
                                       "steps": steps, "seed": seed, "n_per_cluster": list(n_per_cluster),
                                       "units": list(units), "sigmas": list(sigmas)}}


def plot_phase(result: dict, out: Path) -> Path:
    """Heat maps (rows σ, columns metrics) of the grid over n_k (x) and p (y): ``phase.png``."""
    st = result["settings"]
    ns, ps, sig = st["n_per_cluster"], st["units"], st["sigmas"]
    fig, axes = plt.subplots(len(sig), len(METRICS), figsize=(3.6 * len(METRICS), 3.0 * len(sig)),
                             squeeze=False)
    for i, s in enumerate(sig):
        for j, key in enumerate(METRICS):
            grid = np.zeros((len(ps), len(ns)))
            for r in result["grid"]:
                if r["sigma"] == s:
                    grid[ps.index(r["p"]), ns.index(r["n_per_cluster"])] = r[key]
            ax = axes[i, j]
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(ns)), ns)
            ax.set_yticks(range(len(ps)), ps)
            ax.set_xlabel("samples per cluster n_k")
            ax.set_ylabel("units p")
            ax.set_title(f"{key} (σ={s})", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    return save(fig, out / "phase.png")
