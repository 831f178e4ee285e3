"""Detection metrics: AUROC, TPR at a fixed FPR in both literature conventions, bootstrap CIs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from diffmem.errors import check


def _split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    check(s.shape == y.shape and s.ndim == 1, "metrics: scores and labels must be 1-D of equal length")
    check(bool(np.isfinite(s).all()), "metrics: scores contain NaN or infinite values")
    check(y.any() and (~y).any(), "metrics: need at least one positive and one negative")
    return s[y], s[~y]


def auroc(scores, labels) -> float:
    """Area under the ROC curve (scikit-learn); positives = label 1 = memorized."""
    _split(scores, labels)
    return float(roc_auc_score(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)))


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """Official-code convention: threshold = (1 − fpr)-quantile of the negatives' scores (linear
    interpolation), TPR = fraction of positives strictly above it."""
    pos, neg = _split(scores, labels)
    return float((pos > np.quantile(neg, 1.0 - fpr)).mean())


def tpr_at_fpr_wen(scores, labels, fpr: float = 0.01) -> float:
    """Wen et al. convention: the TPR of the last ROC point whose FPR is strictly below ``fpr``."""
    _split(scores, labels)
    fprs, tprs, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    return float(tprs[np.where(fprs < fpr)[0][-1]])


METRICS = {"auroc": auroc, "tpr_at_1pct_fpr": tpr_at_fpr, "tpr_at_1pct_fpr_wen": tpr_at_fpr_wen}


def bootstrap_ci(scores, labels, metric, n_boot: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile CI of ``metric`` resampling positives and negatives separately with replacement."""
    pos, neg = _split(scores, labels)
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    for b in range(n_boot):
        s = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        vals[b] = metric(s, y)
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def evaluate(scores, labels, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"auroc", "auroc_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci", "tpr_at_1pct_fpr_wen",
    "tpr_at_1pct_fpr_wen_ci", "n_positive", "n_negative"}``."""
    pos, neg = _split(scores, labels)
    out: dict = {}
    for name, fn in METRICS.items():
        out[name] = fn(scores, labels)
        out[f"{name}_ci"] = list(bootstrap_ci(scores, labels, fn, n_boot=n_boot, seed=seed))
    out["n_positive"], out["n_negative"] = int(len(pos)), int(len(neg))
    return out


def fpr_threshold(negative_scores, fpr: float = 0.01) -> float:
    """A threshold to deploy at false-positive rate ``fpr``, fitted on n known-negative scores:
    the ⌈(n + 1)(1 − fpr)⌉-th smallest (split-conformal), so that a fresh exchangeable negative
    scores strictly above it with probability at most ``fpr``. Flag scores ``> threshold``; with
    too few negatives for that guarantee (n + 1 < 1/fpr) it is the largest negative."""
    s = np.sort(np.asarray(negative_scores, dtype=np.float64))
    check(s.ndim == 1 and len(s) >= 1 and bool(np.isfinite(s).all()),
          "threshold: need at least one finite negative score")
    check(0 < fpr < 1, f"fpr={fpr}: must be in (0, 1)")
    k = int(np.ceil((len(s) + 1) * (1 - fpr)))
    return float(s[min(k, len(s)) - 1])


def rates_at(scores, labels, threshold: float) -> dict:
    """Realized ``{"fpr", "tpr"}`` of flagging ``scores > threshold`` (None where a class is absent)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    flag = s > threshold
    return {"fpr": float(flag[~y].mean()) if (~y).any() else None,
            "tpr": float(flag[y].mean()) if y.any() else None}
