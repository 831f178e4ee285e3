"""The spikiness detector, scikit-learn style, and layer selection on a calibration set."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffmem.data.images import image_key
from diffmem.detect.metrics import auroc, fpr_threshold
from diffmem.errors import check
from diffmem.estimator import Params
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators, represent, spikiness
from diffmem.stats import STATISTICS


def image_keys(images: torch.Tensor) -> list[str]:
    """The key that seeds each image's noise (:func:`diffmem.data.images.image_key`), images (N, C, H, W)."""
    return [image_key(im) for im in images]


class SpikinessDetector(Params):
    """Flags memorized images by the spikiness of one layer's pooled representation.

    ``fit(negatives)`` calibrates ``threshold_`` so that at most a fraction ``fpr`` of fresh
    generalized images is flagged (:func:`~diffmem.detect.metrics.fpr_threshold`, split-conformal); ``score`` returns the statistic
    (higher = more memorized); ``predict`` compares it with the threshold. Layer, t and pooling
    default to the adapter family's recipe.
    """

    def __init__(self, adapter: Adapter, layer: str | None = None, t: float | None = None,
                 pool: str | None = None, statistic: str = "std", repeats: int = 1, fpr: float = 0.01,
                 batch_size: int = 64, seed: int = 0):
        self.adapter, self.layer, self.t, self.pool, self.statistic = adapter, layer, t, pool, statistic
        self.repeats, self.fpr, self.batch_size, self.seed = repeats, fpr, batch_size, seed

    def settings(self) -> tuple[str, float, str]:
        """(layer, t, pool) with the family's defaults filled in, validated."""
        check(self.statistic in STATISTICS, f"statistic={self.statistic!r}: one of {', '.join(STATISTICS)}")
        check(0 < self.fpr < 1, f"fpr={self.fpr}: must be in (0, 1)")
        a = self.adapter
        return self.layer or a.default_layer, a.default_t if self.t is None else self.t, self.pool or a.default_pool

    def score_all(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every statistic (N,) for images (N, C, H, W) in [-1, 1]."""
        layer, t, pool = self.settings()
        keys = image_keys(images) if keys is None else list(keys)
        parts: dict[str, list] = {}
        for i in progress(range(0, len(images), self.batch_size), desc="spikiness"):
            s = spikiness(self.adapter, images[i:i + self.batch_size], keys[i:i + self.batch_size],
                          layer, t, pool, self.seed, self.repeats)
            check(bool(torch.isfinite(s["std"]).all()), f"layer {layer!r}: NaN or infinite activations")
            for k, v in s.items():
                parts.setdefault(k, []).append(v.numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def score(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> np.ndarray:
        return self.score_all(images, keys)[self.statistic]

    def fit(self, negatives: torch.Tensor, keys: Sequence[str] | None = None) -> "SpikinessDetector":
        self.negative_scores_ = self.score(negatives, keys)
        self.threshold_ = fpr_threshold(self.negative_scores_, self.fpr)           # split-conformal
        return self

    def predict(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> np.ndarray:
        check(hasattr(self, "threshold_"), "SpikinessDetector: call fit(negatives) before predict")
        return self.score(images, keys) > self.threshold_


@torch.no_grad()
def select_layer(adapter: Adapter, positives: torch.Tensor, negatives: torch.Tensor,
                 candidates: Sequence[str] | None = None, like: SpikinessDetector | None = None) -> list[dict]:
    """Rank candidate layers (default ``adapter.candidate_layers()``) by the AUROC of a detector's statistic on
    a calibration set, one forward per batch; ``like``: the detector whose t, pool, statistic, seed and
    batch size to use (default: the family's). Returns ``[{"layer", "auroc"}, ...]`` best first. Use
    images disjoint from any reported split."""
    like = like or SpikinessDetector(adapter)
    candidates = list(candidates or adapter.candidate_layers())
    _, t, pool = like.settings()
    statistic, seed, batch_size = like.statistic, like.seed, like.batch_size
    x = torch.cat([positives, negatives])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    keys = image_keys(x)
    scores: dict[str, list] = {c: [] for c in candidates}
    fn = STATISTICS[statistic]
    for i in progress(range(0, len(x), batch_size), desc="select layer"):
        vecs = represent(adapter, x[i:i + batch_size], candidates, t, pool,
                         generators(seed, keys[i:i + batch_size]), early_exit=False)
        for c in candidates:
            scores[c].append(fn(vecs[c].double()).numpy())
    ranked = [{"layer": c, "auroc": auroc(np.concatenate(scores[c]), y)} for c in candidates]
    return sorted(ranked, key=lambda r: -r["auroc"])
