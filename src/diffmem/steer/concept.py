"""Concept vectors: per-layer mean (or mean difference) of pooled activations of concept images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from diffmem.detect.detector import image_keys
from diffmem.errors import DiffmemError, check
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators, represent
from diffmem.schemas import ConceptFile, read_result, write_result

MODES = ("mean", "mean_diff")


class ConceptVector:
    """``fit(positives, negatives=None)`` → ``vectors_`` {layer: (C,)}.

    mode ``mean``: mean over positives of the pooled activation (the paper's released code);
    ``mean_diff``: positives' mean minus negatives' mean (h-space style, Haas et al.). Activations
    are taken at timestep ``t`` with the positives' condition ``cond`` (e.g. the concept's class;
    default null) and pooled by ``pool`` (default: the family's steering pool, spatial or token
    mean). Layers default to the family's steering recipe (``adapter.steering_layers()``).
    ``weights`` scale each layer's vector.
    """

    def __init__(self, adapter: Adapter | None = None, layers: Sequence[str] | None = None, t: float = 10,
                 mode: str = "mean", pool: str | None = None, weights: dict[str, float] | None = None,
                 seed: int = 0, batch_size: int = 64):
        check(mode in MODES, f"mode {mode!r}: one of {', '.join(MODES)}")
        self.adapter, self.t, self.mode = adapter, t, mode
        self.pool = pool or (adapter.steering_pool if adapter is not None else "spatial_mean")
        self.layers = list(layers) if layers else (adapter.steering_layers() if adapter is not None else [])
        self.weights, self.seed, self.batch_size = dict(weights or {}), seed, batch_size

    def _mean(self, images: torch.Tensor, cond_value) -> dict[str, torch.Tensor]:
        check(len(images) > 0, "concept: no images")
        keys = image_keys(images)
        sums: dict[str, torch.Tensor] = {}
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size]
            cond = None if cond_value is None else self.adapter.condition([cond_value] * len(x))
            vecs = represent(self.adapter, x, self.layers, self.t, self.pool,
                             generators(self.seed, keys[i:i + len(x)]), cond=cond)
            for name in self.layers:
                v = vecs[name].double().sum(0)
                sums[name] = sums.get(name, 0) + v
        return {k: v / len(images) for k, v in sums.items()}

    def fit(self, positives: torch.Tensor, negatives: torch.Tensor | None = None, cond=None,
            negative_cond=None) -> "ConceptVector":
        check(self.adapter is not None, "ConceptVector.fit needs an adapter")
        if self.mode == "mean_diff":
            check(negatives is not None and len(negatives) > 0, "mode 'mean_diff' needs negatives")
        pos = self._mean(positives, cond)
        if self.mode == "mean_diff":
            neg = self._mean(negatives, negative_cond)
            pos = {k: pos[k] - neg[k] for k in pos}
        self.vectors_ = {k: (v * self.weights.get(k, 1.0)).float() for k, v in pos.items()}
        self.n_positives_ = len(positives)
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """``path/vectors.safetensors`` + ``path/concept.json``."""
        from safetensors.torch import save_file
        check(hasattr(self, "vectors_"), "ConceptVector: fit before save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.vectors_.items()}, path / "vectors.safetensors")
        write_result(path / "concept.json", {"layers": self.layers, "t": self.t, "mode": self.mode, "pool": self.pool,
                                             "weights": self.weights, "seed": self.seed,
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
        cv = cls(None, meta["layers"], meta["t"], meta["mode"], meta["pool"], meta["weights"], meta["seed"])
        cv.vectors_, cv.n_positives_ = vectors, meta["n_positives"]
        return cv
