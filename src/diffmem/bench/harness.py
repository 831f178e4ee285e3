"""The benchmark's library half: a model's training and held-out images from its training record,
and one seed of the protocol (:mod:`diffmem.bench.protocol`) over every method and our detector."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from diffmem.data.records import copy_targets, reference_images
from diffmem.neighbours import COPY_RATIO, label_samples
from diffmem.bench.protocol import (BenchSettings, aggregate, batches, evaluate_report, grouped_split, score_settings,
                                    split_overlap, summarize, thresholds, timed_against, tune)
from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.methods import peer_methods
from diffmem.detect.metrics import fpr_threshold
from diffmem.errors import check
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.represent import generators
from diffmem.probe.sampling import Sampler, sample_images

DETECTOR = "fusion"      # the name of our shipped detector's method row

__all__ = ["DETECTOR", "ImageBench", "bench_seed", "image_bench", "unit_forward"]


def _row(report: np.ndarray, y: np.ndarray, hard: np.ndarray, deploy: float, unlabelled: float | None, fpr: float,
         secs: float, forward_secs: float, needs: tuple[bool, bool, bool]) -> dict:
    """One method's per-seed results: report metrics, cost per image and relative to a forward, needs."""
    return {**evaluate_report(report, y, hard, deploy, unlabelled, fpr), "seconds_per_image": secs / len(y),
            "forward_fraction": secs / forward_secs,
            **dict(zip(("needs_condition", "needs_training_data", "needs_gradients"), needs))}


def _scores(method, setting, x, keys, classes, idx, batch_size):
    return score_settings(method, [setting], batches(x, keys, classes, idx, batch_size))[0]


def bench_seed(adapter: Adapter, targets: tuple[torch.Tensor, np.ndarray], reference: torch.Tensor, ref_conditions,
               cfg: "ImageBench", seed: int, quiet: bool = False, prompts=None) -> dict:
    """One seed of the protocol: sample ``cfg.n`` images (the model's default conditions, or ``prompts``),
    label them exactly against ``targets`` (the copy targets (M, C, H, W) and how often each was seen (M,)),
    split them by nearest training image, tune every method on calibration, measure it on the report
    split; the fusion detector is fitted on calibration as well. ``ref_conditions`` (class labels of
    ``reference``, or None) feed methods that need a condition."""
    (train, copies), n, guidance, steps = targets, cfg.n, cfg.guidance, cfg.steps
    calib_frac, fpr, batch_size = cfg.calib_frac, cfg.fpr, cfg.batch_size
    conds = adapter.conditions(n, prompts=prompts)
    t0 = time.perf_counter()
    x = sample_images(adapter, n, conds, Sampler(guidance, steps, batch_size=batch_size), seed, quiet)
    sample_seconds = time.perf_counter() - t0
    lab = label_samples(x, train, copies)
    y = lab["memorized"].astype(int)
    check(y.sum() >= 4 and (1 - y).sum() >= 4,
          f"seed {seed}: only {int(y.sum())} memorized and {int((1 - y).sum())} generalized samples: too few")
    keys = image_keys(x)
    classes = None if conds is None else np.asarray(conds, dtype=object)
    calib = grouped_split(y, lab["nearest"], calib_frac, seed)
    cal, rep = np.flatnonzero(calib), np.flatnonzero(~calib)
    check(0 < y[cal].sum() < len(cal) and 0 < y[rep].sum() < len(rep),
          f"seed {seed}: the grouped split left one side without memorized or generalized samples")
    half = len(reference) // 2                          # NeMo's statistics | unlabelled thresholds
    ref_b = reference[half:]
    ref_keys = image_keys(ref_b)
    ref_cls = None if ref_conditions is None or classes is None or adapter.condition_kind != "class" \
        else np.asarray(ref_conditions, dtype=object)[half:]
    ref_idx = np.arange(len(ref_b))
    layers = adapter.candidate_layers()
    conditional = classes is not None
    methods = peer_methods(adapter, layers, reference[:half], train, seed, adapter.t_grid, conditional)
    yr, hard = y[rep], lab["hard_negative"][rep]
    results, tuning, report_scores = {}, {}, {}
    forward = lambda: unit_forward(adapter, x, keys, rep, batch_size)  # noqa: E731
    forward()                                                          # warm-up
    for m in progress(methods, desc=f"methods (seed {seed})", disable=quiet):
        cal_scores = score_settings(m, m.settings, batches(x, keys, classes, cal, batch_size))
        best, sign, table = tune(m, cal_scores, y[cal])
        setting = m.settings[best]
        s_rep, secs, ref_secs = timed_against(lambda: _scores(m, setting, x, keys, classes, rep, batch_size),
                                              forward)
        s_rep = sign * s_rep
        ref_s = (sign * _scores(m, setting, ref_b, ref_keys, ref_cls, ref_idx, batch_size)
                 if ref_cls is not None or not m.needs_condition else None)
        deploy, unl = thresholds(sign * cal_scores[best][y[cal] == 0], ref_s, fpr)
        results[m.name] = _row(s_rep, yr, hard, deploy, unl, fpr, secs, ref_secs,
                               (m.needs_condition, m.needs_training_data, m.needs_gradients))
        tuning[m.name] = {"chosen": setting, "sign": "+" if sign > 0 else "-", "sign_flipped": sign < 0,
                          "description": m.description, "candidates": table}
        report_scores[m.name] = s_rep
    det = FusionDetector(adapter, layers=layers, fpr=fpr, batch_size=batch_size, seed=seed)
    det.fit(x[cal], y[cal], groups=lab["nearest"][cal], keys=[keys[k] for k in cal])
    s_rep, secs, ref_secs = timed_against(lambda: det.score(x[rep], [keys[k] for k in rep]), forward)
    unl = fpr_threshold(det.score(ref_b, ref_keys), fpr)
    results[DETECTOR] = _row(s_rep, yr, hard, det.threshold_, unl, fpr, secs, ref_secs, (False, False, False))
    tuning[DETECTOR] = {"chosen": {"t": det.t_, "features": det.features_}, "sign": "+", "sign_flipped": False,
                        "description": "logistic fusion of one forward's spikiness statistics and denoising "
                                       "residual, fitted on calibration (ours)", "selection": det.selection_}
    report_scores[DETECTOR] = s_rep
    frame = pd.DataFrame({"seed": seed, "sample": np.arange(n), "condition": conds,
                          "split": np.where(calib, "calibration", "report"), **lab})
    for name, s in report_scores.items():
        frame.loc[~calib, f"score_{name}"] = s
    counts = {"calibration": {"memorized": int(y[cal].sum()), "generalized": int(len(cal) - y[cal].sum())},
              "report": {"memorized": int(yr.sum()), "generalized": int(len(rep) - yr.sum()),
                         "hard_negative": int((hard & (yr == 0)).sum())},
              "overlap": split_overlap(lab["nearest"], calib), "n_memorized": int(y.sum()),
              "memorized_copies_duplicated": float(lab["nearest_duplicated"][y == 1].mean()),
              "sample_seconds": sample_seconds}
    return {"results": results, "tuning": tuning, "frame": frame, "counts": counts, "detector": det,
            "x": x, "lab": lab, "calib": calib, "scores": report_scores}


