"""The fusion detector: sklearn-style fitting, feature selection by grouped CV, save/load, thresholds."""

import json

import numpy as np
import pytest
import torch

from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import RESIDUAL, FusionDetector, one_forward_features
from diffmem.errors import DiffmemError
from diffmem.probe.adapters import TheoryAdapter
from diffmem.theory.model import ReLUDAE


TRAIN = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def adapter():
    """A ReLU-DAE that stores 8 training images in its columns: a memorizer with exact labels."""
    w = TRAIN.flatten(1).T / TRAIN.flatten(1).norm(dim=1)                  # (64, 8) unit columns
    return TheoryAdapter(ReLUDAE(w.contiguous()), (1, 8, 8))


def _data(n=80, seed=0):
    """Positives: near-copies of the training images (grouped by image); negatives: fresh images."""
    g = torch.Generator().manual_seed(seed + 1)
    pos = TRAIN[torch.arange(n // 2) % 8] + 0.05 * torch.randn(n // 2, 1, 8, 8, generator=g)
    neg = torch.rand(n // 2, 1, 8, 8, generator=g) * 2 - 1
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    return torch.cat([pos, neg]).clamp(-1, 1), y, np.r_[np.arange(n // 2) % 8, 8 + np.arange(n // 2)]


def test_features_come_from_one_forward_and_depend_on_the_key(adapter):
    x, _, _ = _data(8)
    keys = image_keys(x)
    f = one_forward_features(adapter, x, keys, 0.1, [adapter.default_layer], seed=0)
    assert set(f) == {RESIDUAL, adapter.default_layer} and all(v.shape == (8,) for v in f.values())
    again = one_forward_features(adapter, x, keys, 0.1, [adapter.default_layer], seed=0)
    assert np.array_equal(f[RESIDUAL], again[RESIDUAL])
    other = one_forward_features(adapter, x, keys, 0.1, [adapter.default_layer], seed=1)
    assert not np.array_equal(f[RESIDUAL], other[RESIDUAL])


def test_fit_select_score_save_load(adapter, tmp_path):
    x, y, groups = _data()
    det = FusionDetector(adapter, ts=(0.1, 0.3), fpr=0.05, folds=4, seed=0)
    assert det.fit(x, y, groups) is det
    assert det.t_ in (0.1, 0.3) and 1 <= len(det.features_) <= det.max_features and det.selection_
    assert all(s["cv_auroc"] > 0.5 for s in det.selection_)
    s = det.score(x)
    assert s.shape == (len(x),) and s[y == 1].mean() > s[y == 0].mean()
    xt, yt, _ = _data(seed=1)                               # fresh images: it generalizes
    from diffmem.detect.metrics import auroc
    assert auroc(det.score(xt), yt) > 0.9
    assert det.predict(xt).dtype == bool
    det.save(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "detector.json").read_text())
    assert meta["kind"] == "FusionDetector" and meta["features"] == det.features_
    back = FusionDetector.load(tmp_path / "d", adapter)
    assert np.array_equal(back.score(xt), det.score(xt)) and back.threshold_ == det.threshold_
    assert back.get_params() == det.get_params()
    # unlabelled calibration: only the threshold moves, to the held-out negatives' conformal quantile
    old = det.threshold_
    det.calibrate(xt[yt == 0])
    assert det.threshold_ != old and det.calibration_["kind"] == "unlabelled"
    assert (det.score(xt[yt == 0]) > det.threshold_).mean() <= 0.05


def test_unfitted_and_bad_saved_detectors_fail_clearly(adapter, tmp_path):
    with pytest.raises(DiffmemError, match="fit"):
        FusionDetector(adapter).score(torch.zeros(2, 1, 8, 8))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "detector.json").write_text("[]")
    with pytest.raises(DiffmemError, match=r"bad/detector.json: not a valid detector.json \(key \(top\)"):
        FusionDetector.load(tmp_path / "bad", adapter)
    with pytest.raises(DiffmemError, match="would not be a valid detector.json \\(key threshold"):
        FusionDetector.residual_only(adapter, t=0.1).save(tmp_path / "uncalibrated")    # threshold inf
    FusionDetector.residual_only(adapter, t=0.1).calibrate(TRAIN).save(tmp_path / "nan")
    meta = json.loads((tmp_path / "nan" / "detector.json").read_text())
    assert meta["t_convention"] == "sigma" and meta["family"] == "theory"
    (tmp_path / "nan" / "detector.json").write_text(json.dumps({**meta, "t_convention": "timestep"}))
    with pytest.raises(DiffmemError, match=r"t as timestep\), not applicable to this theory model \(t as sigma"):
        FusionDetector.load(tmp_path / "nan", adapter)
    with pytest.raises(DiffmemError, match="fpr=0: must be in"):                 # checked by fit, not __init__
        FusionDetector(adapter, fpr=0).fit(*_data()[:2])


def test_shipped_hybrid_detector_is_refused_on_a_theory_model(tmp_path):
    """Its t = 10… are diffusers timesteps; on a theory model they would be read as σ = 10…"""
    import torch
    from diffmem.data.records import HYBRID
    from diffmem.models import load_adapter
    from diffmem.models.load import save_theory_model
    from diffmem.theory.diffusion import ReLUDiffusion
    theory = load_adapter(save_theory_model(ReLUDiffusion(256, 16, generator=torch.Generator().manual_seed(0)),
                                            (1, 16, 16), tmp_path / "theory"))
    with pytest.raises(DiffmemError, match=r"fitted on a unet2d model \(t as timestep\), not applicable to this theory model"):
        FusionDetector.load(HYBRID / "detector", theory)
    assert FusionDetector.load(HYBRID / "detector", load_adapter(HYBRID)).features_


@pytest.mark.parametrize("field", ["threshold", "intercept"])
def test_non_finite_saved_detector_is_refused(adapter, tmp_path, field):
    import shutil
    from diffmem.data.records import HYBRID
    from diffmem.models import load_adapter
    shutil.copytree(HYBRID / "detector", tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "detector.json").read_text())
    meta[field] = float("nan")
    (tmp_path / "d" / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(DiffmemError, match=f"key {field}: Input should be a finite number"):
        FusionDetector.load(tmp_path / "d", load_adapter(HYBRID))


def test_a_detector_fitted_on_other_weights_is_refused_unless_allowed(tmp_path):
    """The shipped hybrid's detector records its model's weights hash; the same architecture with other
    weights (the memorization model) is refused, naming the flag that overrides it."""
    from diffmem.data.records import HYBRID
    from diffmem.models import load_adapter
    from diffmem.models.load import model_fingerprint
    meta = json.loads((HYBRID / "detector" / "detector.json").read_text())
    assert meta["model_weights"] == model_fingerprint(HYBRID)
    other = load_adapter(HYBRID.parent / "memorize")
    with pytest.raises(DiffmemError, match="fitted on other weights.*allow_other_model=True"):
        FusionDetector.load(HYBRID / "detector", other)
    assert FusionDetector.load(HYBRID / "detector", other, allow_other_model=True).features_


def _estimators(adapter):
    from diffmem.detect.detector import SpikinessDetector
    from diffmem.detect.labelfree import LabelFreeDetector
    from diffmem.monitor.monitor import MemorizationMonitor
    from diffmem.steer.concept import ConceptVector
    return [FusionDetector(adapter, ts=(0.1, 0.2), max_features=2, seed=3),
            SpikinessDetector(adapter, t=0.2, statistic="kurtosis", seed=3),
            LabelFreeDetector(adapter, combine="mean_z", seed=3),
            ConceptVector(adapter, t=0.2, mode="mean_diff", seed=3), MemorizationMonitor(every=7, seed=3)]


@pytest.mark.parametrize("i", range(5), ids=["fusion", "spikiness", "label-free", "concept", "monitor"])
def test_get_params_are_the_constructor_parameters_so_clone_works(adapter, i):
    """scikit-learn's contract: get_params returns exactly the constructor's parameters, unchanged (no
    validation or derivation in __init__), so clone builds an unfitted twin."""
    import inspect
    from sklearn.base import clone
    det = _estimators(adapter)[i]
    params = inspect.signature(type(det)).parameters
    assert set(det.get_params()) == set(params)
    bare = (type(det)(adapter) if "adapter" in params else type(det)()).get_params()
    assert det.get_params()["seed"] == 3 and all(bare[k] is p.default for k, p in params.items()
                                                 if p.default is None and k != "adapter")   # no default filled in
    twin = clone(det)
    same = lambda d: {k: v for k, v in d.get_params().items() if k != "adapter"}  # noqa: E731
    assert twin is not det and same(twin) == same(det)
    assert "adapter" not in params or type(twin.adapter) is type(adapter)                     # adapter: deep copy
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(twin))              # nothing fitted
    assert twin.set_params(seed=4).seed == 4
