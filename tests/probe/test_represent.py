import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.helpers import write_pngs
from diffmem.detect import SpikinessDetector, evaluate, select_layer, tpr_at_fpr, tpr_at_fpr_wen
from diffmem.errors import DiffmemError
from diffmem.models import load_adapter, save_theory_model
from diffmem.models.tiny import SAVERS
from diffmem.probe import Capture, CustomAdapter, capture_layers, generators, pool, spikiness
from diffmem.scan import ScanConfig, scan
from diffmem.theory.model import ReLUDAE

FAMILIES = ["unet2d", "stable_diffusion", "dit"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    paths = {f: SAVERS[f](root / f, seed=0) for f in FAMILIES}
    paths["dit_pixel"] = SAVERS["dit"](root / "dit_pixel", latent=False)
    theory = ReLUDAE.init(16 * 16, 12, scale=0.1, generator=torch.Generator().manual_seed(0))
    paths["theory"] = save_theory_model(theory, (1, 16, 16), root / "theory")
    return paths


def images(adapter, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, adapter.image_channels, adapter.image_size, adapter.image_size, generator=g) * 2 - 1


@pytest.mark.parametrize("family", FAMILIES + ["dit_pixel", "theory"])
def test_default_layer_shapes_and_early_exit_equals_full_forward(tiny, family):
    a = load_adapter(tiny[family])
    assert a.family == family.split("_pixel")[0]
    x = images(a)
    keys = [str(i) for i in range(len(x))]
    early = capture_layers(a, x, [a.default_layer], a.default_t, generators(0, keys))
    full = capture_layers(a, x, [a.default_layer], a.default_t, generators(0, keys), early_exit=False)
    act = early[a.default_layer]
    assert act.shape[0] == 4 and act.ndim in (2, 3, 4)
    assert torch.equal(act, full[a.default_layer])
    expected_ndim = {"unet2d": 4, "stable_diffusion": 4, "dit": 3, "dit_pixel": 3, "theory": 2}[family]
    assert act.ndim == expected_ndim
    assert not any(m._forward_hooks for m in a.denoiser.modules())


def test_early_exit_stops_the_forward(tiny):
    a = load_adapter(tiny["unet2d"])
    counts = a.call_counts                     # the (cached) dummy forward runs before the hook
    ran = []
    handle = a.denoiser.conv_out.register_forward_hook(lambda *_: ran.append(1))
    try:
        x = images(a)
        z_t = a.noise(a.prepare(x), 10, generators(0, list("abcd")))
        with Capture(a.denoiser, ["down_blocks.0"], counts) as cap:
            a.denoise(z_t, 10, a.null_condition(4))
        assert cap.exited_early and not ran
        with Capture(a.denoiser, ["down_blocks.0"], counts, early_exit=False) as cap2:
            a.denoise(z_t, 10, a.null_condition(4))
        assert not cap2.exited_early and ran
        assert torch.equal(cap.activations["down_blocks.0"], cap2.activations["down_blocks.0"])
    finally:
        handle.remove()


def test_hooks_removed_after_an_exception(tiny):
    a = load_adapter(tiny["unet2d"])
    with pytest.raises(RuntimeError, match="boom"):
        with Capture(a.denoiser, ["up_blocks.0", "mid_block"], a.call_counts):
            assert a.denoiser.mid_block._forward_hooks
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in a.denoiser.modules())


def test_repeated_calls_are_addressed_by_index(tiny):
    a = load_adapter(tiny["stable_diffusion"])
    name = a.default_layer
    assert a.call_counts[name] == 3
    x = images(a, 2)
    acts = capture_layers(a, x, [f"{name}@0", f"{name}@1", name], 10, generators(0, ["a", "b"]))
    assert acts[f"{name}@1"].ndim == 2                 # the time-embedding call
    last = capture_layers(a, x, [f"{name}@2"], 10, generators(0, ["a", "b"]))[f"{name}@2"]
    assert torch.equal(acts[name], last)               # the plain name is the last call
    with pytest.raises(DiffmemError, match="called 3 time"):
        capture_layers(a, x, [f"{name}@5"], 10, generators(0, ["a", "b"]))


