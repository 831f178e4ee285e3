"""The zoo study: label-free scores and threshold calibrations across models (``diffmem bench zoo``)."""

import json

import numpy as np
import pytest
import torch

from diffmem.bench.zoo import ZOO, calibrations, empirical_null_shift, worst_case
from diffmem.cli import main
from diffmem.detect.labelfree import SCORES
from diffmem.detect.metrics import rates_at
from tests.conftest import needs_fmnist


def test_empirical_null_shift_finds_the_bulk_under_a_memorized_tail():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(4000)
    for share in (0.0, 0.2, 0.4):                                              # copies far in the upper tail
        n_copy = int(4000 * share)
        audited = np.r_[rng.standard_normal(4000 - n_copy) + 0.7, rng.standard_normal(n_copy) + 6]
        assert abs(empirical_null_shift(audited, reference, 0.01) - 0.7) < 0.1, share
    # a reference-only threshold is 0.7 too low for these non-copies; the shifted one holds the target
    y = np.r_[np.zeros(2400, bool), np.ones(1600, bool)]                      # the last: 40% copies
    sets = {"sample": audited, "reference_b": reference}
    cal = calibrations(sets, 0.01)
    assert rates_at(audited, y, cal["reference"])["fpr"] > 0.03
    assert 0.003 < rates_at(audited, y, cal["empirical-null"])["fpr"] < 0.02


def test_worst_case_is_the_minimum_over_models():
    def model(au, f, fc, o):
        s = {"auroc": {"mean": au}, "oracle_tpr": {"mean": o},
             "reference": {"fpr": {"mean": f}, "fpr_clear": {"mean": fc}, "tpr": {"mean": au}}}
        return {"scores": {k: s for k in SCORES}}
    w = worst_case({"a": model(0.99, 0.011, 0.0, 0.9), "b": model(0.9, 0.03, 0.012, 0.2),
                    "c": model(0.95, 0.002, 0.009, 0.5)}, 0.01)
    assert w["residual"]["auroc"] == 0.9 and w["residual"]["auroc_model"] == "b"
    assert w["residual"]["oracle_tpr"] == 0.2 and w["residual"]["oracle_tpr_model"] == "b"
    c = w["residual"]["calibrations"]["reference"]
    assert c["fpr_model"] == "b" and c["fpr"] == 0.03                 # |0.03 − 0.01| is the largest
    assert c["fpr_clear_model"] == "a" and c["fpr_clear"] == 0.0       # |0 − 0.01| beats |0.012 − 0.01|


def test_zoo_models_are_small_diffusers_folders_with_records():
    for name, folder in ZOO.items():
        assert (folder / "model_index.json").is_file() and (folder / "diffmem.json").is_file(), name
        record = json.loads((folder / "diffmem.json").read_text())
        assert record["seed"] == 0 and (record.get("train_seconds") or record.get("seconds")), name
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and "detector" not in f.parts)
        assert size <= (14 if name == "t2i" else 5) * 2 ** 20, (name, size)


@pytest.mark.slow
@needs_fmnist
def test_regenerate_keeps_the_image_at_small_t0(tiny_bench_model):
    from diffmem.data.records import reference_images
    from diffmem.models import load_adapter
    from diffmem.probe.sampling import regenerate
    adapter = load_adapter(tiny_bench_model)
    x = reference_images(adapter)[0][:32]
    gaps = [float((regenerate(adapter, x, t0, seed=0) - x).abs().mean()) for t0 in (25, 200, 900)]
    assert gaps[0] < gaps[1] < gaps[2] and gaps[0] < 0.1
    assert torch.equal(regenerate(adapter, x, 25, seed=0), regenerate(adapter, x, 25, seed=0))
    assert not torch.equal(regenerate(adapter, x, 200, seed=0), regenerate(adapter, x, 200, seed=1))


@pytest.mark.slow
@needs_fmnist
def test_bench_zoo_end_to_end(tiny_bench_model, tmp_path):
    out = tmp_path / "zoo"
    assert main(["bench", "zoo", "--models", str(tiny_bench_model), "--seeds", "0,1", "--n", "200", "--quiet",
                 "--out", str(out)]) == 0
    r = json.loads((out / "zoo.json").read_text())
    m = r["models"][str(tiny_bench_model)]
    assert r["seeds"] == [0, 1] and set(m["scores"]) == set(r["scores"])
    res = m["scores"]["residual"]
    assert res["auroc"]["mean"] >= 0.8                       # the tiny memorizer's copies are easy
    assert set(res) >= {"auroc", "reference", "regenerated-t25", "empirical-null"}
    assert len(res["reference"]["fpr"]["per_seed"]) == 2
    assert r["worst_case"]["residual"]["auroc"] == res["auroc"]["mean"]
    for f in ("zoo.md", "zoo_scores.parquet", "zoo_auroc.png"):
        assert (out / f).is_file()
    assert main(["bench", "zoo", "--models", "nosuchmodel", "--out", str(tmp_path / "x")]) == 2


def test_default_is_the_best_worst_case_auroc_and_its_calibration_is_reported():
    from diffmem.bench.zoo import choose_default
    w = {"a": {"auroc": 0.99, "calibrations": {"c": {"fpr": 0.04, "fpr_model": "m", "tpr": 1.0, "tpr_model": "m"}}},
         "b": {"auroc": 0.97, "calibrations": {"c": {"fpr": 0.012, "fpr_model": "m", "tpr": 0.8, "tpr_model": "m"}}},
         "d": {"auroc": 0.40, "calibrations": {"c": {"fpr": 0.0, "fpr_model": "m", "tpr": 0.0, "tpr_model": "m"}}}}
    for v in w.values():
        v["auroc_model"] = "m"
    pick = choose_default(w, 0.01, "c")
    assert pick["score"] == "a" and not pick["within_band"] and pick["worst_fpr"] == 0.04   # d flags nothing
