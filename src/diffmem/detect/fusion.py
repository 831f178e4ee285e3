"""The fusion detector: spikiness statistics and the denoising residual of one forward, fused by a
logistic model fitted on a labelled calibration set.

One full denoiser call at timestep t (null condition, noise seeded per image key) yields, for free,
the std of every hooked layer's pooled representation (the paper's spikiness) and the residual
‖ε̂ − ε‖² of the output. ``fit`` chooses t and a few of these features by grouped cross-validation
on the calibration set only (groups = the training image a sample is nearest to, so copies of one
image never sit on both sides of a fold), fits a group-balanced logistic regression, and sets
``threshold_`` at the target FPR from out-of-fold scores of the calibration negatives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffmem.detect.detector import image_keys
from diffmem.detect.metrics import fpr_threshold
from diffmem.errors import DiffmemError, check
from diffmem.estimator import Params
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import forward, generators
from diffmem.schemas import DetectorFile, read_result, write_result
from diffmem.stats import std as std_stat

RESIDUAL = "residual"


@torch.no_grad()
def one_forward_features(adapter: Adapter, x: torch.Tensor, keys: Sequence[str], t: float,
                         layers: Sequence[str], seed: int) -> dict[str, np.ndarray]:
    """``{"residual": log ‖ε̂ − ε‖², layer: log std(pool(layer))}``, each (B,), from one full forward of
    images x (B, C, H, W) noised at t with the null condition."""
    f = forward(adapter, x, t, generators(seed, keys), layers)
    out = {RESIDUAL: (f.eps_hat.float() - f.eps.float()).flatten(1).pow(2).sum(1).clamp_min(1e-30).log()}
    for name, v in f.pooled(adapter.default_pool).items():                       # (B, C)
        out[name] = std_stat(v.double()).clamp_min(1e-30).log()
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, label-stratified folds; [] when there are too few groups per class for two folds."""
    from sklearn.model_selection import StratifiedGroupKFold
    per_class = min(len(np.unique(groups[y == c])) for c in (0, 1))
    k = min(k, per_class)
    if k < 2:
        return []
    return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups))


def _group_weights(groups: np.ndarray) -> np.ndarray:
    _, inv, cnt = np.unique(groups, return_inverse=True, return_counts=True)
    w = 1.0 / cnt[inv]
    return w * len(w) / w.sum()


class _Logistic:
    """Standardize, then an L2 logistic regression with group-balanced sample weights."""

    def __init__(self, C: float):
        self.C = C

    def fit(self, X, y, groups):
        from sklearn.linear_model import LogisticRegression
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-12
        m = LogisticRegression(C=self.C, max_iter=5000).fit((X - self.mean_) / self.scale_, y,
                                                             sample_weight=_group_weights(groups))
        self.coef_, self.intercept_ = m.coef_[0], float(m.intercept_[0])
        return self

    def decision(self, X):
        return (X - self.mean_) / self.scale_ @ self.coef_ + self.intercept_


def _oof(X, y, groups, folds, C) -> np.ndarray:
    """Out-of-fold decision values (in-sample when there are no folds)."""
    if not folds:
        return _Logistic(C).fit(X, y, groups).decision(X)
    out = np.empty(len(y))
    for tr, te in folds:
        out[te] = _Logistic(C).fit(X[tr], y[tr], groups[tr]).decision(X[te])
    return out


def _significant_gain(new: np.ndarray, old: np.ndarray, y: np.ndarray, folds, margin: float = 1e-4,
                      z: float = 2.0) -> bool:
    """Does ``new`` beat ``old`` by more than ``z`` standard errors of the per-fold AUROC gains (and
    ``margin``)? A feature is added only on a gain beyond cross-validation noise: with a handful of
    memorized training images per fold, smaller CV gains did not carry over to unseen groups."""
    from sklearn.metrics import roc_auc_score
    if not folds:
        return roc_auc_score(y, new) > roc_auc_score(y, old) + margin
    gains = np.array([roc_auc_score(y[te], new[te]) - roc_auc_score(y[te], old[te])
                      for _, te in folds if 0 < y[te].sum() < len(te)])
    if len(gains) < 2:
        return False
    return gains.mean() > max(margin, z * gains.std(ddof=1) / np.sqrt(len(gains)))