@dataclass(frozen=True)
class ImageBench(BenchSettings):
    """Settings of the image-level bench: ``n`` samples per seed and the :class:`BenchSettings`."""

    n: int = 1500


def image_bench(adapter: Adapter, seeds: list[int], cfg: ImageBench = ImageBench(), prompts=None,
                quiet: bool = False) -> tuple[dict, list[dict], torch.Tensor]:
    """:func:`bench_seed` over ``seeds``: (the ``bench.json`` object without ``model``, the per-seed
    results, the copy targets (M, C, H, W) the samples were labelled against)."""
    train, copies = copy_targets(adapter)
    reference, ref_conditions = reference_images(adapter)
    t0 = time.perf_counter()
    runs = [bench_seed(adapter, (train, copies), reference, ref_conditions, cfg, s, quiet, prompts) for s in seeds]
    result = {
        "seeds": list(seeds), "detector": DETECTOR,
        "split": {"grouped_by": "nearest_training_image", "overlap": max(r["counts"]["overlap"] for r in runs),
                  "calibration_fraction": cfg.calib_frac, "stratified_by": "group holds a memorized sample",
                  "per_seed": [{k: r["counts"][k] for k in ("calibration", "report", "overlap")} for r in runs]},
        "methods": aggregate([r["results"] for r in runs]),
        "n_memorized": summarize([r["counts"]["n_memorized"] for r in runs]),
        "memorized_copies_duplicated": summarize([r["counts"]["memorized_copies_duplicated"] for r in runs]),
        "sample_seconds": summarize([r["counts"]["sample_seconds"] for r in runs]),
        "guidance": cfg.guidance, "sampler": "ddim", "steps": cfg.steps, "n_samples": cfg.n, "fpr": cfg.fpr,
        "copy_ratio": COPY_RATIO, "t_candidates": list(adapter.t_grid),
        "n_reference": {"nemo_statistics": len(reference) // 2,
                        "unlabelled_threshold": len(reference) - len(reference) // 2},
        "seconds": time.perf_counter() - t0,
    }
    return result, runs, train


@torch.no_grad()
def unit_forward(adapter, x, keys, idx, batch_size) -> None:
    """One plain denoiser forward (null condition, the family's default t) over the rows idx: the cost unit."""
    for b in batches(x, keys, None, idx, batch_size):
        z = adapter.prepare(b.x)
        adapter.denoise(adapter.noise(z, adapter.default_t, generators(0, b.keys)), adapter.default_t, None)