def test_unknown_layer_names_closest(tiny):
    a = load_adapter(tiny["unet2d"])
    with pytest.raises(DiffmemError, match="closest: up_blocks.0.resnets.1"):
        capture_layers(a, images(a), ["up_blocks.0.resnets.9"], 10, generators(0, list("abcd")))


def test_same_seed_same_scores_other_seed_other_scores(tiny):
    a = load_adapter(tiny["unet2d"])
    x = images(a, 6)
    keys = [str(i) for i in range(6)]
    s1 = spikiness(a, x, keys, seed=3)["std"]
    s2 = spikiness(a, x, keys, seed=3)["std"]
    s3 = spikiness(a, x, keys, seed=4)["std"]
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    # per-image noise: the score of an image does not depend on its batch
    s4 = spikiness(a, x[2:4], keys[2:4], seed=3)["std"]
    assert torch.allclose(s4, s1[2:4], atol=1e-6)
    # repeats average several draws
    r = spikiness(a, x, keys, seed=3, repeats=3)["std"]
    assert r.shape == (6,) and not torch.equal(r, s1)


def test_pooling_against_hand_values():
    act = torch.arange(16.0).reshape(1, 2, 2, 4)               # (B, C, H, W)
    assert pool(act, "spatial_max").tolist() == [[7.0, 15.0]]
    assert pool(act, "spatial_mean").tolist() == [[3.5, 11.5]]
    tok = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])             # (B, N, D)
    assert pool(tok, "token_mean").tolist() == [[2.0, 4.0]]
    assert pool(tok, "token_max").tolist() == [[3.0, 6.0]]
    assert pool(act, "flatten").shape == (1, 16)
    assert pool(tok, "auto").tolist() == [[2.0, 4.0]]
    with pytest.raises(DiffmemError, match="4-D"):
        pool(tok, "spatial_max")


def test_metrics_against_sklearn_and_hand_values():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(200)]
    s = np.r_[rng.normal(1, 1, 50), rng.normal(0, 1, 200)]
    m = evaluate(s, y, n_boot=200)
    assert abs(m["auroc"] - roc_auc_score(y, s)) < 1e-12
    assert m["auroc_ci"][0] < m["auroc"] < m["auroc_ci"][1]
    assert m["n_positive"] == 50 and m["n_negative"] == 200
    # hand example: negatives 0..99, positives 98.5, 99.5, 200
    neg = np.arange(100.0)
    pos = np.array([98.5, 99.5, 200.0])
    yy, ss = np.r_[np.ones(3), np.zeros(100)], np.r_[pos, neg]
    # quantile(0.99) of 0..99 with linear interpolation = 98.01 → all 3 positives above
    assert tpr_at_fpr(ss, yy, 0.01) == 1.0
    # ROC points with FPR < 1%: FPR 0 (TPR 2/3, thresholds 200, 99.5) → 2/3
    assert abs(tpr_at_fpr_wen(ss, yy, 0.01) - 2 / 3) < 1e-12


def test_detector_fit_score_predict_and_layer_selection(tiny):
    a = load_adapter(tiny["unet2d"])
    neg, pos = images(a, 20, seed=1), images(a, 10, seed=2) * 0.1
    det = SpikinessDetector(a, fpr=0.1, batch_size=8).fit(neg)
    # split-conformal: the ⌈(n + 1)(1 − fpr)⌉ = 19th smallest of 20 negatives
    assert det.threshold_ == np.sort(det.negative_scores_)[18]
    assert det.predict(neg).mean() <= 0.1 + 1e-9
    assert det.score(pos).shape == (10,)
    ranked = select_layer(a, pos, neg, like=SpikinessDetector(a, batch_size=16))
    assert a.default_layer in [r["layer"] for r in ranked]
    assert all(ranked[i]["auroc"] >= ranked[i + 1]["auroc"] for i in range(len(ranked) - 1))


