"""Concept vectors: per-layer mean (or mean difference) of pooled activations of concept images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from diffmem.detect.detector import image_keys
from diffmem.errors import DiffmemError, check
from diffmem.estimator import Params
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators, represent
from diffmem.schemas import ConceptFile, read_result, write_result

MODES = ("mean", "mean_diff")


class ConceptVector(Params):
    """``fit(positives, negatives=None)`` → ``vectors_`` {layer: (C,)}, or {layer: (C·H·W,)} with the
    ``flatten`` pool (one value per channel and position).

    mode ``mean``: mean over positives of the pooled activation (the paper's released code);
    ``mean_diff``: positives' mean minus negatives' mean (h-space style, Haas et al.). Activations
    are taken at timestep ``t`` (None: the family's ``default_t``) with the positives' conditions
    ``cond`` (one value for all, e.g. the concept's class, or one per image, e.g. each image's own
    caption; default null) and pooled by ``pool`` (None: the family's steering pool, spatial or token
    mean). ``layers`` (None: the family's steering recipe, ``adapter.steering_layers()``); ``weights``
    scale each layer's vector. Fitted: ``layers_``, ``t_``, ``pool_``, ``vectors_``, ``n_positives_``.
    """

    def __init__(self, adapter: Adapter | None = None, layers: Sequence[str] | None = None, t: float | None = None,
                 mode: str = "mean", pool: str | None = None, weights: dict[str, float] | None = None,
                 seed: int = 0, batch_size: int = 64):
        self.adapter, self.layers, self.t, self.mode, self.pool = adapter, layers, t, mode, pool
        self.weights, self.seed, self.batch_size = weights, seed, batch_size

    def _mean(self, images: torch.Tensor, cond) -> dict[str, torch.Tensor]:
        check(len(images) > 0, "concept: no images")
        per_image = isinstance(cond, (list, tuple))
        if per_image:
            check(len(cond) == len(images), f"concept: {len(cond)} conditions for {len(images)} images")
        keys = image_keys(images)
        sums: dict[str, torch.Tensor] = {}
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size]
            values = list(cond[i:i + len(x)]) if per_image else None if cond is None else [cond] * len(x)
            vecs = represent(self.adapter, x, self.layers_, self.t_, self.pool_,
                             generators(self.seed, keys[i:i + len(x)]),
                             cond=None if values is None else self.adapter.condition(values))
            for name in self.layers_:
                sums[name] = sums.get(name, 0) + vecs[name].double().sum(0)
        return {k: v / len(images) for k, v in sums.items()}

    def fit(self, positives: torch.Tensor, negatives: torch.Tensor | None = None, cond=None,
            negative_cond=None) -> "ConceptVector":
        """Fit on positives (N, C, H, W) (and negatives (M, C, H, W) for ``mean_diff``) with their conditions."""
        check(self.mode in MODES, f"mode={self.mode!r}: one of {', '.join(MODES)}")
        check(self.adapter is not None, "ConceptVector.fit needs an adapter")
        if self.mode == "mean_diff":
            check(negatives is not None and len(negatives) > 0, "mode 'mean_diff' needs negatives")
        a = self.adapter
        self.layers_ = list(self.layers) if self.layers else a.steering_layers()
        self.t_ = a.default_t if self.t is None else self.t
        self.pool_ = self.pool or a.steering_pool
        pos = self._mean(positives, cond)
        if self.mode == "mean_diff":
            neg = self._mean(negatives, negative_cond)
            pos = {k: pos[k] - neg[k] for k in pos}
        weights = self.weights or {}
        self.vectors_ = {k: (v * weights.get(k, 1.0)).float() for k, v in pos.items()}
        self.n_positives_ = len(positives)
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """``path/vectors.safetensors`` + ``path/concept.json``."""
        from safetensors.torch import save_file
        check(hasattr(self, "vectors_"), "ConceptVector: fit before save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.vectors_.items()}, path / "vectors.safetensors")
        write_result(path / "concept.json", {"layers": self.layers_, "t": self.t_, "mode": self.mode,
                                             "pool": self.pool_, "weights": self.weights or {}, "seed": self.seed,
                                             "n_positives": self.n_positives_}, ConceptFile)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ConceptVector":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = Path(path)
        meta = read_result(path / "concept.json", ConceptFile)
        try:
            vectors = load_file(path / "vectors.safetensors")
        except (OSError, SafetensorError) as exc:
            raise DiffmemError(f"{path}: not a saved concept vector ({exc})") from None
        cv = cls(None, meta["layers"], meta["t"], meta["mode"], meta["pool"], meta["weights"] or None, meta["seed"])
        cv.layers_, cv.t_, cv.pool_ = list(meta["layers"]), meta["t"], meta["pool"]
        cv.vectors_, cv.n_positives_ = vectors, meta["n_positives"]
        return cv
