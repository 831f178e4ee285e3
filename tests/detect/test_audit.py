"""The audit: thresholds calibrated on held-out references (rate measured out of sample), the flagged
share's CI, flag quality against exact copies, and the command's inputs checked before any work."""

import json

import numpy as np
import pandas as pd
import pytest

from diffmem.models import load_adapter

from diffmem.cli import main
from diffmem.detect.audit import calibrate_on_reference, flag_quality, share_ci
from diffmem.errors import DiffmemError
from diffmem.models.tiny import SAVERS
from tests.helpers import write_pngs


def test_calibration_rate_is_measured_out_of_sample():
    rng = np.random.default_rng(0)
    realized, fresh_rates = [], []
    fresh = rng.standard_normal(100_000)
    for _ in range(400):
        ref = rng.standard_normal(400)
        th, r = calibrate_on_reference(ref, 0.02, seed=1)
        realized.append(r)
        fresh_rates.append((fresh > th).mean())
    # the cross-fitted estimate tracks what fresh negatives see (≈ 4/201 for halves of 200); an in-sample
    # rate would be 3/200 = 0.015 per half, 0.0175 on the whole: both fail the first bound
    assert abs(np.mean(realized) - 4 / 201) < 0.0015 and abs(np.mean(fresh_rates) - 8 / 401) < 0.0015
    with pytest.raises(DiffmemError, match="at least 4"):
        calibrate_on_reference([1.0, 2.0], 0.01)


def test_share_ci_and_flag_quality():
    flags = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    share, lo, hi = share_ci(flags, 500, seed=0)
    assert share == 0.3 and lo < 0.3 < hi and hi - lo < 0.25
    copies = np.r_[np.ones(25, bool), np.zeros(70, bool), np.ones(5, bool)]
    q = flag_quality(flags, copies)
    assert q == {"precision": 25 / 30, "recall": 25 / 30, "n_copies": 30, "true_positives": 25,
                 "fpr_generated_non_copies": 5 / 70}       # flags 25-29 are non-copies among 70
    assert flag_quality(np.zeros(3, bool), np.zeros(3, bool))["precision"] is None
    # the 70 non-copies: 10 near copies (d1/d2 0.4), 20 at 0.6, 40 clear (0.9); flags 25–29 are near copies
    ratio = np.r_[np.full(25, 0.1), np.full(10, 0.4), np.full(20, 0.6), np.full(40, 0.9), np.full(5, 0.2)]
    bands = flag_quality(flags, copies, ratio)["fpr_by_ratio"]
    assert bands == {"0.333-0.5": {"n": 10, "fpr": 0.5}, "0.5-0.7": {"n": 20, "fpr": 0.0},
                     "0.7-inf": {"n": 40, "fpr": 0.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    model = SAVERS["unet2d"](root / "m", num_classes=None, seed=0)
    return model, write_pngs(root / "imgs", 10, size=16), write_pngs(root / "ref", 16, size=16, seed=3)


def test_audit_of_given_images_writes_flags_and_verdict(tiny, tmp_path):
    model, imgs, ref = tiny
    assert main(["audit", str(model), "--images", str(imgs), "--reference", str(ref), "--quiet", "--n-boot", "50",
                 "--fpr", "0.1", "--out", str(tmp_path / "a")]) == 0
    r = json.loads((tmp_path / "a" / "audit.json").read_text())
    flags = pd.read_parquet(tmp_path / "a" / "flags.parquet")
    assert r["n"] == len(flags) == 10 and r["n_flagged"] == int(flags["flagged"].sum())
    t = load_adapter(model).residual_t
    assert r["detector"] == {"source": f"label-free residual ratio to the references' Gaussian denoiser at t = {t} "
                                       "(signal-to-noise ratio 10; 4 noise draws)", "t": t,
                             "features": ["residual_ratio"]} and r["fpr_target"] == 0.1
    assert r["n_reference"] == 8                     # half fits the Gaussian denoiser, the other half the threshold
    assert (flags["score"] > r["threshold"]).tolist() == flags["flagged"].tolist()
    assert "precision" not in r and r["verdict"].startswith(f"{r['n_flagged']} of 10 samples")
    for f in ("audit_scores.png", "top_flagged.png"):
        assert (tmp_path / "a" / f).exists()
    # the same images audited as training data: every sample is a copy of itself
    assert main(["audit", str(model), "--images", str(imgs), "--reference", str(ref), "--train", str(imgs),
                 "--quiet", "--n-boot", "50", "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert b["n_copies"] == 10 and b["recall"] == pytest.approx(b["n_flagged"] / 10)   # every sample is a copy


def test_audit_inputs_are_checked_before_any_work(tiny, tmp_path, capsys):
    model, imgs, ref = tiny
    cases = [["--n", "5"],                                                   # no record: --reference needed
             ["--images", str(imgs), "--reference", str(tmp_path / "missing")],
             ["--images", str(imgs), "--reference", str(ref), "--classes", "1"],
             ["--images", str(imgs), "--reference", str(ref), "--detector", str(tmp_path)],
             ["--n", "5", "--reference", str(imgs)]]                          # 10 images: the default needs 16
    words = ["--reference: ", "missing: no such file or folder", "classes, prompts: only when sampling",
             "not a saved detector (no detector.json)", "reference: 10 images; the label-free residual_ratio needs"]
    for extra, word in zip(cases, words):
        assert main(["audit", str(model), "--quiet", "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diffmem: error:") and word in err[0], (extra, err)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_input_format_does_not_change_the_flagged_share(tmp_path):
    """4,000 held-out Fashion-MNIST test images audited against 4,000 others (the shipped hybrid model,
    --calibration reference: real images against real images, the exchangeable case) flag 1% ± 0.5%
    whether both arrive as 28×28 arrays, as 28×28 PNG folders or pre-resized to 16×16 (PIL bicubic);
    arrays and PNG folders give identical flags."""
    from PIL import Image
    from diffmem.data.records import HYBRID
    from diffmem.data.images import FASHION_MNIST_DIR, _read_idx
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR}: needs the 10,000 test images of dataset-fashion-mnist")
    test = _read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")               # (10000, 28, 28) uint8
    sets = {"images": test[1000:5000], "reference": test[5000:9000]}
    small = lambda a: np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.Resampling.BICUBIC))  # noqa: E731
                                for im in a])
    paths = {}
    for name, arr in sets.items():
        np.save(tmp_path / f"{name}.npy", arr)
        np.save(tmp_path / f"{name}16.npy", small(arr))
        (tmp_path / name).mkdir()
        for i, im in enumerate(arr):
            Image.fromarray(im).save(tmp_path / name / f"{i:05d}.png")
        paths[name] = {"npy": tmp_path / f"{name}.npy", "png": tmp_path / name, "npy16": tmp_path / f"{name}16.npy"}
    flags = {}
    for fmt in ("npy", "png", "npy16"):
        out = tmp_path / f"audit_{fmt}"
        assert main(["audit", str(HYBRID), "--images", str(paths["images"][fmt]), "--reference",
                     str(paths["reference"][fmt]), "--n-reference", "4000", "--calibration", "reference",
                     "--fpr", "0.01", "--n-boot", "20", "--quiet", "--out", str(out)]) == 0
        r = json.loads((out / "audit.json").read_text())
        assert 0.005 <= r["share_flagged"] <= 0.015, (fmt, r["share_flagged"])
        flags[fmt] = pd.read_parquet(out / "flags.parquet")["flagged"].to_numpy()
    assert np.array_equal(flags["npy"], flags["png"])
