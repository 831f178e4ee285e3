"""Figures of the theory lab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffmem.plotting import normalize_columns, plt, save, show_images
from diffmem.theory.closed_form import minimizer_product
from diffmem.theory.model import ReLUDAE


def plot_verify(models: dict[str, tuple[ReLUDAE, torch.Tensor, torch.Tensor]], results: dict,
                out: Path) -> list[Path]:
    """``verify_products.png`` (trained W Wᵀ beside the closed form) and ``verify_representations.png``."""
    names = list(models)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.2))
    for j, name in enumerate(names):
        model, X, labels = models[name]
        r = results[name]
        target = minimizer_product(X, labels, r["p"], r["sigma"], r["lambda"]).numpy()
        lim = np.abs(target).max()
        for i, (mat, what) in enumerate([(model.product().numpy(), "trained W Wᵀ"), (target, "closed form")]):
            axes[i, j].imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[i, j].set_title(f"{name}: {what}" + (f"\nrel_err={r['rel_err']:.4f}" if i == 0 else ""),
                                 fontsize=9)
            axes[i, j].axis("off")
    paths = [save(fig, out / "verify_products.png")]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 2.8))
    for ax, name in zip(axes, names):
        model, X, _ = models[name]
        h = model.hidden(X[:1]).detach().numpy()[0]
        ax.bar(np.arange(len(h)), h, color="tab:red" if name == "memorization" else "tab:blue")
        ax.set_title(f"{name}: h(x₀), std={results[name]['rep_std_train']:.3f}", fontsize=9)
        ax.set_xlabel("hidden unit")
    paths.append(save(fig, out / "verify_representations.png"))
    return paths


def plot_weights(panels: dict[str, tuple[ReLUDAE, torch.Tensor]], shape: tuple[int, int], out: Path,
                 max_units: int = 32) -> list[Path]:
    """Per model: its decoder columns drawn as images, and hidden representations as bars."""
    paths = []
    for name, (model, X) in panels.items():
        W = model.decoder.detach().numpy()                               # (d, p)
        norms = np.linalg.norm(W, axis=0)
        keep = np.argsort(-norms)[:max_units]
        cols = normalize_columns(W[:, keep]).T.reshape(-1, *shape)
        fig, ax = plt.subplots(figsize=(8, 1.0 + 1.0 * (-(-len(keep) // 16))))
        show_images(ax, cols, ncol=16, title=f"{name}: {len(keep)} largest weight columns (of {W.shape[1]})")
        paths.append(save(fig, out / f"weights_{name}.png"))
        h = model.hidden(X[:4].float()).detach().numpy()                 # (k ≤ 4, p)
        fig, axes = plt.subplots(1, len(h), figsize=(3 * len(h), 2.4), squeeze=False)
        axes = axes[0]
        for i, ax in enumerate(axes):
            ax.bar(np.arange(h.shape[1]), h[i], color="tab:red" if "memor" in name else "tab:blue")
            ax.set_title(f"{name}: training image {i}", fontsize=8)
        paths.append(save(fig, out / f"representations_{name}.png"))
    return paths
