"""The theory lab's commands: each trains, measures and writes JSON + PNG into an output folder."""

from __future__ import annotations

from typing import Annotated

import torch

from diffmem.commands.options import Opt, Out, Quiet, Seed
from diffmem.data import load_images
from diffmem.errors import check
from diffmem.outputs import check_out, output_dir, write_json
from diffmem.plotting import plt, save, show_images
from diffmem.theory import diffusion as rd
from diffmem.theory.bench import bench_grid
from diffmem.theory.images import ImageDAEs, image_models
from diffmem.theory.phase import PhaseGrid, phase as phase_grid, plot_phase
from diffmem.theory.plots import plot_verify, plot_weights
from diffmem.theory.verify import verify as verify_regimes
from diffmem.schemas import VerifyFile, write_result


def verify(out: Out, quick: Annotated[bool, Opt("fewer steps and noise draws (< 2 min on 2 cores)")] = False,
           seeds: Annotated[int, Opt("models trained per regime", min=1)] = 3, seed: Seed = 0,
           quiet: Quiet = False) -> dict:
    """Train ReLU-DAEs in the memorization, generalization and hybrid regimes and compare them with the
    closed-form minimizers: ``DIR/verify.json`` + ``verify_products.png`` + ``verify_representations.png``."""
    check_out(out)
    results, models = verify_regimes(seed=seed, quick=quick, seeds=seeds, quiet=quiet)
    with output_dir(out) as tmp:
        plot_verify(models, results["regimes"], tmp)
        write_result(tmp / "verify.json", results, VerifyFile)
    return results


def phase(out: Out,
          n_per_cluster: Annotated[tuple, Opt("training samples per cluster", list_of=int, min=1)] = (1, 2, 4, 8, 16,
                                                                                                     32, 64),
          units: Annotated[tuple, Opt("hidden units", list_of=int, min=1)] = (4, 8, 16, 32),
          sigmas: Annotated[tuple, Opt("noise levels σ", list_of=float, above=0)] = (0.05,),
          lam: Annotated[float, Opt("weight decay λ", min=0)] = 1e-3,
          steps: Annotated[int, Opt("training steps", min=1)] = 1500, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Phase diagram over samples per cluster and hidden units: ``DIR/phase.json`` + ``DIR/phase.png``."""
    check_out(out)
    result = phase_grid(PhaseGrid(tuple(n_per_cluster), tuple(units), tuple(sigmas), lam=lam, steps=steps), seed, quiet)
    with output_dir(out) as tmp:
        write_json(tmp / "phase.json", result)
        plot_phase(result, tmp)
    return result


def weights(out: Out, data: Annotated[str, Opt("'fashion-mnist', an image folder or a .npy array")] = "fashion-mnist",
            n: Annotated[int, Opt("images of the memorizing model", min=3)] = 16,
            n_large: Annotated[int, Opt("images of the generalizing model", min=3)] = 2000,
            p: Annotated[int, Opt("hidden units of both models", min=1)] = 16,
            sigma: Annotated[float, Opt("noise level σ (per pixel, images in [-1, 1])", above=0)] = 5.0,
            lam: Annotated[float, Opt("weight decay λ", min=0)] = 0.1,
            steps: Annotated[int, Opt("training steps", min=1)] = 3000, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Weight columns and representations of a memorizing (n images) and a generalizing (n-large images)
    ReLU-DAE: ``DIR/weights.json`` + weight-column images and representation bars for both models."""
    check_out(out)
    x = torch.from_numpy(load_images(data, limit=max(n, n_large) + 256))
    stats, models = image_models(x, ImageDAEs(n, n_large, p, sigma, lam, steps), seed, quiet)
    with output_dir(out) as tmp:
        plot_weights(models, tuple(x.shape[1:]) if x.shape[1] > 1 else tuple(x.shape[2:]), tmp)
        write_json(tmp / "weights.json", {"data": str(data), "seed": seed, "models": stats})
    return stats


def diffusion(out: Out,
              data: Annotated[str, Opt("'fashion-mnist', an image folder or a .npy array")] = "fashion-mnist",
              n: Annotated[int, Opt("training images", min=1)] = 16,
              p: Annotated[int, Opt("hidden units", min=1)] = 64,
              steps: Annotated[int, Opt("training steps", min=1)] = 3000,
              samples: Annotated[int, Opt("samples drawn", min=1, max=100000)] = 64,
              sample_steps: Annotated[int, Opt("Euler steps of the sampler", min=1)] = 50,
              seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Train the time-conditioned ReLU diffusion model on n images, sample, retrieve neighbours.

    Writes ``DIR/diffusion.json`` (``copy_fraction``, ``mean_nn_cosine``, ``median_ratio`` and a
    row per sample) and ``DIR/diffusion_samples.png`` (samples above their nearest training images).
    """
    check_out(out)
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


def bench(out: Annotated[str | None, Opt("also write theory_bench.json here", metavar="DIR")] = None,
          steps: Annotated[int, Opt("training steps per model", min=1)] = 300, seed: Seed = 0,
          quiet: Quiet = False) -> dict:
    """Speed of the vectorized grid against a loop over the same grid (``DIR/theory_bench.json`` with --out)."""
    check_out(out)
    result = bench_grid(steps=steps, seed=seed, quiet=quiet)
    if out is not None:
        with output_dir(out) as tmp:
            write_json(tmp / "theory_bench.json", result)
    return result
