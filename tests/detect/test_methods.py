"""The harness's methods on a fixture with exact memorization: a ReLU-DAE storing its training images."""

import numpy as np
import pytest
import torch

from diffmem.bench.protocol import batches, score_settings
from diffmem.detect.detector import image_keys
from diffmem.detect.methods import (denoising_loss_method, output_norm_method, random_method, setting_key,
                                    spikiness_method)
from diffmem.detect.metrics import auroc
from tests.detect.test_fusion import _data, adapter  # noqa: F401  (fixture)


def _scores(method, x, keys):
    return score_settings(method, method.settings, batches(x, keys, None, np.arange(len(x)), 32))


def test_spikiness_beats_random_by_a_margin_on_a_memorizing_fixture(adapter):  # noqa: F811
    x, y, _ = _data(120, seed=3)
    keys = image_keys(x)
    spiky = _scores(spikiness_method(adapter, ["act"], [0.1, 0.3], seed=0), x, keys)
    rand = _scores(random_method(0), x, keys)[0]
    best = max(auroc(s, y) for s in spiky)
    assert best > 0.9 and abs(auroc(rand, y) - 0.5) < 0.15 and best > auroc(rand, y) + 0.3


@pytest.mark.parametrize("make", [denoising_loss_method, output_norm_method])
def test_loss_scores_rank_stored_images_as_memorized(adapter, make):  # noqa: F811
    x, y, _ = _data(120, seed=4)
    m = make(adapter, [0.1, 0.3], 0)
    scores = _scores(m, x, image_keys(x))
    assert [setting_key(s) for s in m.settings] == ["t=0.1", "t=0.3"]
    assert max(auroc(s, y) for s in scores) > 0.9
    # one image's score does not depend on the batch it is scored in
    single = m.score(next(batches(x, image_keys(x), None, np.array([5]), 1)), m.settings[:1])[0]
    assert single[0] == pytest.approx(scores[0][5], rel=1e-5)
    assert torch.isfinite(torch.as_tensor(scores[0])).all()
