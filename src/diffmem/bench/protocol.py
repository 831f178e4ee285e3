"""The benchmark protocol: grouped calibration/report split, equal tuning of every method on the
calibration split, three thresholds measured on the report split, and aggregation over seeds.

* **Grouped split** — samples sharing their nearest training image form one group; whole groups go
  to one side (stratified by whether a group holds a memorized sample), so copies of one training
  image never sit on both sides.
* **Equal tuning** — every method picks its setting (timestep; layer for representation methods;
  the peers' own knobs) and its sign by AUROC on the calibration split only.
* **Thresholds** — (a) *oracle*: the report negatives' own (1 − fpr)-quantile, as papers report;
  (b) *deployable*: :func:`~diffmem.detect.metrics.fpr_threshold` of the calibration negatives;
  (c) *unlabelled*: the same rule on held-out real images the model never trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from diffmem.detect.methods import Batch, Method, setting_key
from diffmem.detect.metrics import auroc, fpr_threshold, rates_at, tpr_at_fpr
from diffmem.errors import check



@dataclass(frozen=True)
class BenchSettings:
    """The protocol's settings at either level: DDIM ``steps`` at ``guidance``, the calibration share
    ``calib_frac`` of the grouped split, the target ``fpr``, ``batch_size``."""

    guidance: float = 1.0
    steps: int = 50
    calib_frac: float = 0.5
    fpr: float = 0.01
    batch_size: int = 256

def grouped_split(y: np.ndarray, groups: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean calibration mask (N,): whole groups to one side, about ``frac`` of the samples of each
    stratum (groups holding a memorized sample / the rest) to calibration."""
    check(0 < frac < 1, f"calib_frac={frac}: must be in (0, 1)")
    y, groups = np.asarray(y).astype(int), np.asarray(groups)
    rng = np.random.default_rng(seed)
    calib = np.zeros(len(y), dtype=bool)
    ids, inv = np.unique(groups, return_inverse=True)
    has_pos = np.bincount(inv, weights=y, minlength=len(ids)) > 0
    size = np.bincount(inv, minlength=len(ids))
    for stratum in (True, False):
        members = rng.permutation(np.flatnonzero(has_pos == stratum))
        target, taken = frac * size[members].sum(), 0
        for g in members:
            if taken >= target:
                break
            calib[inv == g] = True
            taken += size[g]
    return calib


def split_overlap(groups: np.ndarray, calib: np.ndarray) -> int:
    """How many groups have members on both sides (0 for a grouped split)."""
    groups = np.asarray(groups)
    return len(set(groups[calib].tolist()) & set(groups[~calib].tolist()))


def batches(x: torch.Tensor, keys: Sequence[str], conditions: np.ndarray | None, idx: np.ndarray,
            size: int, origins: Sequence[str] | None = None) -> Iterator[Batch]:
    """Batches of the rows ``idx``; ``conditions`` (N,) an object array of class labels or prompts;
    ``origins`` (N,) the sample names of generated images (:attr:`Batch.origins`)."""
    for i in range(0, len(idx), size):
        j = idx[i:i + size]
        yield Batch(x[j], [keys[k] for k in j], None if conditions is None else conditions[j],
                    None if origins is None else [origins[k] for k in j])


def score_settings(method: Method, settings: Sequence[dict], parts: Iterator[Batch]) -> list[np.ndarray]:
    """Scores (N,) of every setting over all batches."""
    acc: list[list] = [[] for _ in settings]
    for b in parts:
        for k, s in enumerate(method.score(b, settings)):
            acc[k].append(np.asarray(s, dtype=np.float64))
    return [np.concatenate(a) for a in acc]


def tune(method: Method, scores: Sequence[np.ndarray], y: np.ndarray) -> tuple[int, float, list[dict]]:
    """Index of the best setting, its sign (+1/−1) and the table ``[{"setting", "auroc"}]`` (AUROC of
    the natural orientation), by the orientation-free AUROC max(a, 1 − a) on calibration labels y."""
    table = []
    for setting, s in zip(method.settings, scores):
        a = auroc(np.nan_to_num(s, nan=-np.inf, posinf=np.finfo(float).max, neginf=-np.finfo(float).max), y) \
            if np.isfinite(s).any() else 0.5
        table.append({"setting": setting, "key": setting_key(setting), "auroc": a})
    best = max(range(len(table)), key=lambda k: max(table[k]["auroc"], 1 - table[k]["auroc"]))
    return best, (1.0 if table[best]["auroc"] >= 0.5 else -1.0), table


def evaluate_report(report: np.ndarray, y: np.ndarray, hard: np.ndarray, deploy: float, unlabelled: float | None,
                    fpr: float = 0.01) -> dict:
    """Report-split metrics of oriented scores: AUROC, oracle TPR, the two fitted thresholds' realized
    rates, and AUROC against hard negatives only."""
    out = {"auroc": auroc(report, y), "tpr_at_1pct_fpr": tpr_at_fpr(report, y, fpr),
           "deployable": rates_at(report, y, deploy),
           "unlabelled": None if unlabelled is None else rates_at(report, y, unlabelled)}
    hard_neg = hard & (y == 0)
    out["hard_negative_auroc"] = (auroc(np.r_[report[y == 1], report[hard_neg]],
                                        np.r_[np.ones(int(y.sum())), np.zeros(int(hard_neg.sum()))])
                                  if hard_neg.any() and y.any() else None)
    return out


def thresholds(cal_neg: np.ndarray, reference: np.ndarray | None, fpr: float = 0.01) -> tuple[float, float | None]:
    """(deployable, unlabelled) thresholds of oriented scores."""
    ref = None if reference is None or not np.isfinite(reference).all() else fpr_threshold(reference, fpr)
    return fpr_threshold(cal_neg, fpr), ref


def timed_against(fn, reference, repeats: int = 3):
    """(result of ``fn()``, its median seconds, median seconds of ``reference()``), the two calls
    interleaved ``repeats`` times so that both see the same machine state."""
    times: dict[str, list] = {"fn": [], "ref": []}
    result = None
    for _ in range(repeats):
        for kind, f in (("ref", reference), ("fn", fn)):
            t0 = time.perf_counter()
            value = f()
            times[kind].append(time.perf_counter() - t0)
            if kind == "fn":
                result = value
    return result, float(np.median(times["fn"])), float(np.median(times["ref"]))


def summarize(per_seed: Sequence) -> dict | None:
    """``{"mean", "sd", "per_seed"}`` of one figure over seeds (sd with ddof 1; 0 for one seed)."""
    vals = [None if v is None else float(v) for v in per_seed]
    got = np.array([v for v in vals if v is not None], dtype=float)
    if len(got) == 0:
        return None
    return {"mean": float(got.mean()), "sd": float(got.std(ddof=1)) if len(got) > 1 else 0.0, "per_seed": vals}


def aggregate(runs: Sequence[dict]) -> dict:
    """Per-seed method results → ``{name: {figure: {mean, sd, per_seed}, …}}`` (nested rates flattened
    into their own objects); booleans and strings are taken from the first seed."""
    out = {}
    for name, first in runs[0].items():
        row = {}
        for key, value in first.items():
            if isinstance(value, bool) or isinstance(value, str):
                row[key] = value
            elif isinstance(value, dict) or (value is None and any(isinstance(r[name][key], dict) for r in runs)):
                subkeys = next(r[name][key] for r in runs if isinstance(r[name][key], dict)).keys()
                row[key] = {k: summarize([(r[name][key] or {}).get(k) for r in runs]) for k in subkeys}
            else:
                row[key] = summarize([r[name][key] for r in runs])
        out[name] = row
    return out
