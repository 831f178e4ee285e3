"""``diffmem audit``: which of a model's samples are memorized, at a known false-positive rate, without labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch

from diffmem.data.records import reference_images, training_images
from diffmem.neighbours import label_samples
from diffmem.commands.options import (AllowOutside, AllowPickle, BatchSize, Classes, Device, DType, Guidance,
                                      InputRange, Model, Opt, Out, Prompts, Quiet, Seed, Steps, listed, read_prompts)
from diffmem.commands.options import input_range as parse_range
from diffmem.data import FASHION_MNIST_CLASSES, load_images
from diffmem.data.images import image_key
from diffmem.detect.audit import CALIBRATIONS, Calibration, calibrate_on_reference, flag_quality, share_ci
from diffmem.detect.fusion import FusionDetector
from diffmem.errors import check
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir
from diffmem.plotting import plot_top_with_nearest, plt, save
from diffmem.probe.sampling import sample_images
from diffmem.report import build_report
from diffmem.schemas import AuditFile, write_result
from diffmem.data.sources import iter_inputs

DETECTOR_FOLDER = "detector"     # a model folder's own detector (saved by `diffmem bench`), used by default


def _given_images(source: str, adapter, rng=None, allow_outside: bool = False) -> tuple[torch.Tensor, list[str], list]:
    """Images (N, C, H, W) of a folder, array or manifest, their paths and prompts (manifest ``prompt``)."""
    xs, paths, conds = [], [], []
    for item in iter_inputs(source, adapter.image_size, adapter.image_channels, rng, allow_outside):
        image, _ = item.loader()                               # a bad input raises, naming itself
        xs.append(torch.from_numpy(image))
        paths.append(item.path)
        conds.append(item.prompt)
    check(len(xs) > 0, f"--images {source}: no images")
    return torch.stack(xs), paths, conds


def _verdict(r: dict) -> str:
    share, lo, hi = r["share_flagged"], *r["share_flagged_ci"]
    text = (f"{r['n_flagged']:,} of {r['n']:,} samples ({100 * share:.1f}%, 95% CI {100 * lo:.1f}–{100 * hi:.1f}%) "
            f"look memorized at a {100 * r['fpr_target']:g}% false-positive rate "
            f"(realized {100 * r['realized_fpr_reference']:.1f}% on {r['n_reference']:,} {r['calibration']}"
            + ("" if r.get("fpr_real_reference") is None else
               f"; {100 * r['fpr_real_reference']:.1f}% of the real images themselves") + ").")
    if r.get("precision") is not None or r.get("recall") is not None:
        p = "—" if r["precision"] is None else f"{100 * r['precision']:.0f}%"
        rc = "—" if r["recall"] is None else f"{100 * r['recall']:.0f}%"
        text += (f" Against the training set, {r['n_copies']:,} samples are copies; {p} of the flags are copies "
                 f"and {rc} of the copies are flagged.")
        if r.get("fpr_generated_non_copies") is not None:
            text += f" Of the samples that copy nothing, {100 * r['fpr_generated_non_copies']:.1f}% are flagged."
    return text


def audit(model: Model, out: Out,
          images: Annotated[str | None, Opt("audit these images (folder, .npy/.npz or .jsonl manifest) instead of "
                                            "sampling", metavar="DIR")] = None,
          n: Annotated[int, Opt("samples to draw from the model (without --images)", min=1)] = 1000,
          classes: Classes = None, prompts: Prompts = None,
          generations: Annotated[int | None, Opt("with --prompts: this many generations of every prompt "
                                                 "(replaces --n)", min=1, max=1000)] = None,
          reference: Annotated[str | None, Opt("held-out real images the model never trained on (folder or "
                                               ".npy); default: held-out images of a `diffmem train` model's "
                                               "data", metavar="DIR")] = None,
          reference_prompts: Annotated[str | None, Opt("text-to-image: a file of prompts the model never trained on; "
                                                       "the threshold is fitted on --n-reference generations of "
                                                       "them (cycled) instead of on real images", metavar="FILE")] = None,
          n_reference: Annotated[int, Opt("reference images used at most", min=4, max=100000)] = 1000,
          train: Annotated[str | None, Opt("training images (folder or .npy) to check every sample against "
                                           "(default: the model's training record, if any)", metavar="DIR")] = None,
          fpr: Annotated[float, Opt("target false-positive rate on the model's samples that copy nothing",
                                    above=0, max=0.5)] = 0.01,
          calibration: Annotated[str, Opt("fit the threshold on the reference images as the model regenerates "
                                          "them from --regenerate-t0 (regenerated), or as they are (reference)",
                                          choices=CALIBRATIONS)] = Calibration.kind,
          regenerate_t0: Annotated[int, Opt("regenerated calibration: the timestep the references are "
                                            "regenerated from", min=1, max=999)] = Calibration.t0,
          detector: Annotated[str | None, Opt("a detector saved by `diffmem bench` (default: MODEL_DIR/detector "
                                              "if present, else the label-free denoising residual)",
                                              metavar="DIR")] = None,
          allow_other_model: Annotated[bool, Opt("apply a --detector fitted on other model weights")] = False,
          guidance: Guidance = 1.0, steps: Steps = 50, batch_size: BatchSize = 256,
          n_boot: Annotated[int, Opt("bootstrap resamples of the flagged share", min=1)] = 1000,
          input_range: InputRange = None, allow_outside: AllowOutside = False,
          device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
          seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Sample N images from the model (or take --images), calibrate a threshold at --fpr on held-out
    real images, flag every sample, and — with the training set — check the flags against exact copies.

    Writes ``audit.json``, ``flags.parquet`` (one row per sample), ``audit_scores.png``,
    ``top_flagged.png``, ``report.html`` (the verdict first) and, when sampling, ``images/NNNNN.png``.
    With ``--prompts``, ``audit.json``'s ``per_condition`` has one row per prompt with its generations'
    ``flags`` and, given training data, its ``strength`` (the share of its generations that copy)."""
    t0 = time.perf_counter()
    check_out(out)
    check(images is None or (classes is None and prompts is None),
          "--classes/--prompts: only when sampling (without --images)")
    prompt_list = read_prompts(prompts)
    check(generations is None or prompt_list is not None, "--generations: only with --prompts")
    if generations is not None:
        n = generations * len(prompt_list)
    rng = parse_range(input_range)
    cal = Calibration(calibration, regenerate_t0, steps)
    adapter = load_adapter(model, allow_pickle, device, dtype)
    # inputs resolved and checked before any expensive work
    ref_prompts = read_prompts(reference_prompts)
    check(ref_prompts is None or (reference is None and images is None),
          "--reference-prompts: not with --reference or --images")
    calibration = cal.describe("held-out real images")
    if ref_prompts is not None:
        ref_conds = adapter.conditions(n_reference, prompts=ref_prompts)
        ref, ref_name = None, reference_prompts
        cal = Calibration("reference")                     # generations already are the model's renderings
        calibration = f"generations of {len(ref_prompts):,} never-trained prompts"
    elif reference is not None:
        ref = torch.from_numpy(load_images(reference, size=adapter.image_size, channels=adapter.image_channels,
                                           limit=n_reference, input_range=rng))
        ref_name = reference
    else:
        check(adapter.record is not None, f"--reference: {model} has no training record; pass held-out real "
                                          f"images the model never trained on")
        ref = reference_images(adapter)[0][:n_reference]
        ref_name = f"held-out images of {adapter.record.data}"
    if train is not None:
        train_x = torch.from_numpy(load_images(train, size=adapter.image_size, channels=adapter.image_channels,
                                               input_range=rng))
        check(len(train_x) >= 2, f"--train {train}: need at least 2 training images")
        train_name = train
    elif adapter.record is not None:
        train_x, train_name = training_images(adapter)[0], "training record"
    else:
        train_x, train_name = None, None
    det_dir = Path(detector) if detector is not None else Path(model) / DETECTOR_FOLDER
    if detector is not None or det_dir.is_dir():
        det = FusionDetector.load(det_dir, adapter, allow_other_model)
        det_source = detector or f"{DETECTOR_FOLDER}/ of the model"
    else:
        det, det_source = FusionDetector.residual_only(adapter, seed=seed), "label-free denoising residual"
    det.batch_size, det.fpr = batch_size, fpr
    if images is not None:
        x, paths, conds = _given_images(images, adapter, rng, allow_outside)
    else:
        conds = adapter.conditions(n, classes=listed(classes, int, "--classes"), prompts=prompt_list)
        x = sample_images(adapter, n, conds, guidance, steps, "ddim", seed, batch_size, quiet)
        paths = [f"images/{j:05d}.png" for j in range(n)]
    if ref is None:                       # generations of the reference prompts, from noise the samples do not use
        ref = sample_images(adapter, n_reference, ref_conds, guidance, steps, "ddim", seed, batch_size, quiet,
                            indices=range(len(x), len(x) + n_reference))
    null = cal.null_images(adapter, ref, seed, batch_size)
    ref_scores = det.score(null, [image_key(im) for im in null])
    threshold, realized = calibrate_on_reference(ref_scores, fpr, seed)
    real_fpr = float((det.score(ref, [image_key(im) for im in ref]) > threshold).mean()) if null is not ref else None
    scores = det.score(x, [image_key(im) for im in x])
    flags = scores > threshold
    share, lo, hi = share_ci(flags, n_boot, seed=seed)
    frame = pd.DataFrame({"index": np.arange(len(x)), "path": paths,
                          "condition": [None if c is None else str(c) for c in (conds or [None] * len(x))],
                          "score": scores, "flagged": flags})
    result = {"n": len(x), "n_flagged": int(flags.sum()), "share_flagged": share, "share_flagged_ci": [lo, hi],
              "threshold": threshold, "fpr_target": fpr, "realized_fpr_reference": realized,
              "fpr_real_reference": real_fpr, "n_reference": len(ref), "calibration": calibration,
              "calibration_settings": {"kind": cal.kind, "t0": cal.t0 if cal.kind == "regenerated" else None,
                                       "steps": cal.steps}, "detector": {"source": det_source, "t": det.t_, "features": det.features_},
              "model": str(model), "images": images, "reference": ref_name, "train": train_name,
              "sampled": images is None, "guidance": guidance if images is None else None,
              "steps": steps if images is None else None, "seed": seed}
    lab = None
    if train_x is not None:
        # copies are judged against what the model can reproduce of each training image (its VAE round trip)
        lab = label_samples(x, adapter.round_trip(train_x), np.ones(len(train_x)))
        frame["nearest"], frame["d1"], frame["d2"] = lab["nearest"], lab["d1"], lab["d2"]
        frame["ratio"], frame["copy"] = lab["ratio"], lab["memorized"]
        result.update(flag_quality(flags, lab["memorized"]))
    names = FASHION_MNIST_CLASSES if (adapter.record is not None and adapter.record.data == "fashion-mnist"
                                      and adapter.condition_kind == "class" and images is None) else None
    result["per_condition"] = _per_condition(frame, names, with_flags=adapter.condition_kind == "prompt")
    result["verdict"] = _verdict(result)
    result["seconds"] = time.perf_counter() - t0
    with output_dir(out) as tmp:
        if images is None:
            _write_pngs(x, tmp / "images")
        frame.to_parquet(tmp / "flags.parquet", index=False)
        _plot_scores(scores, ref_scores, threshold, fpr, calibration, tmp / "audit_scores.png")
        top = scores.argsort()[::-1][:12]
        plot_top_with_nearest(x, scores, tmp / "top_flagged.png",
                              "highest-scoring samples" + (" (flagged)" if flags[top].all() else ""), train_x,
                              None if lab is None else lab["nearest"], None if lab is None else lab["ratio"])
        write_result(tmp / "audit.json", result, AuditFile)
        build_report(tmp)                                         # the verdict's page, next to audit.json
    return result


