"""Alarm rules, fixed before any run is seen (nothing here is fitted on the run it judges).

* :func:`tail_test` — per-image scores of probe (training) images against held-out references:
  how many probes exceed the reference's top ``tail`` quantile, with an exact p-value under
  exchangeability (the negative hypergeometric law of ranks). The monitor's own rule.
* :func:`welch_gap` — one-sided Welch t-test that the held-out loss exceeds the training loss
  (the train/held-out loss gap of Favero et al.).
* :func:`control_chart` — a scalar signal against its own first ``warmup`` checkpoints: an alarm
  when it leaves mean ± ``z``·sd on ``consecutive`` checkpoints in a row (for signals with no
  reference, such as the weight stable rank of the Spectral Signatures work).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special, stats

ALPHA = 1e-3          # per-checkpoint significance of the statistical rules
TAIL = 0.01           # the reference quantile a probe must exceed
CHART_WARMUP = 3      # checkpoints that define a control chart's baseline
CHART_Z = 3.0
CHART_CONSECUTIVE = 2


def _log_choose(n: float, k: float) -> float:
    return float(special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1))


def tail_test(probe: np.ndarray, reference: np.ndarray, tail: float = TAIL) -> dict:
    """Probes (m,) above the k-th largest reference (n,), k = ⌈tail·n⌉; higher = more memorized.

    Returns ``{"excess": fraction of probes above, "expected": k/(n+1), "p": P(J ≥ j)}``: under
    exchangeability J (probes ranked above the k-th reference) has
    P(J = j) = C(j+k−1, j)·C(m−j+n−k, m−j) / C(m+n, m).
    """
    probe, reference = np.asarray(probe, float), np.asarray(reference, float)
    m, n = len(probe), len(reference)
    k = max(1, math.ceil(tail * n))
    threshold = np.sort(reference)[::-1][k - 1]
    j = int((probe > threshold).sum())
    log_total = _log_choose(m + n, m)
    terms = [_log_choose(i + k - 1, i) + _log_choose(m - i + n - k, m - i) - log_total for i in range(j, m + 1)]
    p = float(min(1.0, np.exp(special.logsumexp(terms))))
    return {"excess": j / m, "expected": k / (n + 1), "p": p}


def welch_gap(train_loss: np.ndarray, heldout_loss: np.ndarray) -> dict:
    """``{"gap": mean held-out − mean train loss, "p": one-sided Welch p-value that gap > 0}``."""
    res = stats.ttest_ind(heldout_loss, train_loss, equal_var=False, alternative="greater")
    return {"gap": float(np.mean(heldout_loss) - np.mean(train_loss)), "p": float(res.pvalue)}


def control_chart(values: Sequence[float], warmup: int = CHART_WARMUP, z: float = CHART_Z,
                  consecutive: int = CHART_CONSECUTIVE, direction: str = "both") -> int | None:
    """Index of the checkpoint where the alarm fires (the last of ``consecutive`` out-of-band
    checkpoints after the first ``warmup``), or None. ``direction``: "up", "down" or "both"."""
    v = np.asarray(values, float)
    if len(v) <= warmup:
        return None
    base = v[:warmup]
    sd = max(float(base.std(ddof=1)) if warmup > 1 else 0.0, 1e-12 + 1e-6 * abs(float(base.mean())))
    score = (v - base.mean()) / sd
    out = {"up": score > z, "down": score < -z, "both": np.abs(score) > z}[direction]
    run = 0
    for i in range(warmup, len(v)):
        run = run + 1 if out[i] else 0
        if run >= consecutive:
            return i
    return None


def first_true(flags: Sequence[bool]) -> int | None:
    """Index of the first True, or None."""
    return next((i for i, f in enumerate(flags) if f), None)
