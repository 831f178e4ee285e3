"""Calibrated verdicts without labels: a threshold at a target FPR fitted on held-out real images,
its realized FPR measured out of sample, the share of flagged samples with a bootstrap CI, and —
when the training set is known — the precision and recall of the flags against exact copy labels."""

from __future__ import annotations

import numpy as np

from diffmem.detect.metrics import fpr_threshold
from diffmem.errors import check


def calibrate_on_reference(reference_scores, fpr: float = 0.01, seed: int = 0) -> tuple[float, float]:
    """(threshold fitted on all reference scores, realized FPR measured out of sample).

    The realized FPR is 2-fold cross-fitted: a threshold fitted on one random half is applied to
    the other half, both ways, and the two rates averaged — never the rate of a threshold on the
    scores it was fitted on."""
    s = np.asarray(reference_scores, dtype=np.float64)
    check(len(s) >= 4, f"reference: {len(s)} images, need at least 4 to calibrate a threshold")
    perm = np.random.default_rng(seed).permutation(len(s))
    a, b = s[perm[: len(s) // 2]], s[perm[len(s) // 2:]]
    realized = 0.5 * ((b > fpr_threshold(a, fpr)).mean() + (a > fpr_threshold(b, fpr)).mean())
    return fpr_threshold(s, fpr), float(realized)


def share_ci(flags, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(share flagged, CI low, CI high): percentile bootstrap over samples."""
    f = np.asarray(flags, dtype=np.float64)
    check(len(f) >= 1, "audit: no samples")
    rng = np.random.default_rng(seed)
    boots = f[rng.integers(0, len(f), (n_boot, len(f)))].mean(1)
    a = (1 - level) / 2
    return float(f.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def flag_quality(flags, copies) -> dict:
    """Precision and recall of ``flags`` (N,) against exact copy labels ``copies`` (N,) (None when
    undefined: nothing flagged / no copy), ``n_copies``, and the false-positive rate on the samples
    that copy nothing (``fpr_generated_non_copies``: the rate the user meets, next to the one measured
    on real reference images)."""
    f, c = np.asarray(flags, bool), np.asarray(copies, bool)
    tp = int((f & c).sum())
    return {"precision": tp / int(f.sum()) if f.any() else None,
            "recall": tp / int(c.sum()) if c.any() else None,
            "n_copies": int(c.sum()), "true_positives": tp,
            "fpr_generated_non_copies": float(f[~c].mean()) if (~c).any() else None}
