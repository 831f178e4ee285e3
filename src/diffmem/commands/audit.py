"""``diffmem audit``: which of a model's samples are memorized, at a known false-positive rate, without labels."""

from __future__ import annotations

from typing import Annotated

from diffmem.commands.options import (AllowOutside, AllowPickle, BatchSize, Classes, Device, DType, Guidance,
                                      InputRange, Model, Opt, Out, Prompts, Quiet, Seed, Steps, listed, read_prompts)
from diffmem.commands.options import input_range as parse_range
from diffmem.detect.audit import (CALIBRATIONS, Audit, AuditConfig, AuditInputs, Calibration, plot_scores,
                                  run_audit)
from diffmem.errors import check
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir, write_pngs
from diffmem.plotting import plot_top_with_nearest
from diffmem.report import build_report
from diffmem.schemas import AuditFile, write_result


Images = Annotated[str | None, Opt("audit these images (folder, .npy/.npz or .jsonl manifest) instead of sampling",
                                  metavar="DIR")]
Generations = Annotated[int | None, Opt("with --prompts: this many generations of every prompt (replaces --n)",
                                        min=1, max=1000)]
Reference = Annotated[str | None, Opt("held-out real images the model never trained on (folder or .npy); default: "
                                      "held-out images of a `diffmem train` model's data", metavar="DIR")]
ReferencePrompts = Annotated[str | None, Opt("text-to-image: a file of prompts the model never trained on; the "
                                             "threshold is fitted on --n-reference generations of them (cycled) "
                                             "instead of on real images", metavar="FILE")]
Train = Annotated[str | None, Opt("training images (folder or .npy) to check every sample against (default: the "
                                  "model's training record, if any)", metavar="DIR")]
Fpr = Annotated[float, Opt("target false-positive rate on the model's samples that copy nothing", above=0, max=0.5)]
CalibrationKind = Annotated[str, Opt("fit the threshold on the reference images as the model regenerates them from "
                                     "--regenerate-t0 (regenerated), or as they are (reference)", choices=CALIBRATIONS)]
RegenerateT0 = Annotated[int, Opt("regenerated calibration: the timestep the references are regenerated from",
                                  min=1, max=999)]
Detector = Annotated[str | None, Opt("a detector saved by `diffmem bench` (default: MODEL_DIR/detector if present, "
                                     "else the label-free residual ratio at the schedule's signal-to-noise ratio 10)", metavar="DIR")]


def audit(model: Model, out: Out, images: Images = None,
          n: Annotated[int, Opt("samples to draw from the model (without --images)", min=1)] = 1000,
          classes: Classes = None, prompts: Prompts = None, generations: Generations = None,
          reference: Reference = None, reference_prompts: ReferencePrompts = None,
          n_reference: Annotated[int, Opt("reference images used at most", min=4, max=100000)] = 1000,
          train: Train = None, fpr: Fpr = 0.01, calibration: CalibrationKind = Calibration.kind,
          regenerate_t0: RegenerateT0 = Calibration.t0, detector: Detector = None,
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
    check_out(out)
    prompt_list = read_prompts(prompts)
    check(generations is None or prompt_list is not None, "--generations: only with --prompts")
    ref_prompts = read_prompts(reference_prompts)
    inputs = AuditInputs(images, generations * len(prompt_list) if generations else n, listed(classes, int, "--classes"),
                         None if prompt_list is None else tuple(prompt_list), reference,
                         None if ref_prompts is None else tuple(ref_prompts), reference_prompts, train, detector,
                         allow_other_model, parse_range(input_range), allow_outside)
    cfg = AuditConfig(fpr, Calibration(calibration, regenerate_t0, steps), n_reference, guidance, steps, batch_size,
                      n_boot, seed)
    a = run_audit(load_adapter(model, allow_pickle, device, dtype), inputs, cfg, quiet)
    write_audit(out, a)
    return a.result


def write_audit(out, a: Audit) -> None:
    """``audit.json`` (schema-checked), ``flags.parquet``, the two figures, ``images/`` when sampled, ``report.html``."""
    r = a.result
    with output_dir(out) as tmp:
        if a.sampled:
            write_pngs(a.x, tmp / "images")
        a.frame.to_parquet(tmp / "flags.parquet", index=False)
        plot_scores(a.scores, a.null_scores, r["threshold"], r["fpr_target"], r["calibration"], tmp / "audit_scores.png")
        top = a.scores.argsort()[::-1][:12]
        plot_top_with_nearest(a.x, a.scores, tmp / "top_flagged.png", "highest-scoring samples" + (
                              " (flagged)" if (a.scores[top] > r["threshold"]).all() else ""), a.train,
                              None if a.lab is None else a.lab["nearest"], None if a.lab is None else a.lab["ratio"])
        write_result(tmp / "audit.json", r, AuditFile)
        build_report(tmp)                                         # the verdict's page, next to audit.json
