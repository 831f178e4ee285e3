"""Behaviour unchanged (issue 24): the primitives every score is built from — represent, spikiness, the
fusion features, every peer method and the monitor's row, on the tiny model of each family — equal the
arrays recorded before the refactor (``tests/golden/primitives.npz``, 101 arrays, one thread; bit-identical
on the machine that recorded them; the tolerance here only absorbs another CPU's float32 kernels)."""

from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "primitives.npz"


def _primitives(root: Path) -> dict:
    from diffmem.detect.fusion import one_forward_features
    from diffmem.detect.methods import Batch, denoising_loss_method, output_norm_method, spikiness_method, wen_method
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    from diffmem.monitor.monitor import MemorizationMonitor
    from diffmem.probe.represent import generators, represent, spikiness
    out = {}
    for fam in ("unet2d", "stable_diffusion", "dit"):
        a = load_adapter(SAVERS[fam](root / fam, seed=0))
        x = torch.rand(6, a.image_channels, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
        keys = [f"k{i}" for i in range(6)]
        layer = a.default_layer
        out[f"{fam}/represent"] = represent(a, x, [layer], a.default_t, a.default_pool, generators(0, keys))[layer].numpy()
        out[f"{fam}/spik"] = spikiness(a, x, keys, repeats=2)["std"].numpy()
        for k, v in one_forward_features(a, x, keys, 20, [layer], 0).items():
            out[f"{fam}/fusion/{k}"] = v
        conds = {"class": [0] * 6, "prompt": ["a red dress"] * 6}.get(a.condition_kind)
        b = Batch(x, keys, conds)
        for m in (denoising_loss_method(a, [10, 50], 0), output_norm_method(a, [10], 0),
                  spikiness_method(a, [layer], [10], 0)):
            for i, v in enumerate(m.score(b, m.settings)):
                out[f"{fam}/{m.name}/{i}"] = v
        if conds is not None:
            m = wen_method(a, [10], 0)
            out[f"{fam}/wen"] = m.score(b, m.settings)[0]
        mon = MemorizationMonitor(every=1, layers=[layer]).fit(torch.cat([x, x * 0.5]), torch.cat([x * -0.5, x * 0.25]))

        def flat(d, pre):
            for k, v in d.items():
                if isinstance(v, dict):
                    flat(v, f"{pre}/{k}")
                elif isinstance(v, (int, float)):
                    out[f"{pre}/{k}"] = np.array(v)
        flat(mon.measure(a), f"{fam}/mon")
    return out


@pytest.mark.slow
def test_primitives_equal_the_arrays_recorded_before_the_refactor(tmp_path):
    golden = np.load(GOLDEN)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # as when they were recorded: kernels reduce in one order
    try:
        got = _primitives(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert sorted(got) == sorted(golden.files) and len(got) == 101
    for k in golden.files:
        np.testing.assert_allclose(np.asarray(got[k], dtype=float), golden[k].astype(float), rtol=1e-5, atol=1e-7,
                                   err_msg=k)
