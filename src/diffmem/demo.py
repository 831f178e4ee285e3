"""``diffmem demo``: the end-to-end demonstration that ``make demo`` runs (offline, ~5 min on 2 cores).

On the shipped hybrid checkpoint and data subset: sample and label exactly (``samples/``), scan the
samples with the spikiness detector (``scan/``), evaluate against the exact labels (``eval/``),
compare spikiness with every baseline on a calibration/report split (``bench/``), steer memorized
and generalized samples toward "Trouser" (``steer/``), run the theory quick-verify (``theory/``),
and write ``index.html`` (links) and the self-contained ``report.html``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from diffmem.bench.run import HYBRID, run_bench, run_sample
from diffmem.detect.evaluation import run_eval
from diffmem.probe.run import run_scan
from diffmem.report import build_report, write_index
from diffmem.steer.run import run_steer
from diffmem.theory.run import run_verify


def run_demo(out: str | os.PathLike, seed: int = 0, quiet: bool = False) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    steps = {}
    steps["samples"] = run_sample(HYBRID, out / "samples", n=300, guidance=1.0, seed=seed, quiet=quiet)
    shutil.rmtree(out / "scan" / "parts", ignore_errors=True)    # a fresh scan of the fresh samples
    steps["scan"] = run_scan(HYBRID, out / "samples" / "manifest.jsonl", out / "scan", seed=seed, quiet=quiet)
    steps["eval"] = run_eval(out / "scan" / "scores.parquet", out / "eval", seed=seed, quiet=quiet)
    steps["bench"] = run_bench(out / "bench", quick=True, seed=seed, quiet=quiet)
    steps["steer"] = run_steer(out / "steer", concept="Trouser", seed=seed, quiet=quiet)
    steps["theory"] = run_verify(out / "theory", seed=seed, quick=True, quiet=quiet)
    index = write_index(out, "diffmem demo")
    report = build_report(out)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; index {index}; report {report}")
    return {"index": str(index), "report": str(report), "seconds": time.perf_counter() - t0}
