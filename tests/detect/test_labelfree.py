"""The label-free detector: its residual is read at the schedule's t (``adapter.residual_t``), the
other scores at ``default_t``; every score and combination is a possible ``combine``."""

import numpy as np
import pytest

from diffmem.detect.detector import image_keys
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.labelfree import BASE_SCORES, SCORES, Z_SCORES, LabelFreeDetector
from diffmem.errors import DiffmemError
from tests.helpers import uniform_images as _images


def test_residual_is_read_at_the_schedules_t_and_z_values_against_the_reference(adapter):
    ref, x = _images(12, 0), _images(6, 1)
    det = LabelFreeDetector(adapter, combine="residual", seed=2).fit(ref)
    assert adapter.residual_t == 92 != adapter.default_t
    s = det.score_all(x)
    by_hand = FusionDetector.residual_only(adapter, t=92, seed=2).score(x, image_keys(x))
    np.testing.assert_allclose(s["residual"], by_hand, rtol=1e-6)
    ref_s = det.score_all(ref)
    for k in Z_SCORES:                       # the z-values are standardized on the reference itself
        assert abs(np.mean((ref_s[k] - det.mean_[k]) / det.scale_[k])) < 1e-6
    z = np.stack([(s[k] - det.mean_[k]) / det.scale_[k] for k in Z_SCORES])
    np.testing.assert_allclose(s["max_z"], z.max(0))
    np.testing.assert_allclose(s["mean_z"], z.mean(0))
    assert det.describe() == "label-free residual at t = 92 (signal-to-noise ratio 10)"
    assert "residual at t = 92, the others at t = 10" in LabelFreeDetector(adapter, combine="max_z").describe()


@pytest.mark.parametrize("combine", ["residual", "nemo", "residual_ratio", "mean_z"])
def test_any_score_can_be_the_detectors(adapter, combine):
    ref, x = _images(12, 0), _images(6, 1)
    det = LabelFreeDetector(adapter, combine=combine, seed=2).fit(ref)
    np.testing.assert_array_equal(det.score(x), det.score_all(x)[combine])
    assert det.features_ == ([combine] if combine in BASE_SCORES else [combine, *Z_SCORES])
    assert det.t_ == (92 if combine.startswith("residual") else 10)


def test_the_residual_needs_no_reference_and_the_combinations_do(adapter):
    x = _images(6, 1)
    det = LabelFreeDetector(adapter, combine="residual", seed=2)
    assert not det.needs_reference and LabelFreeDetector(adapter).needs_reference      # the default: the ratio
    np.testing.assert_array_equal(det.fit().score(x), LabelFreeDetector(adapter, combine="residual", seed=2)
                                  .fit(_images(12, 0)).score(x))
    for combine in ("max_z", "residual_ratio"):
        with pytest.raises(DiffmemError, match=f"combine '{combine}' needs reference images"):
            LabelFreeDetector(adapter, combine=combine).fit()
    with pytest.raises(DiffmemError, match="call fit"):
        LabelFreeDetector(adapter).score(x)


def test_an_unknown_combination_is_refused_at_fit(adapter):
    with pytest.raises(DiffmemError, match="combine 'median_z'"):
        LabelFreeDetector(adapter, combine="median_z").fit(_images(12, 0))
    assert set(SCORES) == {*BASE_SCORES, "mean_z", "max_z"}
