"""``diffmem demo``: the end-to-end demonstration that ``make demo`` runs (offline, ~5 min on 2 cores).

On the shipped hybrid checkpoint and data subset: audit 1,000 samples at 1% FPR against 1,000 held-out
Fashion-MNIST images (``audit/``: the report's verdict), sample and label exactly (``samples/``), scan the
samples with the spikiness detector (``scan/``), evaluate against the exact labels (``eval/``),
compare spikiness with every baseline on a calibration/report split (``bench/``), steer memorized
and generalized samples toward brightness (``steer/``), run the theory quick-verify (``theory/``),
and write ``index.html`` (links) and the self-contained ``report.html``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from diffmem.data.records import HYBRID
from diffmem.commands.audit import audit
from diffmem.commands.bench import bench
from diffmem.commands.sample import sample
from diffmem.commands.evaluate import evaluate
from diffmem.commands.options import Out, Quiet, Seed
from diffmem.commands.probe import scan
from diffmem.commands.steer import steer
from diffmem.commands.theory import verify
from diffmem.outputs import check_out
from diffmem.report import build_report, write_index


def demo(out: Out, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """The end-to-end demo (what `make demo` runs): samples, scan, eval, bench, steer, theory, report."""
    check_out(out)
    out = Path(out)
    t0 = time.perf_counter()
    steps = {}
    steps["audit"] = audit(str(HYBRID), str(out / "audit"), n=1000, fpr=0.01, seed=seed, quiet=quiet)
    steps["samples"] = sample(str(HYBRID), str(out / "samples"), n=300, guidance=1.0, seed=seed, quiet=quiet)
    shutil.rmtree(out / "scan" / "parts", ignore_errors=True)    # a fresh scan of the fresh samples
    steps["scan"] = scan(str(HYBRID), str(out / "samples" / "manifest.jsonl"), str(out / "scan"), seed=seed,
                         quiet=quiet)
    steps["eval"] = evaluate(str(out / "scan" / "scores.parquet"), str(out / "eval"), seed=seed, quiet=quiet)
    steps["bench"] = bench(str(out / "bench"), quick=True, seed=seed, quiet=quiet)
    steps["steer"] = steer(str(out / "steer"), seed=seed, quiet=quiet)
    steps["theory"] = verify(str(out / "theory"), seed=seed, quick=True, quiet=quiet)
    index = write_index(out, "diffmem demo")
    report = build_report(out)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; index {index}; report {report}")
    return {"index": str(index), "report": str(report), "seconds": time.perf_counter() - t0}
