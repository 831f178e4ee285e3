"""Nearest training images, the copy criterion and exact copy labels, shared by the theory lab,
training, the benchmark, the audit, steering and the monitor."""

from __future__ import annotations

import numpy as np
import torch

COPY_RATIO = 1.0 / 3.0  # memorized when d1/d2 < 1/3 (Yoon et al.; Gu et al.; Bonnaire et al.)


def nearest_two(samples: torch.Tensor, train: torch.Tensor, chunk: int = 1024) -> tuple[np.ndarray, ...]:
    """Pixel-L2 nearest and second-nearest training rows of each sample.

    ``samples`` (N, …), ``train`` (M, …) with distinct rows. Returns (index1 (N,), d1 (N,), d2 (N,));
    d2 is inf when M = 1.
    """
    S = samples.reshape(len(samples), -1).double()
    T = train.reshape(len(train), -1).double()
    idx, d1, d2 = [], [], []
    for i in range(0, len(S), chunk):
        dist = torch.cdist(S[i:i + chunk], T)                             # (n, M)
        top = dist.topk(min(2, len(T)), dim=1, largest=False)
        idx.append(top.indices[:, 0])
        d1.append(top.values[:, 0])
        d2.append(top.values[:, 1] if len(T) > 1 else torch.full_like(top.values[:, 0], float("inf")))
    return torch.cat(idx).numpy(), torch.cat(d1).numpy(), torch.cat(d2).numpy()


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
