"""The prompt-level benchmark for text-to-image models (the field's protocol: Webster 2023; Wen et
al., ICLR'24): k generations per prompt, each labelled exactly, a prompt's memorization *strength*
= the share of its generations that copy, and every method scored per image and per prompt.

* **Prompts** (:func:`record_prompts`), from a training record with captions: every duplicated
  item's unique caption (``dup``), unique captions seen once (``single``, the hard negatives),
  distinct template captions (``generic``) and unique captions of held-out items, never trained on
  (``reference``: they set the unlabelled thresholds).
* **Labels**: a generation copies when d1/d2 < 1/3 against the model's round trips of the training
  images (:meth:`~diffmem.probe.adapters.Adapter.round_trip`; for a VAE model its reconstructions,
  since the VAE's blur is as large as the gap to the second-nearest image).
* **Split**: prompts joined by a copied training image (and a unique caption with its own item) form
  one group; whole groups go to one side, so no training image's copies sit on both sides.
* **Prompt level**: positives have strength ≥ 0.5, negatives strength 0 (prompts in between are
  left out of AUROC/TPR, kept in the Spearman correlation with strength); a prompt's score is the
  mean of its generations' oriented scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from diffmem.bench.harness import unit_forward
from diffmem.data.records import PROMPT_KINDS, PromptSet, record_prompts
from diffmem.neighbours import label_samples
from diffmem.bench.protocol import (BenchSettings, batches, evaluate_report, grouped_split, score_settings, split_overlap,
                                    timed_against, tune)
from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.methods import Native, peer_methods
from diffmem.detect.metrics import auroc, fpr_threshold, rates_at, tpr_at_fpr
from diffmem.errors import check
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.sampling import Sampler, sample_images

STRONG = 0.5          # prompt-level positives: strength >= 0.5; negatives: strength 0


def prompt_groups(n_prompts: int, gen_prompt: np.ndarray, copied: np.ndarray, nearest_item: np.ndarray,
                  own_item: np.ndarray) -> np.ndarray:
    """Connected components (P,) of prompts linked through training items: a generation that copies
    item i links its prompt to i, and a unique caption is linked to its own item."""
    parent = list(range(n_prompts))
    node: dict[int, int] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def link(p: int, item: int) -> None:
        if item < 0:
            return
        if item not in node:
            node[item] = p
        else:
            parent[find(p)] = find(node[item])
    for p in range(n_prompts):
        link(p, int(own_item[p]))
    for g in np.flatnonzero(copied):
        link(int(gen_prompt[g]), int(nearest_item[g]))
    return np.array([find(p) for p in range(n_prompts)])


def per_prompt(values: np.ndarray, gen_prompt: np.ndarray, n_prompts: int) -> np.ndarray:
    """Mean of per-generation values (G,) over each prompt's generations → (P,) (NaN without any)."""
    total = np.bincount(gen_prompt, weights=values, minlength=n_prompts)
    count = np.bincount(gen_prompt, minlength=n_prompts)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def prompt_level(scores: np.ndarray, strength: np.ndarray, cal_neg: np.ndarray, reference: np.ndarray,
                 fpr: float) -> dict:
    """Prompt-level figures of oriented prompt scores (P,) with their strengths (P,): AUROC and oracle
    TPR (strength ≥ 0.5 vs 0), rates at the deployable threshold (from calibration prompts of strength
    0, ``cal_neg``) and at the unlabelled one (from never-trained ``reference`` prompts), and the
    Spearman correlation with strength over every prompt."""
    pos, neg = strength >= STRONG, strength == 0
    keep = pos | neg
    s, y = scores[keep], pos[keep]
    both = bool(y.any() and (~y).any())
    rho = spearmanr(scores, strength).statistic if np.ptp(strength) > 0 and np.ptp(scores) > 0 else None
    return {"auroc": auroc(s, y) if both else None, "tpr_at_1pct_fpr": tpr_at_fpr(s, y, fpr) if both else None,
            "deployable": rates_at(s, y, fpr_threshold(cal_neg, fpr)),
            "unlabelled": rates_at(s, y, fpr_threshold(reference, fpr)),
            "spearman": None if rho is None or not np.isfinite(rho) else float(rho),
            "n_positive": int(y.sum()), "n_negative": int((~y).sum())}


