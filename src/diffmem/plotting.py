"""Matplotlib helpers shared by every command (Agg backend, files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG at 110 dpi and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def image_grid(images: np.ndarray, ncol: int) -> np.ndarray:
    """Tile images (N, H, W) or (N, C, H, W) in [-1, 1] into one (rows·H, ncol·W[, C]) array in [0, 1]."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
        x = x[..., 0] if x.shape[-1] == 1 else x
    n = len(x)
    rows = -(-n // ncol)
    pad = np.full((rows * ncol - n, *x.shape[1:]), -1.0, dtype=np.float32)
    x = np.concatenate([x, pad]) if len(pad) else x
    h, w = x.shape[1:3]
    x = x.reshape(rows, ncol, h, w, *x.shape[3:]).swapaxes(1, 2).reshape(rows * h, ncol * w, *x.shape[3:])
    return np.clip((x + 1) / 2, 0, 1)


def show_images(ax, images: np.ndarray, ncol: int, title: str | None = None) -> None:
    """Draw :func:`image_grid` on ``ax`` without ticks."""
    ax.imshow(image_grid(images, ncol), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_top_with_nearest(images, scores, path, title: str, train=None, nearest=None, ratio=None, k: int = 12):
    """The k highest-scoring images (N, C, H, W) in a row; with ``train`` (M, C, H, W), ``nearest``
    (N,) and ``ratio`` (N,), their nearest training images below, titled with d1/d2."""
    order = np.argsort(-np.asarray(scores))[:k]
    rows = 1 if train is None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.35 * rows + 0.3), squeeze=False)
    show_images(axes[0, 0], np.asarray(images[order]), k, title)
    if train is not None:
        show_images(axes[1, 0], np.asarray(train[nearest[order]]), k,
                    "nearest training image; d1/d2 " + " ".join(f"{r:.2f}" for r in ratio[order]))
    return save(fig, path)


def normalize_columns(W: np.ndarray) -> np.ndarray:
    """Scale each column (d, p) to [-1, 1] by its largest absolute value, for display."""
    return W / (np.abs(W).max(axis=0, keepdims=True) + 1e-12)