def _per_condition(frame: pd.DataFrame, names=None, with_flags: bool = False) -> list[dict]:
    """Counts per class or prompt (``name``: the class's name when known); ``with_flags`` (prompts): also
    each generation's flag in sample order and, with training data, the prompt's ``strength`` (the share of
    its generations that copy a training image)."""
    rows = []
    for cond, g in frame.groupby(frame["condition"].fillna("all"), sort=True):
        row = {"condition": cond, "n": int(len(g)), "n_flagged": int(g["flagged"].sum()),
               "share_flagged": float(g["flagged"].mean())}
        if names is not None and str(cond).isdigit() and int(cond) < len(names):
            row["name"] = names[int(cond)]
        if "copy" in g:
            row["n_copies"] = int(g["copy"].sum())
        if with_flags:
            row["flags"] = [bool(v) for v in g["flagged"]]
            if "copy" in g:
                row["strength"] = float(g["copy"].mean())
        rows.append(row)
    return rows


def _write_pngs(x: torch.Tensor, folder: Path) -> None:
    from PIL import Image
    folder.mkdir()
    for j, im in enumerate(x):
        px = ((im + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)).save(folder / f"{j:05d}.png")


def _plot_scores(scores, ref_scores, threshold, fpr, what, path):
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    lo, hi = np.percentile(np.r_[scores, ref_scores], [0.5, 99.5])
    bins = np.linspace(lo, hi, 50)
    ax.hist(ref_scores, bins=bins, density=True, alpha=0.5, color="tab:blue", label=what)
    ax.hist(scores, bins=bins, density=True, alpha=0.5, color="tab:red", label="audited samples")
    ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold ({100 * fpr:g}% FPR)")
    ax.set_xlabel("memorization score (higher = more likely memorized)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return save(fig, path)