@dataclass
class PromptSeed:
    """One seed of the prompt-level bench: per-method image-level (``results``) and prompt-level
    (``prompt_results``) figures, ``tuning``, per-generation and per-prompt frames, ``counts``, the
    fitted ``detector``, and what the figures of the first seed draw: the report generations ``x``,
    the round trips of their nearest training images ``nearest_x``, ``lab``, ``calib``, ``scores``)."""

    results: dict
    prompt_results: dict
    tuning: dict
    frame: pd.DataFrame
    prompt_frame: pd.DataFrame
    counts: dict
    detector: FusionDetector
    x: torch.Tensor
    nearest_x: torch.Tensor
    lab: dict
    calib: np.ndarray
    scores: dict


@dataclass(frozen=True)
class PromptBench(BenchSettings):
    """Settings of the prompt-level bench: ``k`` generations per prompt and the :class:`BenchSettings`
    (guidance 7.5 by default, as users sample text-to-image models)."""

    guidance: float = 7.5
    k: int = 4


def _generations(adapter: Adapter, ps: PromptSet, cfg: PromptBench, seed: int, quiet: bool):
    gen_prompt = np.repeat(np.arange(len(ps)), cfg.k)                             # (G,)
    conds = [ps.prompts[p] for p in gen_prompt]
    t0 = time.perf_counter()
    x = sample_images(adapter, len(conds), conds, Sampler(cfg.guidance, cfg.steps, batch_size=cfg.batch_size), seed,
                      quiet)
    return x, gen_prompt, np.asarray(conds, dtype=object), time.perf_counter() - t0


