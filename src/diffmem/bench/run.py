"""``diffmem sample`` and ``diffmem bench``: sample a shipped/trained model, label exactly, compare methods."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffmem.bench.baselines import Batch, Setting, methods
from diffmem.bench.dataset import load_source
from diffmem.bench.data import ASSETS, fashion_mnist_reference, fashion_mnist_train
from diffmem.bench.labels import COPY_RATIO, label_samples
from diffmem.detect.detector import image_keys, select_layer
from diffmem.detect.evaluation import plot_kde, plot_roc
from diffmem.detect.metrics import auroc, evaluate
from diffmem.errors import DiffmemError, check
from diffmem.models import load_adapter
from diffmem.outputs import output_dir, progress, write_json
from diffmem.plotting import plt, save, show_images
from diffmem.probe.sampling import sample as sample_fn

HYBRID = ASSETS / "bench" / "hybrid"
T_CANDIDATES = (10, 50, 100, 200)


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


def _reference_images(adapter) -> torch.Tensor:
    """Held-out real images (never trained on) for NeMo's reference statistics."""
    rec = adapter.record
    if rec["data"] == "fashion-mnist":
        return fashion_mnist_reference(rec["size"])[0]
    images = load_source(rec["data"], rec["size"])[0]
    unused = np.setdiff1d(np.arange(len(images)), rec["indices"])
    check(len(unused) >= 2, f"{rec['data']}: no held-out images left for reference statistics")
    return torch.from_numpy(images[unused])


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