def test_custom_adapter_on_a_flattening_mlp_denoiser():
    """The README's seam: an MLP denoiser on (B, 16) vectors, ``prepare`` flattening images. Layer
    discovery, scores and the detector all go through ``prepare``; the score is checked by hand."""
    from diffmem.detect.detector import SpikinessDetector
    from diffmem.probe.represent import generators
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 16))
    a = CustomAdapter(net, lambda m, z, t, c: m(z), image_size=4, image_channels=1, default_layer="1",
                      prepare=lambda x: x.reshape(len(x), -1), default_pool="flatten")
    assert a.latent_shape == (16,) and a.layers()["1"] == [(1, 8)] and a.call_counts["1"] == 1
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    keys = ["a", "b", "c"]
    s = spikiness(a, x, keys, t=0.05)
    eps = torch.stack([torch.randn(16, generator=g) for g in generators(0, keys)])      # the same noise, by key
    with torch.no_grad():
        h = torch.relu(net[0](x.reshape(3, 16) + 0.05 * eps))                          # (3, 8)
    assert torch.allclose(s["std"].double(), h.double().std(1, unbiased=False), atol=1e-6)
    det = SpikinessDetector(a, t=0.05, batch_size=2).fit(x)
    assert det.score(x, keys).shape == (3,) and np.allclose(det.score(x, keys), s["std"].numpy(), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES + ["theory"])
def test_scan_32_images_written_reread_and_reproducible(tiny, family, tmp_path):
    a = load_adapter(tiny[family])
    folder = write_pngs(tmp_path / "imgs", 32)
    s1 = scan(a, folder, tmp_path / "o1", ScanConfig(batch_size=8, seed=5), quiet=True)
    scan(a, folder, tmp_path / "o2", ScanConfig(batch_size=5, seed=5), quiet=True)
    df1 = pd.read_parquet(tmp_path / "o1" / "scores.parquet")
    df2 = pd.read_parquet(tmp_path / "o2" / "scores.parquet")
    assert len(df1) == 32 and df1["error"].isna().all()
    assert {"path", "sha256", "layer", "t", "score", "std", "kurtosis", "participation_ratio"} <= set(df1.columns)
    s3 = scan(a, folder, tmp_path / "o3", ScanConfig(batch_size=8, seed=5), quiet=True)
    df3 = pd.read_parquet(tmp_path / "o3" / "scores.parquet")
    pd.testing.assert_frame_equal(df1, df3, check_exact=True)          # same settings: identical
    pd.testing.assert_frame_equal(df1, df2, check_exact=False, rtol=1e-4)  # other batch size: same up to rounding
    assert s1["n_scored"] == 32 and json.loads((tmp_path / "o1" / "summary.json").read_text())["layer"] == s1["layer"]
    assert s3["score_mean"] == s1["score_mean"]


def test_scan_inputs_npy_manifest_and_bad_images(tiny, tmp_path):
    a = load_adapter(tiny["unet2d"])
    arr = np.random.default_rng(0).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    s = scan(a, tmp_path / "x.npy", tmp_path / "o_npy", quiet=True)
    assert s["n_scored"] == 5
    folder = write_pngs(tmp_path / "imgs", 3)
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.png").write_bytes(b"not an image")
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps({"path": f"imgs/{p.name}", "label": i % 2, "prompt": "x"})
                             for i, p in enumerate(sorted(folder.iterdir()))))
    s = scan(a, man, tmp_path / "o_man", quiet=True)
    df = pd.read_parquet(tmp_path / "o_man" / "scores.parquet")
    assert s["n_errors"] == 2 and s["n_scored"] == 3
    assert df.loc[df.path.str.endswith("empty.png"), "error"].str.contains("empty file").all()
    assert set(df["label"].dropna()) == {"0", "1"}
    with pytest.raises(DiffmemError, match="empty.png: empty file"):
        scan(a, man, tmp_path / "o_fail", ScanConfig(on_error="fail"), quiet=True)
    np.save(tmp_path / "bad.npy", np.zeros((4,), dtype=np.float32))
    with pytest.raises(DiffmemError, match="expected images"):
        scan(a, tmp_path / "bad.npy", tmp_path / "o_bad", quiet=True)
    assert not (tmp_path / "o_bad").exists()


