"""Attribute concepts measured by an image statistic, so steering toward them is scored exactly.

An attribute's concept images are the reference images where the statistic is highest (positives)
and lowest (negatives); a steered image's attribute score is the percentile of its statistic among
the reference images (0…1), so a gain of 0.3 moves an image by 30 percentile points of real images.
Colours (``red``, ``green``, …; RGB images) are measured by their chroma statistic on the garment.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from diffmem.errors import check
from diffmem.train.t2i import COLOURS        # the palette the text-to-image model was trained on


def garment_mask(x: torch.Tensor) -> torch.Tensor:
    """Pixels of the garment (B, H, W): brightest channel above mid-grey (the background is black)."""
    return x.float().amax(1) > 0


def garment_iou(x: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """IoU (B,) of the garment masks of images x and base (B, C, H, W): 1 = the shape is kept (an edit),
    low = the garment moved or smeared."""
    a, b = garment_mask(x).flatten(1), garment_mask(base).flatten(1)
    union = (a | b).sum(1).clamp(min=1)
    return ((a & b).sum(1) / union).double().numpy()


def _chroma(rgb: tuple[float, float, float]):
    """The statistic of a colour (r, g, b) in [0, 1]: over the garment's pixels, the chroma (pixel minus its
    grey) projected on the colour's chroma direction, divided by the chroma's length — the cosine
    between the garment's colour and this one, weighted by saturation (−1…1; 0 for a grey garment)."""
    d = torch.tensor(rgb) - sum(rgb) / 3
    d = d / d.norm()

    def stat(x: torch.Tensor) -> torch.Tensor:
        check(x.shape[1] == 3, f"colour attributes need RGB images, not {x.shape[1]}-channel ones")
        p = (x.float() + 1) / 2                                                     # (B, 3, H, W) in [0, 1]
        c = p - p.mean(1, keepdim=True)                                             # chroma (B, 3, H, W)
        m = garment_mask(x).float()                                                 # (B, H, W)
        along = (c * d.view(1, 3, 1, 1)).sum(1)                                     # (B, H, W)
        return (along * m).flatten(1).sum(1) / ((c.norm(dim=1) * m).flatten(1).sum(1) + 1e-3)
    return stat


# name: statistic of images (B, C, H, W) in [-1, 1] → (B,), and what it measures
ATTRIBUTES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "brightness": (lambda x: ((x.float() + 1) / 2).flatten(1).mean(1), "mean intensity"),
    "ink": (lambda x: (x.float() > 0).float().flatten(1).mean(1), "share of pixels brighter than mid-grey "
                                                                   "(garment area / stroke thickness)"),
    **{name: (_chroma(rgb), f"{name} chroma of the garment") for name, rgb in COLOURS.items() if name != "white"},
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
