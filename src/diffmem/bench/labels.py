"""Exact memorization labels from the known training set: nearest / second-nearest distance ratio."""

from __future__ import annotations

import numpy as np
import torch

from diffmem.neighbours import COPY_RATIO, nearest_two

__all__ = ["COPY_RATIO", "label_samples", "nearest_two"]


def label_samples(samples: torch.Tensor, train: torch.Tensor, copies: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample: ``nearest`` (training-set position), ``d1``, ``d2``, ``ratio`` = d1/d2,
    ``memorized`` (ratio < 1/3), ``nearest_duplicated`` (its nearest image was duplicated) and
    ``hard_negative`` (generalized although its nearest training image is a duplicated one)."""
    nearest, d1, d2 = nearest_two(samples, train)
    ratio = d1 / np.maximum(d2, 1e-12)
    memorized = ratio < COPY_RATIO
    dup = np.asarray(copies)[nearest] > 1
    return {"nearest": nearest, "d1": d1, "d2": d2, "ratio": ratio, "memorized": memorized,
            "nearest_duplicated": dup, "hard_negative": (~memorized) & dup}