def test_nan_activations_are_an_error_row(tiny, tmp_path):
    a = load_adapter(tiny["unet2d"])
    with torch.no_grad():
        a.denoiser.up_blocks[0].resnets[-1].conv2.bias.fill_(float("nan"))
    folder = write_pngs(tmp_path / "imgs", 3)
    s = scan(a, folder, tmp_path / "o", quiet=True)
    assert s["n_errors"] == 3
    with pytest.raises(DiffmemError, match="NaN"):
        scan(a, folder, tmp_path / "o2", ScanConfig(on_error="fail"), quiet=True)


def test_plain_name_means_the_last_call_with_or_without_call_counts():
    """A module called three times: ``name`` is its third output whether or not counts are given."""
    import torch
    from torch import nn
    from diffmem.probe.capture import Capture, count_calls

    class Thrice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(self.lin(self.lin(x)))
    m = Thrice()
    x = torch.ones(1, 2)
    expected = m.lin(m.lin(m.lin(x)))
    counts = count_calls(m, lambda: m(x))
    for c in (counts, None):
        with Capture(m, ["lin", "lin@0"], c, early_exit=False) as cap:
            m(x)
        assert torch.equal(cap.activations["lin"], expected)
        assert torch.equal(cap.activations["lin@0"], m.lin(x))
    with Capture(m, ["lin"], None, early_exit=True) as cap:     # no counts: cannot stop early, still right
        m(x)
    assert torch.equal(cap.activations["lin"], expected) and not cap.exited_early


def test_dtype_and_device_options(tmp_path):
    """bfloat16 runs on the CPU with float32 statistics; a GPU, when present, gives float32-close scores."""
    import torch
    from diffmem.detect import SpikinessDetector
    from diffmem.errors import DiffmemError
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    path = SAVERS["unet2d"](tmp_path / "u", seed=0)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = SpikinessDetector(load_adapter(path, device="cpu")).score(x)
    bf = SpikinessDetector(load_adapter(path, device="cpu", dtype="bfloat16")).score(x)
    assert bf.dtype == np.float64 and np.isfinite(bf).all() and np.allclose(bf, ref, rtol=0.1)
    assert load_adapter(path, device="auto").device.type in ("cpu", "cuda", "mps")
    with pytest.raises(DiffmemError, match="dtype="):
        load_adapter(path, dtype="float8")
    with pytest.raises(DiffmemError, match="device="):
        load_adapter(path, device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_scores_match_cpu(tmp_path):
    import torch
    from diffmem.detect import SpikinessDetector
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    path = SAVERS["unet2d"](tmp_path / "u", seed=0)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = SpikinessDetector(load_adapter(path, device="cpu")).score(x)
    gpu = SpikinessDetector(load_adapter(path, device="cuda")).score(x)
    assert np.allclose(cpu, gpu, rtol=1e-3)


def test_forward_is_the_one_primitive_and_leaves_no_hooks(tmp_path):
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    from diffmem.probe.adapters import gaussian_like
    from diffmem.probe.represent import forward, generators, represent
    a = load_adapter(SAVERS["unet2d"](tmp_path / "m", seed=0))
    x = torch.rand(3, 1, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    keys = ["a", "b", "c"]
    f = forward(a, x, 20, generators(0, keys), [a.default_layer])
    z = a.prepare(x)
    eps = gaussian_like(z, generators(0, keys))
    with torch.no_grad():
        want = a.predict_eps(a.add_noise(z, 20, eps), 20, None)
    assert torch.equal(f.eps, eps) and torch.equal(f.eps_hat, want)
    early = forward(a, x, 20, generators(0, keys), [a.default_layer], early_exit=True)
    assert early.eps_hat is None and torch.equal(early.activations[a.default_layer], f.activations[a.default_layer])
    assert torch.equal(represent(a, x, [a.default_layer], 20, "spatial_max", generators(0, keys))[a.default_layer],
                       f.pooled("spatial_max")[a.default_layer])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in a.denoiser.modules())
