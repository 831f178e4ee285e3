"""How steered samples move along a strength sweep: pixel path, attribute curve, jumps, with
percentile-bootstrap CIs over samples (``NAME_ci`` = [low, high], 95 %)."""

from __future__ import annotations

import numpy as np
import torch


def _per_sample(images: list[torch.Tensor], alphas: list[float], scores: np.ndarray | None
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each metric per sample (k,), and the pixel change per unit strength (k, A − 1) it averages."""
    base = images[0]
    change = np.stack([(images[i] - base).flatten(1).norm(dim=1).numpy() / a
                       for i, a in enumerate(alphas) if a > 0], 1)                # (k, A − 1)
    steps = np.stack([(images[i + 1] - images[i]).flatten(1).norm(dim=1).numpy()
                      for i in range(len(alphas) - 1)], 1)                      # (k, A − 1)
    out = {"output_change_per_unit": change.mean(1), "largest_pixel_step": steps.max(1),
           "pixel_jump_fraction": steps.max(1) / np.maximum(steps.sum(1), 1e-12)}
    if scores is not None:
        d = np.diff(scores, axis=1)                                              # (k, A − 1)
        out.update({"attribute_gain": scores[:, -1] - scores[:, 0], "monotonicity": (d >= 0).mean(1),
                    "largest_attribute_jump": np.abs(d).max(1)})
    return out, change


def steering_metrics(images: list[torch.Tensor], alphas: list[float], scores: np.ndarray | None,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """images[a] (k, C, H, W) per strength a (alphas[0] = 0); scores (k, A) of the attribute (classifier
    P(target) or attribute percentile) or None.

    Means over samples, each with ``_ci``: ``output_change_per_unit`` (pixel-L2 change from a = 0
    divided by a), ``largest_pixel_step``, ``pixel_jump_fraction`` (share of a sample's pixel path taken
    in its largest step; 1 = one jump); with ``scores`` also ``attribute_gain`` (score at the largest
    strength − at 0), ``monotonicity`` (share of steps where the score does not fall),
    ``largest_attribute_jump``, and ``attribute_curve`` (mean score per strength)."""
    per, change = _per_sample(images, alphas, scores)                           # change (k, A − 1)
    rng = np.random.default_rng(seed)
    k = len(images[0])
    boot = rng.integers(0, k, (n_boot, k))
    out: dict = {"n": k}
    for name, v in per.items():
        means = v[boot].mean(1)
        out[name] = float(v.mean())
        out[f"{name}_ci"] = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
    if scores is not None:
        out["attribute_curve"] = scores.mean(0).tolist()
    out["output_change_per_unit_by_alpha"] = change.mean(0).tolist()
    return out


def curve_at(alphas, curve, alpha: float) -> float:
    """A mean curve (A,) over strengths ``alphas`` read at ``alpha`` by linear interpolation."""
    return float(np.interp(alpha, alphas, curve))


def alpha_at_fraction(alphas, curve, fraction: float = 0.5) -> float | None:
    """The smallest strength where a mean curve (A,) first gains ``fraction`` of its total gain (linear
    between strengths); None when it gains nothing."""
    c = np.asarray(curve, np.float64) - curve[0]
    goal = fraction * c[-1]
    if c[-1] <= 0:
        return None
    k = int(np.argmax(c >= goal))
    if k == 0:
        return float(alphas[0])
    a0, a1, c0, c1 = alphas[k - 1], alphas[k], c[k - 1], c[k]
    return float(a0 + (goal - c0) / (c1 - c0) * (a1 - a0))

