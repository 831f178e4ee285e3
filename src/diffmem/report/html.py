"""``diffmem report DIR``: one self-contained HTML page (figures embedded, no network requests)
built from any diffmem output folder. It reads result files only, never models."""

from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from diffmem.detect.audit import band_label
from diffmem.errors import DiffmemError
from diffmem.schemas import (AuditFile, BenchFile, MonitorFile, SteerFile, TuningFile, VerifyFile,
                             read_result)
from diffmem.plotting import plt

# figure file name → (section, caption: what it shows and what to look for)
FIGURES = {
    "top_flagged.png": ("Flagged samples", "Top row: the highest-scoring audited samples; bottom row: the nearest "
                        "training image of each, with the distance ratio d1/d2. Look for identical pairs (ratio "
                        "below 1/3 is a copy); a flagged sample with a large ratio is a false alarm."),
    "audit_scores.png": ("Score distribution", "Blue: held-out real images the model never trained on; red: the "
                         "audited samples; dashed: the threshold fitted on the blue scores at the target "
                         "false-positive rate. Look for a red mode right of the line that the blue lacks: "
                         "the memorized samples."),
    "roc.png": ("Detection benchmark", "ROC of every method on the report split (first seed), linear and log "
                "false-positive axes. Look for curves hugging the top-left, especially below 1% FPR, where a "
                "deployed detector works."),
    "score_kde.png": ("Detection benchmark", "Score densities of memorized (red) and generalized (blue) samples. "
                      "Look for little overlap: the overlap is where any threshold errs."),
    "top_memorized.png": ("Detection benchmark", "The highest-scoring report samples above their nearest training "
                          "images. Look for exact copies at the top of the ranking."),
    "layer_auroc.png": ("Detection benchmark", "Calibration AUROC of the paper's spikiness score per layer (best "
                        "timestep). Look for the depth where memorization is most visible."),
    "verify_products.png": ("Theory", "Trained (left) and closed-form (right) weight products WWᵀ in each regime. "
                            "Look for matching block structure: training finds the predicted minimizer."),
    "verify_representations.png": ("Theory", "Hidden representations of training samples: memorizing models put "
                                   "the energy on one unit (spiky), generalizing ones spread it (balanced)."),
    "phase.png": ("Theory", "Phase diagram over samples per cluster and hidden units. Look for the boundary where "
                  "columns stop aligning with single samples: memorization gives way to generalization."),
    "diffusion_samples.png": ("Theory", "Samples of the ReLU diffusion model above their nearest training images. "
                              "Look for near-copies when the model has few training images."),
    "steer_grid.png": ("Steering", "Rows: memorized (mem) and generalized (gen) samples; columns: steering "
                       "strength toward the concept. Look for rows that move steadily toward the concept; the "
                       "paper predicts generalized rows edit smoothly while memorized rows resist, then jump."),
    "monitor.png": ("Training monitor", "Memorization signals over training steps, with the alarm and the ground "
                    "truth marked. Look for the alarm firing before copies appear."),
}
SECTION_ORDER = ("Flagged samples", "Score distribution", "Detection benchmark", "Theory", "Steering",
                 "Training monitor", "Other figures")
METHOD_NAMES = {"fusion": "Fusion detector (ours)", "spikiness": "Spikiness (the paper)",
                "denoising_loss": "Denoising loss", "output_norm": "Output norm (SimA)",
                "nemo": "NeMo-style z-score", "wen": "Wen et al.", "sharpness": "Sharpness (Jeon et al.)",
                "anisotropy": "Anisotropy (Asthana & Belagiannis)", "nn_oracle": "Nearest-neighbour oracle",
                "random": "Random"}
MONITOR_BASELINES = {"loss_gap.welch": "loss-gap alarm (Welch)", "stable_rank.chart": "stable-rank alarm"}
MAX_BYTES = 2_000_000


