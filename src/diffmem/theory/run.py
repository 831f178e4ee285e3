"""The theory lab's commands: each trains, measures and writes JSON + PNG into an output folder."""

from __future__ import annotations

import os

import torch

from diffmem.data import load_images
from diffmem.errors import check
from diffmem.outputs import output_dir, write_json
from diffmem.plotting import plt, save, show_images
from diffmem.theory import diffusion as rd
from diffmem.theory.bench import bench_grid
from diffmem.theory.images import image_models
from diffmem.theory.phase import phase, plot_phase
from diffmem.theory.plots import plot_verify, plot_weights
from diffmem.theory.verify import verify


def run_verify(out: str | os.PathLike, seed: int = 0, quick: bool = False, seeds: int = 3,
               quiet: bool = False) -> dict:
    """``DIR/verify.json`` + ``verify_products.png`` + ``verify_representations.png``."""
    check(seeds >= 1, f"--seeds {seeds}: must be >= 1")
    results, models = verify(seed=seed, quick=quick, seeds=seeds, quiet=quiet)
    with output_dir(out) as tmp:
        plot_verify(models, results["regimes"], tmp)
        write_json(tmp / "verify.json", results)
    return results


def run_phase(out: str | os.PathLike, n_per_cluster=(1, 2, 4, 8, 16, 32, 64), units=(4, 8, 16, 32),
              sigmas=(0.05,), lam: float = 1e-3, steps: int = 1500, seed: int = 0,
              quiet: bool = False) -> dict:
    """``DIR/phase.json`` + ``DIR/phase.png``."""
    result = phase(n_per_cluster, units, sigmas, lam=lam, steps=steps, seed=seed, quiet=quiet)
    with output_dir(out) as tmp:
        write_json(tmp / "phase.json", result)
        plot_phase(result, tmp)
    return result


def run_weights(out: str | os.PathLike, data: str = "fashion-mnist", n: int = 16, n_large: int = 2000,
                p: int = 16, sigma: float = 5.0, lam: float = 0.1, steps: int = 3000, seed: int = 0,
                quiet: bool = False) -> dict:
    """``DIR/weights.json`` + weight-column images and representation bars for both models."""
    x = torch.from_numpy(load_images(data, limit=max(n, n_large) + 256))
    stats, models = image_models(x, n, n_large, p, sigma=sigma, lam=lam, steps=steps, seed=seed,
                                 quiet=quiet)
    with output_dir(out) as tmp:
        plot_weights(models, tuple(x.shape[1:]) if x.shape[1] > 1 else tuple(x.shape[2:]), tmp)
        write_json(tmp / "weights.json", {"data": str(data), "seed": seed, "models": stats})
    return stats


def run_diffusion(out: str | os.PathLike, data: str = "fashion-mnist", n: int = 16, p: int = 64,
                  steps: int = 3000, samples: int = 64, sample_steps: int = 50, seed: int = 0,
                  quiet: bool = False) -> dict:
    """Train the time-conditioned ReLU diffusion model on n images, sample, retrieve neighbours.

    Writes ``DIR/diffusion.json`` (``copy_fraction``, ``mean_nn_cosine``, ``median_ratio`` and a
    row per sample) and ``DIR/diffusion_samples.png`` (samples above their nearest training images).
    """
    check(n >= 1, f"--n {n}: must be >= 1")
    check(samples >= 1, f"--samples {samples}: must be >= 1")
    imgs = load_images(data, limit=n)
    check(len(imgs) >= n, f"{data}: {len(imgs)} images, fewer than --n {n}")
    X = torch.from_numpy(imgs).reshape(n, -1)
    model = rd.train_diffusion(X, p=p, steps=steps, seed=seed, quiet=quiet)
    s = rd.sample(model, samples, steps=sample_steps, seed=seed + 1)
    nn = rd.nearest_neighbours(s, X)
    result = {"n": n, "p": p, "steps": steps, "samples": samples, "sample_steps": sample_steps,
              "seed": seed, "copy_fraction": rd.copy_fraction(nn),
              "mean_nn_cosine": float(nn["cosine"].mean()), "median_ratio": float(nn["ratio"].median()),
              "skip_scale": float(model.s.detach()),
              "per_sample": [{"nearest_index": int(i), "cosine": float(c), "d1": float(a), "d2": float(b),
                              "ratio": float(r)} for i, c, a, b, r in
                             zip(nn["index"], nn["cosine"], nn["d1"], nn["d2"], nn["ratio"])]}
    shape = imgs.shape[1:]
    k = min(samples, 16)
    with output_dir(out) as tmp:
        fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
        show_images(axes[0], s[:k].reshape(k, *shape).clamp(-1, 1).numpy(), k,
                    f"samples (copy fraction {result['copy_fraction']:.2f})")
        show_images(axes[1], X[nn["index"][:k]].reshape(k, *shape).numpy(), k, "nearest training image")
        save(fig, tmp / "diffusion_samples.png")
        write_json(tmp / "diffusion.json", result)
    return result


def run_bench(out: str | os.PathLike | None = None, steps: int = 300, seed: int = 0,
              quiet: bool = False) -> dict:
    """Vectorized grid vs loop; ``DIR/theory_bench.json`` when ``out`` is given."""
    result = bench_grid(steps=steps, seed=seed, quiet=quiet)
    if out is not None:
        with output_dir(out) as tmp:
            write_json(tmp / "theory_bench.json", result)
    return result
