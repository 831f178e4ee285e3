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


SHAPE_FRACTION, SHAPE_QUANTILE = 0.5, 0.99


def shape_mask(x: torch.Tensor) -> torch.Tensor:
    """The garment's silhouette (B, H, W), whatever its colour: brightest channel above half the image's
    own bright level (its 99th percentile). Multiplying an image by any colour or brightness (how the
    text-to-image data is tinted, :func:`~diffmem.train.t2i.tint`) leaves it unchanged; the fixed
    mid-grey cut of :func:`garment_mask` does not (a garment darkened to 0.5 loses every pixel)."""
    m = (x.float() + 1).amax(1) / 2                                              # (B, H, W) in [0, 1]
    top = torch.quantile(m.flatten(1), SHAPE_QUANTILE, dim=1).clamp(min=1e-3)    # (B,)
    return m > SHAPE_FRACTION * top.view(-1, 1, 1)


def garment_iou(x: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """IoU (B,) of the silhouettes (:func:`shape_mask`) of images x and base (B, C, H, W): 1 = the shape
    is kept (an edit: recolouring or darkening scores 1), low = the garment moved or smeared."""
    a, b = shape_mask(x).flatten(1), shape_mask(base).flatten(1)
    union = (a | b).sum(1).clamp(min=1)
    return ((a & b).sum(1) / union).double().numpy()


def _blur(x: torch.Tensor, times: int) -> torch.Tensor:
    """x (B, C, H, W) smoothed ``times`` times by the 5-tap binomial filter (edges replicated)."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256                                              # (5, 5)
    c = x.shape[1]
    for _ in range(times):
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"),
                                       k.view(1, 1, 5, 5).repeat(c, 1, 1, 1), groups=c)
    return x


def _block(x: torch.Tensor) -> torch.Tensor:
    """Each garment (B, C, H, W) smeared into its silhouette's bounding box, in its own brightest colour."""
    out, m = torch.full_like(x, -1.0), shape_mask(x)
    for i in range(len(x)):
        ys, xs = torch.nonzero(m[i], as_tuple=True)
        if len(ys):
            out[i, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = x[i].amax((1, 2)).view(-1, 1, 1)
    return out


def validate_shape_measure(reference: torch.Tensor, threshold: float, seed: int = 0) -> dict:
    """How :func:`garment_iou` scores known edits and known smears of held-out images (N, C, H, W) in
    [-1, 1], before it judges any steered sample: per transformation ``kind`` (edit | smear), the mean IoU
    with the original and ``share_kept``, the share with IoU ≥ ``threshold``. Edits (the shape is kept):
    darker × 0.7 / × 0.5, shaded from 1 to 0.6 across the image, half desaturated, the colour channels
    rotated (RGB); smears: shifted 2 / 4 px, blurred twice / four times, the bounding block, another
    held-out garment (never the image itself)."""
    x = reference.float()
    p = (x + 1) / 2                                                               # (N, C, H, W) in [0, 1]
    ramp = torch.linspace(1.0, 0.6, x.shape[-1]).view(1, 1, 1, -1)              # (1, 1, 1, W)
    edits = {"darker x0.7": p * 0.7 * 2 - 1, "darker x0.5": p * 0.5 * 2 - 1,
             "shaded 1 to 0.6 across": p * ramp * 2 - 1, "half desaturated": (p + p.amax(1, keepdim=True)) - 1}
    if x.shape[1] == 3:
        edits["channels rotated"] = torch.roll(x, 1, dims=1)
    shift = 1 + int(torch.randint(max(len(x) - 1, 1), (1,), generator=torch.Generator().manual_seed(seed)))
    other = x[(torch.arange(len(x)) + shift) % len(x)]                            # never the image itself
    smears = {"shifted 2 px": torch.roll(x, 2, dims=3), "shifted 4 px": torch.roll(x, 4, dims=3),
              "blurred x2": _blur(x, 2), "blurred x4": _blur(x, 4), "bounding block": _block(x),
              "another garment": other}
    out = {}
    for kind, group in (("edit", edits), ("smear", smears)):
        for name, z in group.items():
            v = garment_iou(z, x)
            out[name] = {"kind": kind, "mean_iou": float(v.mean()), "share_kept": float((v >= threshold).mean())}
    return out


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