def results_root(root: str | os.PathLike) -> Path:
    """``root`` as a Path, or one clear error when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise DiffmemError(f"{root}: no such folder")
    return root


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _layer_bars(tuning: dict) -> bytes:
    """Per-layer calibration AUROC of spikiness (best timestep per layer, first seed) as a PNG."""
    best: dict[str, dict] = {}
    first = next(iter(tuning.values()))
    for cand in first["spikiness"]["candidates"]:
        row = {"layer": cand["setting"]["layer"], "t": cand["setting"]["t"],
               "auroc": max(cand["auroc"], 1 - cand["auroc"])}
        if row["layer"] not in best or row["auroc"] > best[row["layer"]]["auroc"]:
            best[row["layer"]] = row
    rows = sorted(best.values(), key=lambda r: r["auroc"])
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2))
    ax.barh([f"{r['layer']} (t={r['t']})" for r in rows], [r["auroc"] for r in rows], color="tab:purple")
    ax.set_xlim(min(0.5, min(r["auroc"] for r in rows)), 1.0)
    ax.set_xlabel("AUROC of std(pooled layer), calibration split")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _ms(v: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """A ``{mean, sd, per_seed}`` figure as "mean ± sd"."""
    return "—" if not v else f"{v['mean'] * scale:.{digits}f} ± {v['sd'] * scale:.{digits}f}"


def bench_rows(bench: dict, names: dict | None = None) -> dict:
    """``{"head", "rows"}`` of the method table of a ``bench.json`` (mean ± sd over seeds)."""
    names = names or {}
    methods = bench.get("methods", {})
    prompt_level = any("spearman" in m for m in methods.values())
    head = ["method", "AUROC", "TPR@1%FPR (oracle)", "deployable FPR / TPR", "unlabelled FPR / TPR",
            "Spearman with strength" if prompt_level else "hard-negative AUROC"] + ([] if prompt_level else ["× forward"])
    rows = []
    for name, m in methods.items():
        unl = m.get("unlabelled") or {}
        label = names.get(name, name + (" (ours)" if name == bench.get("detector") else ""))
        rows.append([label, _ms(m["auroc"]), _ms(m["tpr_at_1pct_fpr"]),
                     f"{_ms(m['deployable']['fpr'])} / {_ms(m['deployable']['tpr'])}",
                     f"{_ms(unl.get('fpr'))} / {_ms(unl.get('tpr'))}",
                     _ms(m.get("spearman" if prompt_level else "hard_negative_auroc"))]
                    + ([] if prompt_level else [_ms(m.get("forward_fraction"), digits=2)]))
    return {"head": head, "rows": rows}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _verdict(audit: dict) -> dict:
    """The headline of an ``audit.json``: its sentence and the big numbers."""
    lo, hi = audit["share_flagged_ci"]
    numbers = [("flagged", f"{audit['n_flagged']:,} / {audit['n']:,}"),
               ("share flagged", f"{_pct(audit['share_flagged'])} [{_pct(lo)}, {_pct(hi)}]"),
               ("false-positive rate", f"{_pct(audit['fpr_target'])} target · {_pct(audit['realized_fpr_reference'])} "
                                       f"realized")]
    if audit.get("fpr_generated_non_copies") is not None:
        numbers.append(("FPR on generated non-copies", _pct(audit["fpr_generated_non_copies"])))
        for band, b in (audit.get("fpr_by_ratio") or {}).items():
            numbers.append((f"… at d1/d2 {band_label(band)} (n = {b['n']:,})", _pct(b["fpr"])))
    if audit.get("precision") is not None or audit.get("recall") is not None:
        numbers += [("precision", _pct(audit.get("precision"))), ("recall", _pct(audit.get("recall")))]
    numbers.append(("calibrated on", audit.get("calibration", "—")))
    return {"sentence": audit["verdict"], "numbers": numbers}


@contextlib.contextmanager
def _shape(path: Path):
    """A results file of the wrong shape (valid JSON, missing or mistyped keys) is one error naming it."""
    try:
        yield
    except DiffmemError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise DiffmemError(f"{path}: not a complete diffmem result ({type(exc).__name__}: {exc})") from None


def _tables(root: Path) -> list[dict]:
    """Designed tables from the JSON results: per-condition audit counts, the benchmark, theory, steering, monitor."""
    tables = []
    for path in sorted(root.rglob("audit.json")):
        with _shape(path):
            a = read_result(path, AuditFile)
            rows_in = a.get("per_condition") or []
            if rows_in and "flags" in rows_in[0]:
                top = sorted(rows_in, key=lambda r: (-r["share_flagged"], str(r["condition"])))[:20]
                strength = "strength" in top[0]
                tables.append({"section": "Score distribution", "title": "Most-flagged prompts",
                               "head": ["prompt", "generations", "flagged", "share flagged"] + (
                                   ["strength (share that copy)"] if strength else []),
                               "rows": [[str(r["condition"]), f"{r['n']:,}", "".join("■" if f else "□" for f in r["flags"]),
                                         _pct(r["share_flagged"])] + ([_pct(r["strength"])] if strength else [])
                                        for r in top],
                               "note": "The 20 prompts with the largest share of flagged generations (■ flagged, "
                                       "□ not). Strength, with a training record: the share of the prompt's "
                                       "generations that copy a training image."})
            elif rows_in:
                head = ["condition", "samples", "flagged", "share flagged"] + (
                    ["copies"] if "n_copies" in a["per_condition"][0] else [])
                rows = [[str(r.get("name", r["condition"])), f"{r['n']:,}", f"{r['n_flagged']:,}",
                         _pct(r["share_flagged"])] + ([f"{r['n_copies']:,}"] if "n_copies" in r else [])
                        for r in a["per_condition"]]
                tables.append({"section": "Score distribution", "title": "Flags per class or prompt", "head": head,
                               "rows": rows, "note": "Look for classes with many flags: duplicated training images "
                                                     "concentrate there."})
    for path in sorted(root.rglob("bench.json")):
        with _shape(path):
            b = read_result(path, BenchFile)
            t = bench_rows(b, {k: v for k, v in METHOD_NAMES.items()})
            seeds = ", ".join(map(str, b.get("seeds", [])))
            tables.append({"section": "Detection benchmark", "title": "Every method under one protocol", **t,
                           "note": f"Mean ± sd over seeds {seeds}; calibration and report split by nearest training "
                                   f"image (overlap {b['split']['overlap']}); every method tuned on calibration only. "
                                   f"Deployable: threshold fitted on calibration negatives; unlabelled: fitted on "
                                   f"held-out real images; × forward: cost relative to one denoiser forward."})
            if b.get("prompt_methods"):
                t = bench_rows({**b, "methods": b["prompt_methods"]}, {k: v for k, v in METHOD_NAMES.items()})
                tables.append({"section": "Detection benchmark", "title": "Per prompt: strength ≥ 0.5 against strength 0",
                               **t, "note": f"{b['generations_per_prompt']} generations per prompt at guidance "
                                            f"{b['guidance']}; a prompt's score is the mean of its generations'; "
                                            f"strength = the share of its generations that copy. Unlabelled: "
                                            f"threshold fitted on prompts never trained on."})
    for path in sorted(root.rglob("verify.json")):
        with _shape(path):
            v = read_result(path, VerifyFile)
            rows = [[r, f"{d['rel_err']:.4f}", f"{d['rep_std_train']:.3f}"] for r, d in v["regimes"].items()]
            tables.append({"section": "Theory", "title": "Trained ReLU-DAEs against the closed-form minimizers",
                           "head": ["regime", "relative error ‖WWᵀ − W*W*ᵀ‖/‖W*W*ᵀ‖", "representation std (train)"],
                           "rows": rows, "note": "Relative errors near 0: training reaches the predicted minimizer."})
    for path in sorted(root.rglob("monitor.json")):
        with _shape(path):
            m = read_result(path, MonitorFile)
            step = lambda v: "never" if v is None else f"{v:,}"  # noqa: E731
            rows = [[name, step(r["alarm_step"]), step(r.get("onset_step")),
                     *(step(r["baselines"].get(k)) for k in MONITOR_BASELINES)] for name, r in m["runs"].items()]
            tables.append({"section": "Training monitor", "title": "When each alarm fired (training step)",
                           "head": ["run", "spikiness alarm (ours)", "copies ≥ 2% (ground truth)",
                                    *MONITOR_BASELINES.values()], "rows": rows,
                           "note": "Rules fixed in advance: ours and the Welch loss gap fire at p < 0.001 against "
                                   "held-out images; the stable rank leaves 3 sd of its first 3 checkpoints twice in a "
                                   "row. An alarm at or before the onset is early; any alarm on a control run is false."})
    for path in sorted(root.rglob("steer.json")):
        with _shape(path):
            s = read_result(path, SteerFile)
            ci = lambda d, k, f: f"{d[k]:{f}}" + (f" [{d[k + '_ci'][0]:{f}}, {d[k + '_ci'][1]:{f}}]"  # noqa: E731
                                                   if k + "_ci" in d else "") if d.get(k) is not None else "—"
            rows = [[g, str(d["n"]), ci(d, "attribute_gain", ".3f"), ci(d, "monotonicity", ".2f"),
                     ci(d, "pixel_jump_fraction", ".2f"), ci(d, "output_change_per_unit", ".2f")]
                    for g, d in s["groups"].items() if d.get("n")]
            measure = s.get("measure") or "classifier P(concept)"
            tables.append({"section": "Steering", "title": f"Steering toward {s['concept']}",
                           "head": ["group", "samples", "attribute gain [95% CI]", "monotonicity", "pixel jump fraction",
                                    "change per unit strength"], "rows": rows,
                           "note": f"Attribute: {measure}; gain = its rise from strength 0 to the largest strength. "
                                   "Pixel jump fraction: share of a sample's path taken in its largest step (1 = one "
                                   "jump). Brackets: 95% bootstrap CIs over samples."})
    return tables


def _figures(root: Path) -> list[dict]:
    """Known figures (and a few unknown ones) as data URIs; sample image folders are never listed."""
    figs = []
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if any(part.startswith(".") or part == "images" for part in rel.parts):
            continue
        section, caption = FIGURES.get(p.name, (None, None))
        if section is None and p.name.startswith(("weights_", "representations_")):
            section, caption = "Theory", ("Weight columns / hidden representations of the memorizing and "
                                          "generalizing ReLU-DAE. Look for columns that are single training images.")
        figs.append({"section": section or "Other figures", "title": rel.as_posix(),
                     "caption": caption or "", "uri": _data_uri(p.read_bytes())})
    for path in sorted(root.rglob("tuning.json")):
        with _shape(path):
            tuning = read_result(path, TuningFile)
            first = next(iter(tuning.values()))
            if isinstance(first, dict) and "spikiness" in first:
                section, caption = FIGURES["layer_auroc.png"]
                figs.append({"section": section, "title": f"{path.parent.relative_to(root).as_posix()}/per-layer AUROC",
                             "caption": caption, "uri": _data_uri(_layer_bars(tuning))})
    return figs


def build_report(root: str | os.PathLike, out_name: str = "report.html") -> Path:
    """Write ``root/report.html`` — the verdict first (from an ``audit.json``), then flagged samples,
    score distribution, per-class table, benchmark, theory and steering — and return its path."""
    root = results_root(root)
    audits = sorted(root.rglob("audit.json"))
    verdict = None
    if audits:
        with _shape(audits[0]):
            verdict = _verdict(read_result(audits[0], AuditFile))
    tables, figs = _tables(root), _figures(root)
    if not tables and not figs and verdict is None:
        raise DiffmemError(f"{root}: no diffmem results (no metrics JSON or figures) to report")
    sections = []
    for name in SECTION_ORDER:
        f = [x for x in figs if x["section"] == name]
        t = [x for x in tables if x["section"] == name]
        if f or t:
            sections.append({"name": name, "figures": f, "tables": t})
    env = Environment(loader=PackageLoader("diffmem.report", "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(title=f"diffmem report: {root.resolve().name}",
                                                     verdict=verdict, sections=sections)
    if len(html.encode()) > MAX_BYTES:
        raise DiffmemError(f"{root}: the report would weigh {len(html.encode()) / 1e6:.1f} MB (limit 2 MB)")
    out = root / out_name
    tmp = out.with_name(f".{out_name}.tmp")
    tmp.write_text(html)
    os.replace(tmp, out)
    return out