def _split(y: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified calibration split."""
    rng = np.random.default_rng(seed)
    calib = np.zeros(len(y), dtype=bool)
    for v in (0, 1):
        idx = np.flatnonzero(y == v)
        calib[rng.permutation(idx)[:int(round(frac * len(idx)))]] = True
    return calib


def tune_spikiness(adapter, x: torch.Tensor, y: np.ndarray, seed: int, ts=T_CANDIDATES,
                   batch_size: int = 256) -> list[dict]:
    """AUROC of std(pooled layer) for every candidate layer × timestep on a calibration set
    (:func:`~diffmem.detect.detector.select_layer` at each t), best first."""
    pos, neg = x[torch.from_numpy(y == 1)], x[torch.from_numpy(y == 0)]
    rows = [{**r, "t": t} for t in progress(ts, desc="tune layer/t")
            for r in select_layer(adapter, pos, neg, t=t, seed=seed, batch_size=batch_size)]
    return sorted(rows, key=lambda r: -r["auroc"])


def run_bench(out: str | os.PathLike, model: str | os.PathLike | None = None, quick: bool = False,
              n_samples: int | None = None, guidance: float = 1.0, steps: int = 50, calib_frac: float = 0.3,
              batch_size: int = 128, seed: int = 0, quiet: bool = False) -> dict:
    """Sample, label exactly, tune spikiness on a calibration split, evaluate every method on the rest.

    Writes ``bench.json``, ``bench.md``, ``roc.png``, ``score_kde.png``, ``top_memorized.png``,
    ``tuning.json`` and ``samples.parquet`` into ``out``.
    """
    check(0 < calib_frac < 1, f"--calib-frac {calib_frac}: must be in (0, 1)")
    adapter = load_adapter(model or HYBRID)
    train, copies = training_images(adapter)
    n = n_samples or (600 if quick else 1500)
    cls = sample_classes(adapter, n, None)
    t0 = time.perf_counter()
    x = sample_fn(adapter, n, cls, guidance, steps, "ddim", seed, batch_size, quiet)
    sample_seconds = time.perf_counter() - t0
    lab = label_samples(x, train, copies)
    y = lab["memorized"].astype(int)
    check(y.sum() >= 4 and (1 - y).sum() >= 4,
          f"only {int(y.sum())} memorized and {int((1 - y).sum())} generalized samples: too few to evaluate")
    keys = image_keys(x)
    calib = _split(y, calib_frac, seed)
    tuning = tune_spikiness(adapter, x[calib], y[calib], seed)
    best = tuning[0]
    setting = Setting(best["layer"], best["t"], adapter.default_pool, seed)
    reference = _reference_images(adapter)
    report = ~calib
    classes = torch.tensor(cls)
    results, scores = {}, {}
    for m in methods(adapter, setting, reference, train):
        def run(mask):
            idx = np.flatnonzero(mask)
            parts = [m.score(Batch(x[idx[i:i + batch_size]], [keys[j] for j in idx[i:i + batch_size]],
                                   classes[idx[i:i + batch_size]])) for i in range(0, len(idx), batch_size)]
            return np.concatenate(parts)
        sign = 1.0 if auroc(run(calib), y[calib]) >= 0.5 else -1.0
        t1 = time.perf_counter()
        s = run(report)
        secs = (time.perf_counter() - t1) / report.sum()
        scores[m.name] = sign * s
        results[m.name] = {**evaluate(sign * s, y[report], seed=seed), "sign": "+" if sign > 0 else "-",
                           "sign_flipped": sign < 0, "seconds_per_image": secs,
                           "needs_condition": m.needs_condition, "needs_training_data": m.needs_training_data}
    hard = lab["hard_negative"][report]
    spk = scores["spikiness"]
    yr = y[report]
    result = {
        "n_memorized": int(y.sum()), "n_generalized": int((1 - y).sum()),
        "n_report": {"memorized": int(yr.sum()), "generalized": int((1 - yr).sum()), "hard_negative": int(hard.sum())},
        "n_calibration": {"memorized": int(y[calib].sum()), "generalized": int((1 - y[calib]).sum())},
        "methods": results,
        "spikiness_setting": {"layer": setting.layer, "t": setting.t, "pool": setting.pool,
                              "calibration_auroc": best["auroc"]},
        "spikiness_vs_hard_negatives_auroc": (auroc(np.r_[spk[yr == 1], spk[hard]],
                                                    np.r_[np.ones(int(yr.sum())), np.zeros(int(hard.sum()))])
                                              if hard.any() and yr.any() else None),
        "speed_ratio_spikiness_over_wen": results["spikiness"]["seconds_per_image"] / results["wen"]["seconds_per_image"],
        "model": str(adapter.path), "guidance": guidance, "sampler": "ddim", "steps": steps, "seed": seed,
        "n_samples": n, "copy_ratio": COPY_RATIO, "sample_seconds": sample_seconds,
        "memorized_copies_duplicated": float(lab["nearest_duplicated"][y == 1].mean()) if y.any() else None,
    }
    frame = pd.DataFrame({"sample": np.arange(n), "class": cls, "split": np.where(calib, "calibration", "report"),
                          **{k: v for k, v in lab.items()}})
    for name, s in scores.items():
        frame.loc[report, f"score_{name}"] = s
    with output_dir(out) as tmp:
        write_json(tmp / "bench.json", result)
        write_json(tmp / "tuning.json", tuning)
        (tmp / "bench.md").write_text(bench_table(result))
        frame.to_parquet(tmp / "samples.parquet", index=False)
        plot_roc({k: (v, yr) for k, v in scores.items()}, tmp / "roc.png", "report split")
        plot_kde(spk, yr, tmp / "score_kde.png", f"spikiness: std of {setting.layer} at t={setting.t}")
        _plot_top(x, train, lab, spk, report, tmp / "top_memorized.png")
    return result


def bench_table(r: dict) -> str:
    """Markdown table of bench.json's methods."""
    lines = [f"# Memorization benchmark ({r['n_report']['memorized']} memorized / "
             f"{r['n_report']['generalized']} generalized on the report split; guidance {r['guidance']})", "",
             "| method | AUROC [95% CI] | TPR@1%FPR | TPR@1%FPR (Wen) | s/image | sign | needs condition | "
             "needs training data |", "|---|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        lo, hi = m["auroc_ci"]
        lines.append(f"| {name} | {m['auroc']:.3f} [{lo:.3f}, {hi:.3f}] | {m['tpr_at_1pct_fpr']:.3f} | "
                     f"{m['tpr_at_1pct_fpr_wen']:.3f} | {m['seconds_per_image'] * 1e3:.2f} ms | {m['sign']} | "
                     f"{'yes' if m['needs_condition'] else 'no'} | {'yes' if m['needs_training_data'] else 'no'} |")
    s = r["spikiness_setting"]
    lines += ["", f"Spikiness layer `{s['layer']}` at t={s['t']} ({s['pool']}), chosen on the calibration split "
              f"(AUROC {s['calibration_auroc']:.3f} there). Spikiness/Wen time ratio: "
              f"{r['speed_ratio_spikiness_over_wen']:.2f}.", ""]
    return "\n".join(lines)


def _plot_top(x, train, lab, spk, report, path: Path, k: int = 12) -> Path:
    idx = np.flatnonzero(report)[np.argsort(-spk)[:k]]
    fig, axes = plt.subplots(2, 1, figsize=(10, 2.6))
    show_images(axes[0], x[idx].numpy(), k, "highest spikiness (report split)")
    show_images(axes[1], train[lab["nearest"][idx]].numpy(), k,
                "nearest training image; ratio " + " ".join(f"{r:.2f}" for r in lab["ratio"][idx]))
    return save(fig, path)
