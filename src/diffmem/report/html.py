"""``diffmem report DIR``: one self-contained HTML page (figures embedded, no network requests)
built from any diffmem output folder. It reads result files only, never models."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from diffmem.errors import DiffmemError
from diffmem.outputs import read_json
from diffmem.plotting import plt

# section → file names that belong to it (matched on the PNG's name)
SECTIONS = {
    "Detection benchmark": ("roc.png", "score_kde.png", "top_memorized.png", "layer_auroc.png"),
    "Theory": ("verify_products.png", "verify_representations.png", "phase.png", "diffusion_samples.png"),
    "Steering": ("steer_grid.png",),
}
KNOWN_JSON = ("bench.json", "metrics.json", "summary.json", "verify.json", "phase.json", "weights.json",
              "diffusion.json", "steer.json", "theory_bench.json", "probe_bench.json", "scan_bench.json",
              "tuning.json")


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


def _summary_rows(name: str, data) -> list[tuple[str, str]]:
    """Headline numbers of one metrics file."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    if not isinstance(data, dict):
        return []
    rows = []
    if "regimes" in data:
        for r, d in data["regimes"].items():
            rows.append((f"{r}", f"rel_err {d['rel_err']:.4f}; rep std train {d['rep_std_train']:.3f}"))
    if "groups" in data:
        for g, d in data["groups"].items():
            rows.append((f"{g}", ", ".join(f"{k} {fmt(v)}" for k, v in d.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool))))
    for k, v in data.items():
        items = v.items() if isinstance(v, dict) and k not in ("methods", "regimes", "groups") else [(None, v)]
        for k2, v2 in items:
            if isinstance(v2, (int, float, str, bool)) and len(rows) < 40:
                rows.append((k if k2 is None else f"{k}.{k2}", fmt(v2)))
    return rows


def _ms(v: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """A ``{mean, sd, per_seed}`` figure as "mean ± sd"."""
    return "—" if not v else f"{v['mean'] * scale:.{digits}f} ± {v['sd'] * scale:.{digits}f}"


def bench_rows(bench: dict) -> dict:
    """``{"head", "rows"}`` of the method table of a ``bench.json`` (mean ± sd over seeds)."""
    head = ["method", "AUROC", "TPR@1%FPR (oracle)", "deployable FPR / TPR", "unlabelled FPR / TPR",
            "hard-negative AUROC", "× forward"]
    rows = []
    for name, m in bench.get("methods", {}).items():
        unl = m.get("unlabelled") or {}
        rows.append([name + (" (ours)" if name == bench.get("detector") else ""), _ms(m["auroc"]),
                     _ms(m["tpr_at_1pct_fpr"]), f"{_ms(m['deployable']['fpr'])} / {_ms(m['deployable']['tpr'])}",
                     f"{_ms(unl.get('fpr'))} / {_ms(unl.get('tpr'))}", _ms(m.get("hard_negative_auroc")),
                     _ms(m.get("forward_fraction"), digits=2)])
    return {"head": head, "rows": rows}


def build_report(root: str | os.PathLike, out_name: str = "report.html") -> Path:
    """Write ``root/report.html`` and return its path."""
    root = results_root(root)
    metrics = []
    for path in sorted(root.rglob("*.json")):
        if path.name in KNOWN_JSON:
            rows = _summary_rows(path.name, read_json(path))
            if rows:
                metrics.append({"file": path.relative_to(root).as_posix(), "rows": rows})
    pngs = sorted(p for p in root.rglob("*.png") if not any(part.startswith(".") for part in p.parts))
    if not metrics and not pngs and not any(root.rglob("tuning.json")):
        raise DiffmemError(f"{root}: no diffmem results (no metrics JSON or figures) to report")
    sections: dict[str, list[dict]] = {name: [] for name in SECTIONS}
    sections["Other figures"] = []
    for p in pngs:
        section = next((s for s, names in SECTIONS.items() if p.name in names or p.name.startswith(
            ("weights_", "representations_"))), "Other figures")
        if p.name.startswith(("weights_", "representations_")):
            section = "Theory"
        sections[section].append({"title": p.relative_to(root).as_posix(), "uri": _data_uri(p.read_bytes())})
    for path in sorted(root.rglob("tuning.json")):
        sections["Detection benchmark"].append({"title": f"{path.parent.relative_to(root).as_posix()}/per-layer AUROC",
                                                "uri": _data_uri(_layer_bars(read_json(path)))})
    tables = [{"file": path.relative_to(root).as_posix(), **bench_rows(read_json(path))}
              for path in sorted(root.rglob("bench.json"))]
    env = Environment(loader=PackageLoader("diffmem.report", "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        title=f"diffmem report: {root.resolve().name}", metrics=metrics, tables=tables,
        sections={k: v for k, v in sections.items() if v})
    out = root / out_name
    tmp = out.with_name(f".{out_name}.tmp")
    tmp.write_text(html)
    os.replace(tmp, out)
    return out
