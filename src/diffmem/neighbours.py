"""Nearest training images and the copy criterion, shared by the theory lab and the benchmark."""

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
