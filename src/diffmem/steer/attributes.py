"""Attribute concepts measured by an image statistic, so steering toward them is scored exactly.

An attribute's concept images are the reference images where the statistic is highest (positives)
and lowest (negatives); a steered image's attribute score is the percentile of its statistic among
the reference images (0…1), so a gain of 0.3 moves an image by 30 percentile points of real images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# name: statistic of images (B, C, H, W) in [-1, 1] → (B,)
ATTRIBUTES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "brightness": (lambda x: ((x.float() + 1) / 2).flatten(1).mean(1), "mean intensity"),
    "ink": (lambda x: (x.float() > 0).float().flatten(1).mean(1), "share of pixels brighter than mid-grey "
                                                                   "(garment area / stroke thickness)"),
}


def attribute_concept(name: str, reference: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` reference images (N, C, H, W) highest and lowest in the attribute: (positives, negatives)."""
    order = torch.argsort(ATTRIBUTES[name][0](reference))
    n = min(n, len(reference) // 2)
    return reference[order[-n:]], reference[order[:n]]


def attribute_percentile(name: str, images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Percentile (0…1) of each image's attribute among the reference images: (B,)."""
    ref = np.sort(ATTRIBUTES[name][0](reference).numpy())
    return np.searchsorted(ref, ATTRIBUTES[name][0](images).numpy(), side="right") / len(ref)
