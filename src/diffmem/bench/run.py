"""``diffmem sample`` and ``diffmem bench``: sample a shipped/trained model, label exactly, compare methods."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffmem.bench.protocol import (aggregate, batches, evaluate_report, grouped_split, score_settings,
                                    split_overlap, summarize, thresholds, timed_against, tune)
from diffmem.bench.dataset import load_source
from diffmem.bench.data import ASSETS, fashion_mnist_reference, fashion_mnist_train
from diffmem.bench.labels import COPY_RATIO, label_samples
from diffmem.detect.detector import candidate_layers, image_keys
from diffmem.detect.evaluation import plot_kde, plot_roc
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.methods import T_CANDIDATES, peer_methods
from diffmem.detect.metrics import fpr_threshold
from diffmem.errors import DiffmemError, check
from diffmem.models import load_adapter
from diffmem.outputs import output_dir, progress, write_json
from diffmem.plotting import plt, save, show_images
from diffmem.probe.represent import generators
from diffmem.probe.sampling import sample as sample_fn

HYBRID = ASSETS / "bench" / "hybrid"
DETECTOR = "fusion"      # the name of our shipped detector's method row


def sample_classes(adapter, n: int, classes: str | None) -> list[int] | None:
    k = getattr(adapter, "num_class_embeds", None)
    if not k:
        check(classes is None, "--classes: this model is not class-conditional")
        return None
    if classes is None:
        return [j % (k - 1) for j in range(n)]
    try:
        values = [int(c) for c in classes.split(",") if c.strip()]
    except ValueError:
        raise DiffmemError(f"--classes {classes!r}: expected comma-separated class indices") from None
    check(bool(values) and all(0 <= c < k - 1 for c in values),
          f"--classes {classes!r}: each class must lie in [0, {k - 2}]")
    return [values[j % len(values)] for j in range(n)]


def training_images(adapter) -> tuple[torch.Tensor, np.ndarray]:
    """The distinct training images (M, C, H, W) of a model trained by ``diffmem train``, and copies (M,)."""
    rec = getattr(adapter, "record", {}) or {}
    check("indices" in rec, f"{getattr(adapter, 'path', 'model')}: no diffmem.json training record; "
                            f"exact labels need the training set")
    if rec["data"] == "fashion-mnist":
        train = fashion_mnist_train(rec["indices"], rec["size"])
    else:
        train = torch.from_numpy(load_source(rec["data"], rec["size"])[0][np.asarray(rec["indices"])])
    return train, np.asarray(rec["copies"])


def run_sample(model: str | os.PathLike, out: str | os.PathLike, n: int = 64, classes: str | None = None,
               guidance: float = 1.0, steps: int = 50, sampler: str = "ddim", batch_size: int = 128,
               label: bool = True, seed: int = 0, quiet: bool = False) -> dict:
    """Write ``DIR/images/NNNNN.png`` and ``DIR/manifest.jsonl`` (path, class, and with a training
    record: nearest, d1, d2, ratio, memorized, nearest_duplicated)."""
    from PIL import Image
    adapter = load_adapter(model)
    cls = sample_classes(adapter, n, classes)
    x = sample_fn(adapter, n, cls, guidance, steps, sampler, seed, batch_size, quiet)
    lab = label_samples(x, *training_images(adapter)) if label and adapter.record.get("indices") else None
    with output_dir(out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for j, im in enumerate(x):
            name = f"images/{j:05d}.png"
            px = ((im.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)).save(tmp / name)
            row = {"path": name, "class": None if cls is None else cls[j], "seed": seed, "guidance": guidance}
            if lab is not None:
                row.update({k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in lab.items()})
                row["label"] = int(lab["memorized"][j])
            rows.append(row)
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"n": n, "guidance": guidance, "steps": steps, "sampler": sampler}
    if lab is not None:
        summary["n_memorized"] = int(lab["memorized"].sum())
    return summary


def reference_images(adapter) -> tuple[torch.Tensor, np.ndarray | None]:
    """Held-out real images the model never trained on (N, C, H, W) in [-1, 1], and their classes
    (None when the data set has none)."""
    rec = adapter.record
    if rec["data"] == "fashion-mnist":
        return fashion_mnist_reference(rec["size"])
    images, labels = load_source(rec["data"], rec["size"])
    unused = np.setdiff1d(np.arange(len(images)), rec["indices"])
    check(len(unused) >= 4, f"{rec['data']}: no held-out images left for reference statistics")
    return torch.from_numpy(images[unused]), None if labels is None else labels[unused]


def _scores(method, setting, x, keys, classes, idx, batch_size):
    return score_settings(method, [setting], batches(x, keys, classes, idx, batch_size))[0]


def _bench_seed(adapter, train, copies, reference, ref_classes, n, guidance, steps, calib_frac, fpr,
                batch_size, seed, quiet) -> dict:
    """One seed of the protocol: sample, label, grouped split, tune every method on calibration,
    measure it on the report split; the fusion detector is fitted on calibration as well."""
    cls = sample_classes(adapter, n, None)
    t0 = time.perf_counter()
    x = sample_fn(adapter, n, cls, guidance, steps, "ddim", seed, batch_size, quiet)
    sample_seconds = time.perf_counter() - t0
    lab = label_samples(x, train, copies)
    y = lab["memorized"].astype(int)
    check(y.sum() >= 4 and (1 - y).sum() >= 4,
          f"seed {seed}: only {int(y.sum())} memorized and {int((1 - y).sum())} generalized samples: too few")
    keys = image_keys(x)
    classes = torch.tensor(cls) if cls is not None else None
    calib = grouped_split(y, lab["nearest"], calib_frac, seed)
    cal, rep = np.flatnonzero(calib), np.flatnonzero(~calib)
    check(0 < y[cal].sum() < len(cal) and 0 < y[rep].sum() < len(rep),
          f"seed {seed}: the grouped split left one side without memorized or generalized samples")
    half = len(reference) // 2                          # NeMo's statistics | unlabelled thresholds
    ref_b = reference[half:]
    ref_keys = image_keys(ref_b)
    ref_cls = None if ref_classes is None else torch.as_tensor(np.asarray(ref_classes)[half:])
    ref_idx = np.arange(len(ref_b))
    layers = candidate_layers(adapter)
    conditional = classes is not None
    methods = peer_methods(adapter, layers, reference[:half], train, seed, T_CANDIDATES, conditional)
    yr, hard = y[rep], lab["hard_negative"][rep]
    results, tuning, report_scores = {}, {}, {}
    forward = lambda: _denoise_all(adapter, x, keys, rep, batch_size)  # noqa: E731
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
        results[m.name] = {**evaluate_report(s_rep, yr, hard, deploy, unl, fpr),
                           "seconds_per_image": secs / len(rep), "forward_fraction": secs / ref_secs,
                           "needs_condition": m.needs_condition, "needs_training_data": m.needs_training_data,
                           "needs_gradients": m.needs_gradients}
        tuning[m.name] = {"chosen": setting, "sign": "+" if sign > 0 else "-", "sign_flipped": sign < 0,
                          "description": m.description, "candidates": table}
        report_scores[m.name] = s_rep
    det = FusionDetector(adapter, ts=T_CANDIDATES, layers=layers, fpr=fpr, batch_size=batch_size, seed=seed)
    det.fit(x[cal], y[cal], groups=lab["nearest"][cal], keys=[keys[k] for k in cal])
    s_rep, secs, ref_secs = timed_against(lambda: det.score(x[rep], [keys[k] for k in rep]), forward)
    unl = fpr_threshold(det.score(ref_b, ref_keys), fpr)
    results[DETECTOR] = {**evaluate_report(s_rep, yr, hard, det.threshold_, unl, fpr),
                         "seconds_per_image": secs / len(rep), "forward_fraction": secs / ref_secs,
                         "needs_condition": False, "needs_training_data": False, "needs_gradients": False}
    tuning[DETECTOR] = {"chosen": {"t": det.t_, "features": det.features_}, "sign": "+", "sign_flipped": False,
                        "description": "logistic fusion of one forward's spikiness statistics and denoising "
                                       "residual, fitted on calibration (ours)", "selection": det.selection_}
    report_scores[DETECTOR] = s_rep
    frame = pd.DataFrame({"seed": seed, "sample": np.arange(n), "class": cls,
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


@torch.no_grad()
def _denoise_all(adapter, x, keys, idx, batch_size) -> None:
    """One plain denoiser forward (null condition, t = 10) over the rows idx: the cost unit."""
    for b in batches(x, keys, None, idx, batch_size):
        z = adapter.prepare(b.x)
        adapter.denoise(adapter.noise(z, T_CANDIDATES[0], generators(0, b.keys)), T_CANDIDATES[0], None)


def parse_seeds(seeds: str | None, seed: int, quick: bool) -> list[int]:
    """``--seeds 0,1,2``; default: ``seed`` alone with ``--quick``, else seed, seed+1, seed+2."""
    if seeds is None:
        return [seed] if quick else [seed, seed + 1, seed + 2]
    try:
        out = [int(v) for v in str(seeds).split(",") if v.strip()]
    except ValueError:
        raise DiffmemError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    check(bool(out) and len(set(out)) == len(out), f"--seeds {seeds!r}: need distinct seeds")
    return out


def run_bench(out: str | os.PathLike, model: str | os.PathLike | None = None, quick: bool = False,
              n_samples: int | None = None, seeds: str | None = None, guidance: float = 1.0, steps: int = 50,
              calib_frac: float = 0.5, fpr: float = 0.01, batch_size: int = 256, seed: int = 0,
              quiet: bool = False) -> dict:
    """The memorization benchmark under the protocol of :mod:`diffmem.bench.protocol`, once per seed.

    Writes ``bench.json`` (figures as {mean, sd, per_seed}), ``bench.md``, ``tuning.json``,
    ``samples.parquet``, ``roc.png``, ``score_kde.png``, ``top_memorized.png`` (first seed) and
    ``detector/`` (the fusion detector fitted on the first seed's calibration split).
    """
    check(0 < calib_frac < 1, f"--calib-frac {calib_frac}: must be in (0, 1)")
    check(0 < fpr < 0.5, f"--fpr {fpr}: must be in (0, 0.5)")
    seed_list = parse_seeds(seeds, seed, quick)
    adapter = load_adapter(model or HYBRID)
    train, copies = training_images(adapter)
    reference, ref_classes = reference_images(adapter)
    n = n_samples or (600 if quick else 1500)
    check(n >= 16, f"--n-samples {n}: must be >= 16")
    t0 = time.perf_counter()
    runs = [_bench_seed(adapter, train, copies, reference, ref_classes, n, guidance, steps, calib_frac, fpr,
                        batch_size, s, quiet) for s in seed_list]
    first = runs[0]
    result = {
        "seeds": seed_list, "detector": DETECTOR,
        "split": {"grouped_by": "nearest_training_image", "overlap": max(r["counts"]["overlap"] for r in runs),
                  "calibration_fraction": calib_frac, "stratified_by": "group holds a memorized sample",
                  "per_seed": [{k: r["counts"][k] for k in ("calibration", "report", "overlap")} for r in runs]},
        "methods": aggregate([r["results"] for r in runs]),
        "n_memorized": summarize([r["counts"]["n_memorized"] for r in runs]),
        "memorized_copies_duplicated": summarize([r["counts"]["memorized_copies_duplicated"] for r in runs]),
        "sample_seconds": summarize([r["counts"]["sample_seconds"] for r in runs]),
        "model": str(model) if model else "shipped hybrid", "guidance": guidance, "sampler": "ddim",
        "steps": steps, "n_samples": n, "fpr": fpr, "copy_ratio": COPY_RATIO, "t_candidates": list(T_CANDIDATES),
        "n_reference": {"nemo_statistics": len(reference) // 2, "unlabelled_threshold": len(reference) - len(reference) // 2},
        "seconds": time.perf_counter() - t0,
    }
    frame = pd.concat([r["frame"] for r in runs], ignore_index=True)
    with output_dir(out) as tmp:
        write_json(tmp / "bench.json", result)
        write_json(tmp / "tuning.json", {str(s): r["tuning"] for s, r in zip(seed_list, runs)})
        (tmp / "bench.md").write_text(bench_table(result))
        frame.to_parquet(tmp / "samples.parquet", index=False)
        y0 = first["lab"]["memorized"][~first["calib"]].astype(int)
        plot_roc({k: (v, y0) for k, v in first["scores"].items()}, tmp / "roc.png",
                 f"report split, seed {seed_list[0]}")
        plot_kde(first["scores"][DETECTOR], y0, tmp / "score_kde.png", f"{DETECTOR} score (report split)")
        _plot_top(first["x"], train, first["lab"], first["scores"][DETECTOR], ~first["calib"],
                  tmp / "top_memorized.png")
        first["detector"].save(tmp / "detector")
    return result


def bench_table(r: dict) -> str:
    """Markdown table of bench.json's methods (mean ± sd over seeds)."""
    from diffmem.report.html import bench_rows
    t = bench_rows(r)
    lines = [f"# Memorization benchmark (seeds {', '.join(map(str, r['seeds']))}; guidance {r['guidance']}; "
             f"split grouped by nearest training image, overlap {r['split']['overlap']})", "",
             "| " + " | ".join(t["head"]) + " |", "|" + "---|" * len(t["head"])]
    lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
    return "\n".join(lines) + "\n"


def _plot_top(x, train, lab, spk, report, path: Path, k: int = 12) -> Path:
    idx = np.flatnonzero(report)[np.argsort(-spk)[:k]]
    fig, axes = plt.subplots(2, 1, figsize=(10, 2.6))
    show_images(axes[0], x[idx].numpy(), k, "highest spikiness (report split)")
    show_images(axes[1], train[lab["nearest"][idx]].numpy(), k,
                "nearest training image; ratio " + " ".join(f"{r:.2f}" for r in lab["ratio"][idx]))
    return save(fig, path)
