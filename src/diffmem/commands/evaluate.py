"""``diffmem eval``: join scores with labels, compute metrics with CIs, draw ROC and score densities."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from diffmem.commands.options import Opt, Out, Quiet, Seed
from diffmem.detect.evaluation import join_labels, plot_kde, plot_roc, read_labels, read_scores
from diffmem.detect.metrics import evaluate as metrics_of
from diffmem.errors import check
from diffmem.outputs import check_out, output_dir, write_json


def evaluate(scores: Annotated[str, Opt("scores.parquet (or .csv) of `diffmem scan`", positional=True,
                                        metavar="SCORES")],
             out: Out,
             labels: Annotated[str | None, Opt("CSV/JSONL with label and sha256|path|index (default: the "
                                               "scores' own label column)", metavar="FILE")] = None,
             column: Annotated[str, Opt("score column to evaluate")] = "score",
             n_boot: Annotated[int, Opt("bootstrap resamples", min=1)] = 1000,
             seed: Seed = 0, quiet: Quiet = False) -> dict:
    """AUROC and TPR at 1% FPR (both conventions) with bootstrap CIs: ``DIR/metrics.json`` (auroc,
    auroc_ci, tpr_at_1pct_fpr, tpr_at_1pct_fpr_wen, their CIs, counts), ``roc.png``, ``score_kde.png``."""
    check_out(out)
    df = join_labels(read_scores(scores), read_labels(labels) if labels else None, str(scores))
    check(column in df.columns, f"{scores}: no column {column!r} (--column)")
    check(is_numeric_dtype(df[column]) and not is_bool_dtype(df[column]),
          f"{scores}: column {column!r} holds {df[column].dtype} values, not scores (--column)")
    s, y = df[column].to_numpy(dtype=float), df["y"].to_numpy()
    check(bool(np.isfinite(s).all()), f"{scores}: column {column!r} has NaN or infinite scores")
    metrics = {"column": column, "sign": "+", **metrics_of(s, y, n_boot=n_boot, seed=seed)}
    with output_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        plot_roc({column: (s, y)}, tmp / "roc.png")
        plot_kde(s, y, tmp / "score_kde.png", column)
    return metrics