def prompt_bench_seed(adapter: Adapter, train_rt: torch.Tensor, copies: np.ndarray, ps: PromptSet,
                      reference: torch.Tensor, cfg: PromptBench, seed: int, quiet: bool = False) -> PromptSeed:
    """Sample ``cfg.k`` generations of every prompt, label them against ``train_rt`` (M, C, H, W) (the
    round trips of the training images, which sit at the record's data positions ``indices`` (M,) and were seen
    ``copies`` (M,) times), split by prompt group, tune every method on the calibration generations and
    report both levels on the rest. ``reference``: held-out real images (NeMo's statistics)."""
    train_items = np.asarray(adapter.record.indices)                              # (M,)
    x, gen_prompt, conds, sample_seconds = _generations(adapter, ps, cfg, seed, quiet)
    origins = [f"sample{j}" for j in range(len(x))]
    keys = image_keys(x)
    lab = label_samples(x, train_rt, copies)
    item = np.asarray(ps.item)
    kind = np.asarray(ps.kind)
    lab["nearest_item"] = np.asarray(train_items)[lab["nearest"]]
    lab["own_copy"] = lab["memorized"] & (lab["nearest_item"] == item[gen_prompt])
    y_all = lab["memorized"].astype(int)
    strength = per_prompt(y_all.astype(float), gen_prompt, len(ps))              # (P,)
    ref_gen = kind[gen_prompt] == "reference"
    bench_gen = np.flatnonzero(~ref_gen)
    check(ref_gen.any(), "prompt-level bench: no reference (never-trained) prompts for unlabelled thresholds")
    y = y_all[bench_gen]
    check(y.sum() >= 4 and (1 - y).sum() >= 4,
          f"seed {seed}: only {int(y.sum())} copies among {len(y)} generations: too few to benchmark")
    prompt_group = prompt_groups(len(ps), gen_prompt, lab["memorized"], lab["nearest_item"], item)   # (P,)
    group = prompt_group[gen_prompt]                                              # (G,)
    calib_b = grouped_split(y, group[bench_gen], cfg.calib_frac, seed)
    cal, rep, ref_idx = bench_gen[calib_b], bench_gen[~calib_b], np.flatnonzero(ref_gen)
    check(0 < y_all[cal].sum() < len(cal) and 0 < y_all[rep].sum() < len(rep),
          f"seed {seed}: the grouped split left one side without copies or non-copies")
    native = Native(seed, cfg.steps, cfg.guidance)
    layers = adapter.candidate_layers()
    methods = peer_methods(adapter, layers, reference[:len(reference) // 2], train_rt, seed, adapter.t_grid, True,
                           native=native)
    part = lambda idx: batches(x, keys, conds, idx, cfg.batch_size, origins)  # noqa: E731
    forward = lambda: unit_forward(adapter, x, keys, rep, cfg.batch_size)    # noqa: E731
    forward()                                                                  # warm-up
    rep_prompts = np.unique(gen_prompt[rep])
    cal_prompts = np.unique(gen_prompt[cal])
    ref_prompts = np.unique(gen_prompt[ref_idx])
    yr, hard = y_all[rep], lab["hard_negative"][rep]
    results, prompt_results, tuning, report_scores, gen_scores = {}, {}, {}, {}, {}

    def record(name: str, s_cal, s_rep, s_ref, deploy, secs, ref_secs, needs) -> None:
        full = np.full(len(x), np.nan)
        full[cal], full[rep], full[ref_idx] = s_cal, s_rep, s_ref
        results[name] = {**evaluate_report(s_rep, yr, hard, deploy, fpr_threshold(s_ref, cfg.fpr), cfg.fpr),
                         "seconds_per_image": secs / len(rep), "forward_fraction": secs / ref_secs,
                         **dict(zip(("needs_condition", "needs_training_data", "needs_gradients"), needs))}
        by_prompt = per_prompt(np.nan_to_num(full), gen_prompt, len(ps))
        cal_neg = by_prompt[cal_prompts][strength[cal_prompts] == 0]
        check(len(cal_neg) > 0, f"seed {seed}: no calibration prompt without copies")
        prompt_results[name] = prompt_level(by_prompt[rep_prompts], strength[rep_prompts], cal_neg,
                                            by_prompt[ref_prompts], cfg.fpr)
        report_scores[name], gen_scores[name] = s_rep, full

    for m in progress(methods, desc=f"methods (seed {seed})", disable=quiet):
        cal_scores = score_settings(m, m.settings, part(cal))
        best, sign, table = tune(m, cal_scores, y_all[cal])
        setting = m.settings[best]
        s_rep, secs, ref_secs = timed_against(lambda: score_settings(m, [setting], part(rep))[0], forward)
        s_ref = score_settings(m, [setting], part(ref_idx))[0]
        s_cal = sign * cal_scores[best]
        record(m.name, s_cal, sign * s_rep, sign * s_ref, fpr_threshold(s_cal[y_all[cal] == 0], cfg.fpr), secs,
               ref_secs, (m.needs_condition, m.needs_training_data, m.needs_gradients))
        tuning[m.name] = {"chosen": setting, "sign": "+" if sign > 0 else "-", "sign_flipped": sign < 0,
                          "description": m.description, "candidates": table}
    det = FusionDetector(adapter, layers=layers, fpr=cfg.fpr, batch_size=cfg.batch_size, seed=seed)
    det.fit(x[cal], y_all[cal], groups=group[cal], keys=[keys[k] for k in cal])
    s_rep, secs, ref_secs = timed_against(lambda: det.score(x[rep], [keys[k] for k in rep]), forward)
    record("fusion", det.oof_scores_, s_rep,
           det.score(x[ref_idx], [keys[k] for k in ref_idx]), det.threshold_, secs, ref_secs, (False, False, False))
    tuning["fusion"] = {"chosen": {"t": det.t_, "features": det.features_}, "sign": "+", "sign_flipped": False,
                        "description": "logistic fusion of one forward's spikiness statistics and denoising "
                                       "residual, fitted on calibration generations (ours)",
                        "selection": det.selection_}
    split = np.where(ref_gen, "reference", "report").astype(object)
    split[cal] = "calibration"
    frame = pd.DataFrame({"seed": seed, "sample": np.arange(len(x)), "prompt": conds, "prompt_index": gen_prompt,
                          "kind": kind[gen_prompt], "split": split,
                          **{k: v for k, v in lab.items()},
                          **{f"score_{n}": v for n, v in gen_scores.items()}})
    prompt_frame = pd.DataFrame({"seed": seed, "prompt_index": np.arange(len(ps)), "prompt": ps.prompts,
                                 "kind": kind, "item": item, "copies": ps.copies, "strength": strength,
                                 "own_copy_share": per_prompt(lab["own_copy"].astype(float), gen_prompt, len(ps)),
                                 "group": prompt_group, "split": split[::cfg.k],    # one side per prompt
                                 **{f"score_{n}": per_prompt(np.nan_to_num(v), gen_prompt, len(ps))
                                    for n, v in gen_scores.items()}})
    counts = {"calibration": {"copies": int(y_all[cal].sum()), "non_copies": int(len(cal) - y_all[cal].sum()),
                              "prompts": len(cal_prompts)},
              "report": {"copies": int(yr.sum()), "non_copies": int(len(rep) - yr.sum()),
                         "hard_negative": int((hard & (yr == 0)).sum()), "prompts": len(rep_prompts),
                         "strong_prompts": int((strength[rep_prompts] >= STRONG).sum()),
                         "zero_prompts": int((strength[rep_prompts] == 0).sum())},
              "overlap": split_overlap(group[bench_gen], calib_b),
              "copy_share": copy_shares(lab, kind[gen_prompt], np.asarray(ps.copies)[gen_prompt], copies),
              "sample_seconds": sample_seconds}
    return PromptSeed(results, prompt_results, tuning, frame, prompt_frame, counts, det, x[rep],
                      train_rt[lab["nearest"][rep]], lab, calib_b, report_scores)


def copy_shares(lab: dict, gen_kind: np.ndarray, gen_copies: np.ndarray, train_copies: np.ndarray) -> dict:
    """Per prompt kind (dup split by copy count): the share of generations that copy any training image,
    that copy their own, and — what they copy — the share copying a duplicated training image."""
    out = {}
    dup_copied = np.asarray(train_copies)[lab["nearest"]] > 1
    names = [(f"dup_x{c}", (gen_kind == "dup") & (gen_copies == c)) for c in sorted(set(gen_copies[gen_kind == "dup"]))]
    for name, mask in names + [(k, gen_kind == k) for k in PROMPT_KINDS]:
        if mask.any():
            m = lab["memorized"][mask]
            out[name] = {"n": int(mask.sum()), "copy": float(m.mean()), "own_copy": float(lab["own_copy"][mask].mean()),
                         "copies_duplicated": float((m & dup_copied[mask]).mean())}
    return out


def prompt_bench(adapter: Adapter, seeds: list[int], cfg: PromptBench = PromptBench(), prompts: list[str] | None = None,
                 per_kind: int = 40, quiet: bool = False) -> tuple[dict, list[PromptSeed], PromptSet]:
    """The prompt-level bench over ``seeds``: (the ``bench.json`` object, the per-seed results, the prompts).

    ``bench.json`` keys: ``level`` ("prompt"), ``methods`` (image level) and ``prompt_methods`` (prompt
    level: ``auroc``, ``tpr_at_1pct_fpr``, ``deployable``/``unlabelled`` {fpr, tpr}, ``spearman``,
    ``n_positive``, ``n_negative``), each figure {mean, sd, per_seed}; ``copy_share`` per prompt kind;
    ``prompts`` (count per kind); the settings."""
    from diffmem.data.records import copy_targets, reference_images, require_record
    from diffmem.bench.protocol import aggregate, summarize
    require_record(adapter)
    ps = record_prompts(adapter.record, per_kind, prompts)
    train_rt, copies = copy_targets(adapter)                                     # (M, C, H, W), (M,)
    reference, _ = reference_images(adapter)
    t0 = time.perf_counter()
    runs = [prompt_bench_seed(adapter, train_rt, copies, ps, reference, cfg, s, quiet) for s in seeds]
    shares = {name: {k: summarize([r.counts["copy_share"].get(name, {}).get(k) for r in runs])
                     for k in ("copy", "own_copy", "copies_duplicated")}
              for name in runs[0].counts["copy_share"]}
    result = {
        "level": "prompt", "seeds": list(seeds), "detector": "fusion", "guidance": cfg.guidance, "sampler": "ddim",
        "steps": cfg.steps, "generations_per_prompt": cfg.k, "fpr": cfg.fpr, "copy_ratio": 1 / 3,
        "copy_reference": "round trips of the training images through the model (decode(prepare(x)))",
        "prompt_positive": f"strength >= {STRONG}", "prompt_negative": "strength == 0",
        "prompts": {k: int(sum(1 for v in ps.kind if v == k)) for k in PROMPT_KINDS},
        "split": {"grouped_by": "prompts linked by a copied training image", "calibration_fraction": cfg.calib_frac,
                  "overlap": max(r.counts["overlap"] for r in runs),
                  "per_seed": [{k: r.counts[k] for k in ("calibration", "report", "overlap")} for r in runs]},
        "methods": aggregate([r.results for r in runs]),
        "prompt_methods": aggregate([r.prompt_results for r in runs]),
        "copy_share": shares,
        "sample_seconds": summarize([r.counts["sample_seconds"] for r in runs]),
        "t_candidates": list(adapter.t_grid), "seconds": time.perf_counter() - t0,
    }
    return result, runs, ps
