"""The label-free detector the audit uses when a model has no fitted detector: nothing is fitted on
any label of the model. The residuals are read at ``adapter.residual_t`` (the timestep whose
signal-to-noise ratio is 10, from the model's own schedule), the layer scores at the family's
``default_layer`` and ``default_t``.

Five scores, each oriented so that higher = memorized: ``residual`` −log‖ε̂ − ε‖², ``residual_ratio``
(log of the references' Gaussian denoiser's squared error over the model's, same noise, 4 draws:
:mod:`diffmem.detect.gaussian`), ``spikiness`` (std of the default layer's pooled activations, the
paper's recipe), ``nemo`` (max unit z-score of that layer against the reference images) and
``output_norm`` (−Σ ε(x₀)⁴); ``mean_z`` / ``max_z`` combine the z-values of the four others against
held-out reference images. The detector's default score is :data:`DEFAULT_SCORE`, the residual ratio:
chosen across the model zoo by worst case (``diffmem bench zoo``, ``docs/results.md``), its worst AUROC
over the five zoo models is 0.977 (px28), against 0.956 for the plain residual and 0.859 for max z."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.gaussian import fit_gaussian, residual_ratio
from diffmem.detect.methods import Batch, nemo_method, official_spikiness_method, output_norm_method
from diffmem.errors import check
from diffmem.estimator import Params

Z_SCORES = ("residual", "spikiness", "nemo", "output_norm")          # what the z-combinations combine
BASE_SCORES = Z_SCORES + ("residual_ratio",)
COMBINATIONS = ("mean_z", "max_z")
SCORES = BASE_SCORES + COMBINATIONS
DEFAULT_SCORE = "residual_ratio"   # the best worst-case AUROC over the model zoo (`diffmem bench zoo`, docs/results.md)


class LabelFreeDetector(Params):
    """``fit(reference)`` (held-out real images (N, C, H, W), N ≥ 8; optional for the plain residual,
    spikiness and output norm alone) sets NeMo's unit statistics, the residual ratio's Gaussian denoiser
    (``gaussian_``) and the four z-scores' mean and sd (``mean_``, ``scale_``); ``score_all(images)`` gives
    every base score and both combinations, ``score(images)`` the ``combine`` one (default
    :data:`DEFAULT_SCORE`, the residual ratio; ``draws`` noise draws), higher = memorized."""

    def __init__(self, adapter=None, combine: str = DEFAULT_SCORE, fpr: float = 0.01, batch_size: int = 256,
                 seed: int = 0, draws: int = 4):
        self.adapter, self.combine, self.fpr, self.batch_size, self.seed = adapter, combine, fpr, batch_size, seed
        self.draws = draws

    @property
    def t_(self) -> float:
        """The timestep of the detector's score: ``residual_t_`` for both residuals, else ``default_t``."""
        return self.residual_t_ if self.combine.startswith("residual") else self.adapter.default_t

    @property
    def features_(self) -> list[str]:
        """The scores the detector's score is made of."""
        return [self.combine] if self.combine in BASE_SCORES else [self.combine, *Z_SCORES]

    @property
    def needs_reference(self) -> bool:
        """Whether ``fit`` needs reference images: NeMo's unit statistics, the residual ratio's Gaussian
        denoiser and the z-combinations do; the residual, spikiness and output norm are fixed functions of
        the model."""
        return self.combine in ("nemo", "residual_ratio", *COMBINATIONS)

    def _base(self, x: torch.Tensor, keys: Sequence[str] | None = None,
              names: Sequence[str] = BASE_SCORES) -> dict[str, np.ndarray]:
        """The base scores ``names`` (N,) of images x (N, C, H, W)."""
        keys = image_keys(x) if keys is None else list(keys)
        out = {"residual": self.residual_.score(x, keys)} if "residual" in names else {}
        if "residual_ratio" in names:
            out["residual_ratio"] = residual_ratio(self.adapter, self.gaussian_, x, keys, self.residual_t_, self.draws,
                                                   self.seed, self.batch_size)
        b = self.batch_size
        for name, m in self.methods_.items():
            if name in names:
                out[name] = np.concatenate([m.score(Batch(x[i:i + b], keys[i:i + b]), m.settings)[0]
                                            for i in range(0, len(x), b)])
        return out

    @property
    def residual_t_(self) -> float:
        return self.adapter.residual_t

    def describe(self) -> str:
        """The detector in words, for ``audit.json`` and the report."""
        rule = self.adapter.residual_rule
        if self.combine == "residual":
            return f"label-free residual at t = {self.residual_t_:g} ({rule})"
        if self.combine == "residual_ratio":
            return (f"label-free residual ratio to the references' Gaussian denoiser at t = {self.residual_t_:g} "
                    f"({rule}; {self.draws} noise draws)")
        what = (f"{self.combine.split('_')[0]} z of residual, spikiness, NeMo and output norm"
                if self.combine in COMBINATIONS else self.combine)
        return f"label-free {what} (residual at t = {self.residual_t_:g}, the others at t = {self.adapter.default_t:g})"

    def fit(self, reference: torch.Tensor | None = None, keys: Sequence[str] | None = None) -> "LabelFreeDetector":
        """Build the scores; with ``reference`` (R, C, H, W), R ≥ 8, also NeMo's statistics, the residual
        ratio's Gaussian denoiser and the four z-scores' mean and sd against it (needed by ``score_all`` and
        whenever :attr:`needs_reference`)."""
        check(self.combine in SCORES, f"combine {self.combine!r}: one of {', '.join(SCORES)}")
        check(self.adapter is not None, "LabelFreeDetector: needs an adapter")
        check(reference is not None or not self.needs_reference,
              f"LabelFreeDetector: combine {self.combine!r} needs reference images")
        check(reference is None or len(reference) >= 8, "LabelFreeDetector: needs >= 8 reference images")
        a, t = self.adapter, self.adapter.default_t
        self.residual_ = FusionDetector.residual_only(a, t=a.residual_t, seed=self.seed, batch_size=self.batch_size)
        self.methods_ = {"spikiness": official_spikiness_method(a, self.seed),
                         "output_norm": output_norm_method(a, [t], self.seed)}
        if reference is not None:
            self.methods_["nemo"] = nemo_method(a, [a.default_layer], [t], reference, self.seed, self.batch_size)
            self.gaussian_ = fit_gaussian(a, reference, self.batch_size)
            ref = self._base(reference, keys, Z_SCORES)      # not the ratio: its Gaussian was fitted on them
            self.mean_ = {k: float(np.mean(v)) for k, v in ref.items()}
            self.scale_ = {k: float(np.std(v)) or 1.0 for k, v in ref.items()}
        return self

    def score_all(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        check(hasattr(self, "mean_"), "LabelFreeDetector: call fit(reference) first")
        s = self._base(images, keys)
        z = np.stack([(s[k] - self.mean_[k]) / self.scale_[k] for k in Z_SCORES])         # (4, N)
        return {**s, "mean_z": z.mean(0), "max_z": z.max(0)}

    def score(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> np.ndarray:
        """The ``combine`` score (N,); a base score alone is computed alone."""
        if self.combine in BASE_SCORES:
            check(hasattr(self, "residual_"), "LabelFreeDetector: call fit first")
            return self._base(images, keys, [self.combine])[self.combine]
        return self.score_all(images, keys)[self.combine]
