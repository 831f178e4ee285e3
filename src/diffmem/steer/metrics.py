"""How steered samples move along a strength sweep: pixel path, attribute curve, jumps."""

from __future__ import annotations

import numpy as np
import torch


def steering_metrics(images: list[torch.Tensor], alphas: list[float], probs: np.ndarray | None) -> dict:
    """images[a] (k, C, H, W) per strength a (alphas[0] = 0); probs (k, A) target probabilities or None.

    ``output_change_per_unit``: mean pixel-L2 change from a = 0 divided by a; ``largest_pixel_step``;
    ``pixel_jump_fraction``: share of a sample's pixel path (Σ of steps) taken in its largest step
    (1 = one jump); with ``probs``: ``attribute_curve`` (mean P per strength), ``attribute_gain``
    (P at the largest strength − P at 0), ``monotonicity`` (share of steps where P does not fall),
    ``largest_attribute_jump``."""
    base = images[0]
    change = [float((images[i] - base).flatten(1).norm(dim=1).mean() / a) for i, a in enumerate(alphas) if a > 0]
    out = {"n": len(base), "output_change_per_unit": float(np.mean(change)),
           "output_change_per_unit_by_alpha": change}
    steps = np.stack([(images[i + 1] - images[i]).flatten(1).norm(dim=1).numpy()
                      for i in range(len(alphas) - 1)], 1)                      # (k, A − 1)
    out["largest_pixel_step"] = float(steps.max(1).mean())
    out["pixel_jump_fraction"] = float((steps.max(1) / np.maximum(steps.sum(1), 1e-12)).mean())
    if probs is not None:
        d = np.diff(probs, axis=1)
        out.update({"attribute_curve": probs.mean(0).tolist(),
                    "attribute_gain": float((probs[:, -1] - probs[:, 0]).mean()),
                    "monotonicity": float((d >= 0).mean()),
                    "largest_attribute_jump": float(np.abs(d).max(1).mean())})
    return out
