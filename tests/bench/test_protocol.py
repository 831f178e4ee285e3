"""The benchmark protocol: grouped split, equal tuning, thresholds fitted on data disjoint from where
they are measured, aggregation over seeds."""

import numpy as np
import pytest

from diffmem.bench.protocol import aggregate, evaluate_report, grouped_split, split_overlap, summarize, tune
from diffmem.detect.methods import Method
from diffmem.detect.metrics import fpr_threshold, rates_at
from diffmem.errors import DiffmemError


def _groups(seed=0, n=600):
    """30 duplicated images with many near-copies (memorized) and a long tail of singletons."""
    rng = np.random.default_rng(seed)
    groups = np.r_[rng.integers(0, 30, n // 2), 100 + rng.integers(0, 2000, n - n // 2)]
    y = (groups < 30).astype(int)
    y[rng.choice(n // 2, 20, replace=False)] = 0          # hard negatives inside duplicated groups
    return y, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_has_zero_overlap_and_keeps_the_strata(seed):
    y, groups = _groups(seed)
    calib = grouped_split(y, groups, 0.5, seed)
    assert split_overlap(groups, calib) == 0
    assert not set(groups[calib]) & set(groups[~calib])
    for side in (calib, ~calib):                         # both sides hold both labels, in similar shares
        assert 0.35 < y[side].mean() < 0.65
    assert 0.4 < calib.mean() < 0.6
    assert not np.array_equal(calib, grouped_split(y, groups, 0.5, seed + 10))
    # a per-sample split would put copies of one image on both sides: the measure notices
    rng = np.random.default_rng(seed)
    assert split_overlap(groups, rng.random(len(y)) < 0.5) > 0
    with pytest.raises(DiffmemError, match="calib_frac="):
        grouped_split(y, groups, 1.0, seed)


def test_fpr_threshold_holds_its_rate_on_fresh_negatives():
    """Split-conformal: over many calibration draws the realized FPR on fresh negatives is ≤ the target
    on average, while the naive in-sample quantile overshoots."""
    rng = np.random.default_rng(0)
    realized, naive = [], []
    fresh = rng.standard_normal(200_000)
    for _ in range(400):
        cal = rng.standard_normal(150)
        realized.append((fresh > fpr_threshold(cal, 0.01)).mean())
        naive.append((fresh > np.quantile(cal, 0.99)).mean())
    assert np.mean(realized) <= 0.0105 and np.mean(naive) > 0.0105
    assert fpr_threshold([1.0, 2.0, 3.0], 0.01) == 3.0     # too few negatives: the largest one
    assert rates_at(np.array([0.0, 1, 2, 3]), np.array([0, 0, 1, 1]), 1.5) == {"fpr": 0.0, "tpr": 1.0}


def test_tune_picks_setting_and_sign_on_calibration_only():
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    rng = np.random.default_rng(0)
    good = -y + 0.3 * rng.standard_normal(100)            # informative, but reversed
    m = Method("m", False, False, False, [{"t": 1}, {"t": 2}], lambda b, s: None)
    best, sign, table = tune(m, [rng.standard_normal(100), good], y)
    assert best == 1 and sign == -1 and table[1]["auroc"] < 0.1 and [r["key"] for r in table] == ["t=1", "t=2"]


def test_report_metrics_and_hard_negatives():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    hard = np.array([0, 0, 0, 1, 1, 0, 0], bool)
    s = np.array([5.0, 4, 3, 3.5, 0, 1, 2])
    r = evaluate_report(s, y, hard, deploy=3.2, unlabelled=None)
    assert r["deployable"] == {"fpr": 0.25, "tpr": 2 / 3} and r["unlabelled"] is None
    assert r["hard_negative_auroc"] == pytest.approx(5 / 6)   # positives {5, 4, 3} vs hard {3.5, 0}
    assert r["auroc"] < 1


def test_aggregate_reports_mean_sd_and_per_seed():
    runs = [{"a": {"auroc": 0.9, "deployable": {"fpr": 0.01, "tpr": 0.8}, "unlabelled": None, "needs_x": True}},
            {"a": {"auroc": 1.0, "deployable": {"fpr": 0.03, "tpr": 0.9}, "unlabelled": None, "needs_x": True}}]
    out = aggregate(runs)["a"]
    assert out["auroc"]["mean"] == pytest.approx(0.95) and out["auroc"]["per_seed"] == [0.9, 1.0]
    assert out["auroc"]["sd"] == pytest.approx(np.std([0.9, 1.0], ddof=1))
    assert out["deployable"]["fpr"]["mean"] == pytest.approx(0.02) and out["needs_x"] is True
    assert out["unlabelled"] is None and summarize([None]) is None and summarize([1.0])["sd"] == 0.0