class FusionDetector(Params):
    """Flags memorized images from one denoiser forward: spikiness statistics + denoising residual.

    Parameters: ``ts`` candidate timesteps (default: the adapter's ``t_grid``), ``layers`` candidate layers (default: the adapter's
    spikiness candidates), ``max_features`` features kept by forward selection, ``C`` inverse L2
    strength, ``fpr`` target false-positive rate, ``folds`` grouped CV folds.

    Fitted attributes: ``t_``, ``features_`` (names; ``"residual"`` or a layer), ``mean_``,
    ``scale_``, ``coef_``, ``intercept_``, ``threshold_``, ``oof_scores_`` (out-of-fold scores of the
    fitting images, what the threshold is fitted on), ``selection_`` (CV AUROC of each step;
    a feature joins only when its per-fold AUROC gain exceeds two standard errors),
    ``calibration_`` (what the threshold was fitted on).
    """

    def __init__(self, adapter: Adapter | None = None, ts: Sequence[float] | None = None,
                 layers: Sequence[str] | None = None, max_features: int = 3, C: float = 1.0, fpr: float = 0.01,
                 folds: int = 5, batch_size: int = 256, seed: int = 0):
        self.adapter, self.ts, self.layers, self.max_features = adapter, ts, layers, max_features
        self.C, self.fpr, self.folds, self.batch_size, self.seed = C, fpr, folds, batch_size, seed

    def _check_params(self) -> None:
        check(0 < self.fpr < 1, f"fpr={self.fpr}: must be in (0, 1)")
        check(self.max_features >= 1, f"max_features={self.max_features}: must be >= 1")

    # -- features -------------------------------------------------------------------------
    def _features(self, images: torch.Tensor, keys: Sequence[str], t: float, names: Sequence[str]) -> np.ndarray:
        layers = [n for n in names if n != RESIDUAL]
        cols: dict[str, list] = {n: [] for n in names}
        for i in progress(range(0, len(images), self.batch_size), desc=f"features t={t:g}"):
            f = one_forward_features(self.adapter, images[i:i + self.batch_size], keys[i:i + self.batch_size],
                                     t, layers, self.seed)
            for n in names:
                cols[n].append(f[n])
        return np.stack([np.concatenate(cols[n]) for n in names], 1)             # (N, F)

    def _candidates(self) -> list[str]:
        return [RESIDUAL, *(self.layers if self.layers is not None else self.adapter.candidate_layers())]

    @classmethod
    def residual_only(cls, adapter: Adapter, t: float | None = None, fpr: float = 0.01, seed: int = 0,
                      batch_size: int = 256) -> "FusionDetector":
        """The label-free detector: −log ‖ε̂ − ε‖² at ``t`` (default: the family's), low residual =
        memorized. Nothing is fitted; :meth:`calibrate` on held-out real images sets its threshold."""
        det = cls(adapter, ts=(adapter.default_t if t is None else t,), fpr=fpr, seed=seed, batch_size=batch_size)
        det._check_params()
        det.t_, det.features_ = det.ts[0], [RESIDUAL]
        det.mean_, det.scale_, det.coef_, det.intercept_ = np.zeros(1), np.ones(1), -np.ones(1), 0.0
        det.threshold_, det.selection_, det.calibration_ = float("inf"), [], {"kind": "none"}
        adapter.validate_t(det.t_)
        return det

    # -- fitting --------------------------------------------------------------------------
    def fit(self, images: torch.Tensor, y, groups=None, keys: Sequence[str] | None = None) -> "FusionDetector":
        """Choose t and features by grouped CV AUROC on (images, y), fit the logistic model, and set
        ``threshold_`` from the out-of-fold scores of the negatives. ``groups`` (N,): e.g. the index
        of each image's nearest training image (default: every image its own group)."""
        from sklearn.metrics import roc_auc_score
        self._check_params()
        y = np.asarray(y).astype(int)
        check(len(y) == len(images) and y.min() == 0 and y.max() == 1,
              "FusionDetector.fit: need one label per image, both classes present")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        keys = image_keys(images) if keys is None else list(keys)
        folds = _folds(y, groups, self.folds, self.seed)
        names = self._candidates()
        best = None
        self.selection_ = []
        for t in (self.ts if self.ts is not None else self.adapter.t_grid):
            X = self._features(images, keys, t, names)
            chosen: list[int] = []
            current = None                                    # out-of-fold scores of the chosen set
            while len(chosen) < min(self.max_features, len(names)):
                trials = {j: _oof(X[:, chosen + [j]], y, groups, folds, self.C)
                          for j in range(len(names)) if j not in chosen}
                j = max(trials, key=lambda k: roc_auc_score(y, trials[k]))
                if current is not None and not _significant_gain(trials[j], current, y, folds):
                    break
                chosen.append(j)
                current = trials[j]
                self.selection_.append({"t": t, "features": [names[c] for c in chosen],
                                        "cv_auroc": roc_auc_score(y, current)})
            score = roc_auc_score(y, current)
            if best is None or score > best[0] + 1e-4:
                best = (score, t, chosen, X[:, chosen], current)
        _, self.t_, chosen, X, oof = best
        self.features_ = [names[c] for c in chosen]
        m = _Logistic(self.C).fit(X, y, groups)
        self.mean_, self.scale_, self.coef_, self.intercept_ = m.mean_, m.scale_, m.coef_, m.intercept_
        self.oof_scores_ = oof
        self.threshold_ = fpr_threshold(oof[y == 0], self.fpr)
        self.calibration_ = {"kind": "labelled", "n_negatives": int((y == 0).sum()),
                             "out_of_fold": bool(folds)}
        return self

    def calibrate(self, negatives: torch.Tensor, keys: Sequence[str] | None = None,
                  fpr: float | None = None) -> "FusionDetector":
        """Refit only ``threshold_`` on known-negative images (e.g. held-out real images: no labels needed)."""
        self._check_fitted()
        self.fpr = self.fpr if fpr is None else fpr
        s = self.score(negatives, keys)
        self.threshold_ = fpr_threshold(s, self.fpr)
        self.calibration_ = {"kind": "unlabelled", "n_negatives": int(len(s)), "out_of_fold": True}
        return self

    # -- scoring --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        check(hasattr(self, "coef_"), "FusionDetector: call fit() (or load a fitted detector) first")
        check(self.adapter is not None, "FusionDetector: no model adapter")

    def score(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> np.ndarray:
        """Decision values (N,) for images (N, C, H, W) in [-1, 1]; higher = more likely memorized."""
        self._check_fitted()
        keys = image_keys(images) if keys is None else list(keys)
        X = self._features(images, keys, self.t_, self.features_)
        return (X - self.mean_) / self.scale_ @ self.coef_ + self.intercept_

    def predict(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> np.ndarray:
        """Boolean flags (N,): score above ``threshold_``."""
        return self.score(images, keys) > self.threshold_

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """``path/detector.json`` (settings, features, threshold, the model family) + ``path/detector.safetensors``
        (weights)."""
        from safetensors.numpy import save_file
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_result(path / "detector.json", {
            "kind": "FusionDetector", "params": {k: v for k, v in self.get_params().items() if k != "adapter"},
            "t": self.t_, "features": self.features_, "intercept": self.intercept_,
            "threshold": self.threshold_, "fpr": self.fpr, "calibration": self.calibration_,
            "selection": self.selection_, "pool": self.adapter.default_pool, "family": self.adapter.family,
            "t_convention": self.adapter.t_convention, "model_weights": _weights(self.adapter)}, DetectorFile)
        save_file({"mean": np.asarray(self.mean_, np.float64), "scale": np.asarray(self.scale_, np.float64),
                   "coef": np.asarray(self.coef_, np.float64)}, str(path / "detector.safetensors"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, adapter: Adapter, allow_other_model: bool = False) -> "FusionDetector":
        """A fitted detector saved by :meth:`save`, bound to ``adapter`` (its layers must exist). A
        detector fitted on other weights (``model_weights``, :func:`~diffmem.models.model_fingerprint`)
        is refused unless ``allow_other_model``: its threshold and coefficients belong to that model."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from diffmem.probe.capture import parse_layer
        path = Path(path)
        check((path / "detector.json").is_file(), f"detector={path}: not a saved detector (no detector.json)")
        meta = read_result(path / "detector.json", DetectorFile)
        try:
            arrays = load_file(str(path / "detector.safetensors"))
            params = meta["params"]
            det = cls(adapter, **{**params, "ts": None if params.get("ts") is None else tuple(params["ts"])})
            det._check_params()
            det.t_, det.features_ = meta["t"], list(meta["features"])
            det.intercept_, det.threshold_, det.fpr = float(meta["intercept"]), float(meta["threshold"]), meta["fpr"]
            det.calibration_, det.selection_ = meta.get("calibration", {}), meta.get("selection", [])
            det.mean_, det.scale_, det.coef_ = arrays["mean"], arrays["scale"], arrays["coef"]
        except (OSError, KeyError, TypeError, ValueError, SafetensorError) as exc:
            raise DiffmemError(f"detector={path}: not a saved detector ({type(exc).__name__}: {exc})") from None
        check(len(det.coef_) == len(det.features_) == len(det.mean_),
              f"detector={path}: weights and features disagree")
        numbers = np.r_[det.coef_, det.mean_, det.scale_, det.intercept_, det.threshold_]
        check(bool(np.isfinite(numbers).all()) and bool((det.scale_ > 0).all()),
              f"detector={path}: non-finite weights, scale or threshold")
        family, convention = meta.get("family"), meta.get("t_convention")
        check(family in (None, adapter.family) and convention in (None, adapter.t_convention),
              f"detector={path}: fitted on a {family} model (t as {convention or 'timestep'}), not applicable to "
              f"this {adapter.family} model (t as {adapter.t_convention}; its layers differ too)")
        fitted, here = meta.get("model_weights"), _weights(adapter)
        if not (allow_other_model or fitted is None or here is None or fitted == here):
            raise DiffmemError(f"detector={path}: fitted on other weights (sha256 {fitted[:12]}…, this model's "
                               f"{here[:12]}…); pass allow_other_model=True to apply it anyway")
        for name in det.features_:
            if name != RESIDUAL:
                parse_layer(name, adapter.denoiser)
        adapter.validate_t(det.t_)
        return det


def _weights(adapter: Adapter) -> str | None:
    """The weights fingerprint of the adapter's model folder (None for in-memory models)."""
    from diffmem.models.load import model_fingerprint
    return model_fingerprint(adapter.path) if adapter.path is not None else None
