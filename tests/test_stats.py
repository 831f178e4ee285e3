import math

import torch

from diffmem import stats


def test_statistics_against_hand_computed_values():
    h = torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    s = stats.all_stats(h)
    assert torch.allclose(s["std"], torch.tensor([math.sqrt(3.0), 0.0], dtype=torch.float64))
    assert torch.allclose(s["l2"], torch.tensor([4.0, 2.0], dtype=torch.float64))
    assert torch.allclose(s["l4_over_l2"], torch.tensor([1.0, 2 ** 0.5 / 2], dtype=torch.float64))
    assert torch.allclose(s["max_over_mean"], torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert torch.allclose(s["max_over_sum"], torch.tensor([1.0, 0.25], dtype=torch.float64))
    assert torch.allclose(s["participation_ratio"], torch.tensor([1.0, 4.0], dtype=torch.float64))
    # one-hot of 4: mean 1, deviations (-1,-1,-1,3): m4 = (1+1+1+81)/4 = 21, var = 3 → 21/9 − 3
    assert abs(float(s["kurtosis"][0]) - (21 / 9 - 3)) < 1e-9


def test_std_matches_numpy_population_std():
    import numpy as np
    h = torch.randn(5, 33, generator=torch.Generator().manual_seed(1))
    assert np.allclose(stats.std(h).numpy(), h.numpy().std(axis=1), atol=1e-6)
