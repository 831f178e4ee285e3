import json

import numpy as np
import pytest

from diffmem.cli import main


def test_verify_quick_meets_the_closed_forms(tmp_path):
    out = tmp_path / "verify"
    assert main(["theory", "verify", "--quick", "--seed", "0", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "verify.json").read_text())
    for regime in ("memorization", "generalization", "hybrid"):
        r = res["regimes"][regime]
        assert r["rel_err"] <= 0.02, (regime, r["rel_err_per_seed"])
        assert {"rep_std_train", "rep_std_heldout", "alignment", "alpha", "beta"} <= set(r)
    assert res["regimes"]["memorization"]["rep_std_train"] > res["regimes"]["generalization"]["rep_std_train"]
    assert res["regimes"]["memorization"]["alignment"]["frac_aligned"] > 0.9
    assert res["regimes"]["generalization"]["alignment"]["frac_aligned"] < 0.5
    assert (out / "verify_products.png").stat().st_size > 1000


def test_phase_weights_diffusion_write_their_files(tmp_path, image_folder):
    out = tmp_path / "o"
    assert main(["theory", "phase", "--n-per-cluster", "1,8", "--units", "4,8", "--steps", "50",
                 "--quiet", "--out", str(out)]) == 0
    phase = json.loads((out / "phase.json").read_text())
    assert len(phase["grid"]) == 4 and (out / "phase.png").exists()
    gap = {n: [c["generalization_gap"] for c in phase["grid"] if c["n_per_cluster"] == n] for n in (1, 8)}
    assert min(gap[1]) > 3 * max(gap[8])          # one image per cluster memorizes (measured 0.28 vs 0.042)
    assert main(["theory", "weights", "--data", str(image_folder), "--n", "4", "--n-large", "8", "--p", "8",
                 "--steps", "20", "--quiet", "--out", str(out)]) == 0
    w = json.loads((out / "weights.json").read_text())
    assert set(w["models"]) == {"memorizing", "generalizing"}
    mem, gen = (w["models"][k]["rep_train"] for k in ("memorizing", "generalizing"))
    assert mem["std"] > 1.3 * gen["std"]          # the memorizing DAE's representations are spikier (2.94 vs 1.64)
    assert (out / "weights_memorizing.png").exists() and (out / "representations_generalizing.png").exists()
    assert main(["theory", "diffusion", "--data", str(image_folder), "--n", "8", "--steps", "20",
                 "--samples", "4", "--sample-steps", "5", "--quiet", "--out", str(out)]) == 0
    d = json.loads((out / "diffusion.json").read_text())
    assert len(d["per_sample"]) == 4
    for r in d["per_sample"]:
        assert r["ratio"] == pytest.approx(r["d1"] / r["d2"]) and r["d1"] <= r["d2"]
    assert d["copy_fraction"] == np.mean([r["ratio"] < 1 / 3 for r in d["per_sample"]])


def test_same_seed_same_numbers(tmp_path, image_folder):
    outs = []
    for k in range(2):
        out = tmp_path / f"d{k}"
        main(["theory", "diffusion", "--data", str(image_folder), "--n", "8", "--steps", "10", "--samples", "3",
              "--sample-steps", "3", "--seed", "4", "--quiet", "--out", str(out)])
        outs.append(json.loads((out / "diffusion.json").read_text()))
    assert outs[0] == outs[1]


@pytest.fixture
def nan_npy(tmp_path):
    x = np.zeros((10, 28, 28), dtype=np.float32)
    x[3, 4, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    return tmp_path / "nan.npy"


@pytest.mark.parametrize("case", ["sigma0", "lam", "p0", "nan", "notimage", "missing", "corrupt"])
def test_bad_input_one_line_nonzero_nothing_written(case, tmp_path, image_folder, nan_npy, capfd):
    out = tmp_path / "out"
    base = ["theory", "weights", "--n", "4", "--n-large", "8", "--steps", "5", "--quiet", "--out", str(out)]
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage") if case == "corrupt" else None
    extra = {"sigma0": ["--data", str(image_folder), "--sigma", "0"],
             "lam": ["--data", str(image_folder), "--lam", "-1"],
             "p0": ["--data", str(image_folder), "--p", "0"],
             "nan": ["--data", str(nan_npy)],
             "notimage": ["--data", str(txt)],
             "missing": ["--data", str(tmp_path / "nope")],
             "corrupt": ["--data", str(image_folder)]}[case]
    code = main([*base, *extra])
    stderr = capfd.readouterr().err                             # file-descriptor level: library output too
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("diffmem: error:"), stderr
    assert {"sigma0": "--sigma 0: must be > 0", "lam": "--lam -1: must be >= 0", "p0": "--p 0: must be >= 1",
            "nan": "nan.npy: contains NaN", "notimage": "notes.txt: IMAGES must be a folder",
            "missing": "nope: no such file or folder", "corrupt": "broken.png: not a readable image"}[case] in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_weights_at_the_documented_minimum(tmp_path, image_folder):
    """--n 3 is the smallest n the option allows: its plot draws the 3 representations there are."""
    out = tmp_path / "w"
    assert main(["theory", "weights", "--data", str(image_folder), "--n", "3", "--n-large", "3", "--p", "4",
                 "--steps", "5", "--quiet", "--out", str(out)]) == 0
    w = json.loads((out / "weights.json").read_text())
    assert w["models"]["memorizing"]["n"] == 3 and (out / "representations_memorizing.png").exists()
    rep = w["models"]["memorizing"]["rep_train"]
    assert rep["max_over_mean"] / rep["max_over_sum"] == pytest.approx(4)     # sum / mean = the p = 4 units
