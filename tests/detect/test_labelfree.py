"""The label-free detector: its residual is read at the schedule's t (``adapter.residual_t``), the
other scores at ``default_t``; every score and combination is a possible ``combine``."""

import numpy as np
import pytest
import torch

from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.labelfree import BASE_SCORES, SCORES, LabelFreeDetector
from diffmem.errors import DiffmemError
from diffmem.models import load_adapter
from diffmem.models.tiny import SAVERS


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return load_adapter(SAVERS["unet2d"](tmp_path_factory.mktemp("u") / "m", num_classes=None, seed=0))


def _images(n, seed):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_residual_is_read_at_the_schedules_t_and_z_values_against_the_reference(adapter):
    ref, x = _images(12, 0), _images(6, 1)
    det = LabelFreeDetector(adapter, seed=2).fit(ref)
    assert adapter.residual_t == 92 != adapter.default_t
    s = det.score_all(x)
    by_hand = FusionDetector.residual_only(adapter, t=92, seed=2).score(x, image_keys(x))
    np.testing.assert_allclose(s["residual"], by_hand, rtol=1e-6)
    ref_s = det.score_all(ref)
    for k in BASE_SCORES:                    # the z-values are standardized on the reference itself
        assert abs(np.mean((ref_s[k] - det.mean_[k]) / det.scale_[k])) < 1e-6
    z = np.stack([(s[k] - det.mean_[k]) / det.scale_[k] for k in BASE_SCORES])
    np.testing.assert_allclose(s["max_z"], z.max(0))
    np.testing.assert_allclose(s["mean_z"], z.mean(0))
    assert det.describe() == "label-free residual at t = 92 (signal-to-noise ratio 10)"
    assert "residual at t = 92, the others at t = 10" in LabelFreeDetector(adapter, combine="max_z").describe()


@pytest.mark.parametrize("combine", ["residual", "nemo", "mean_z"])
def test_any_score_can_be_the_detectors(adapter, combine):
    ref, x = _images(12, 0), _images(6, 1)
    det = LabelFreeDetector(adapter, combine=combine, seed=2).fit(ref)
    np.testing.assert_array_equal(det.score(x), det.score_all(x)[combine])
    assert det.features_ == ([combine] if combine in BASE_SCORES else [combine, *BASE_SCORES])
    assert det.t_ == (92 if combine == "residual" else 10)


def test_the_residual_needs_no_reference_and_the_combinations_do(adapter):
    x = _images(6, 1)
    det = LabelFreeDetector(adapter, seed=2)
    assert not det.needs_reference and LabelFreeDetector(adapter, combine="max_z").needs_reference
    np.testing.assert_array_equal(det.fit().score(x), LabelFreeDetector(adapter, seed=2).fit(_images(12, 0)).score(x))
    with pytest.raises(DiffmemError, match="combine 'max_z' needs reference images"):
        LabelFreeDetector(adapter, combine="max_z").fit()
    with pytest.raises(DiffmemError, match="call fit"):
        LabelFreeDetector(adapter).score(x)


def test_an_unknown_combination_is_refused_at_fit(adapter):
    with pytest.raises(DiffmemError, match="combine 'median_z'"):
        LabelFreeDetector(adapter, combine="median_z").fit(_images(12, 0))
    assert set(SCORES) == {*BASE_SCORES, "mean_z", "max_z"}
