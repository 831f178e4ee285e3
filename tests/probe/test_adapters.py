"""Every command on every model family: sample, scan, steer and bench --model on tiny models built in
code (Stable Diffusion with prompts, DiT with class labels, an unconditional UNet2D, a theory
ReLUDiffusion). Each model gets a training record whose duplicated images are some of the model's
own samples, so exact labels exist and every command has both groups to work on."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffmem.cli import main
from diffmem.models import load_adapter
from diffmem.models.load import save_theory_model
from diffmem.models.tiny import SAVERS
from diffmem.probe.sampling import Sampler, sample_images
from diffmem.theory.diffusion import ReLUDiffusion
from tests.helpers import write_pngs

STEPS = 3


def _theory(path, seed=0):
    model = ReLUDiffusion(64, 16, generator=torch.Generator().manual_seed(seed))
    return save_theory_model(model, (1, 8, 8), path)


MAKERS = {
    "stable_diffusion": lambda p: SAVERS["stable_diffusion"](p, seed=0),
    "dit": lambda p: SAVERS["dit"](p, seed=0),
    "unet2d_unconditional": lambda p: SAVERS["unet2d"](p, num_classes=None, seed=0),
    "theory": _theory,
}


@pytest.fixture(scope="module", params=list(MAKERS))
def family_model(request, tmp_path_factory):
    """A tiny model folder with a ``diffmem.json`` training record: its own first 6 samples (2 copies
    each), 30 other images, and 20 held-out images."""
    root = tmp_path_factory.mktemp(request.param)
    path = MAKERS[request.param](root / "model")
    adapter = load_adapter(path)
    own = sample_images(adapter, 24, adapter.conditions(24), Sampler(1.0, STEPS), 0, True)[:6]
    g = torch.Generator().manual_seed(1)
    other = torch.rand(50, *own.shape[1:], generator=g) * 2 - 1
    data = torch.cat([own, other]).numpy().astype(np.float32)
    np.save(root / "data.npy", data)
    record = {"data": str(root / "data.npy"), "size": adapter.image_size, "indices": list(range(36)),
              "copies": [2] * 6 + [1] * 30, "null_class": None}
    (path / "diffmem.json").write_text(json.dumps(record))
    concept = write_pngs(root / "concept", 4, size=adapter.image_size)
    return request.param, path, concept, root


def _condition_args(family):
    return {"stable_diffusion": ["--guidance", "2"], "dit": [], "unet2d_unconditional": [], "theory": []}[family]


def test_sample(family_model, tmp_path):
    family, path, _, root = family_model
    extra = []
    if family == "stable_diffusion":
        (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
        extra = ["--prompts", str(tmp_path / "prompts.txt"), "--guidance", "2"]
    if family == "dit":
        extra = ["--classes", "1,2"]
    assert main(["sample", str(path), "--n", "4", "--steps", str(STEPS), "--quiet", "--out", str(tmp_path / "s"),
                 *extra]) == 0
    rows = [json.loads(r) for r in (tmp_path / "s" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("memorized" in r for r in rows)
    im = Image.open(tmp_path / "s" / rows[0]["path"])
    adapter = load_adapter(path)
    assert im.size == (adapter.image_size, adapter.image_size)
    assert im.mode == ("RGB" if adapter.image_channels == 3 else "L")   # decoded pixels, not latents
    if family == "stable_diffusion":
        assert [r["prompt"] for r in rows] == ["a red square", "a blue circle"] * 2
    if family == "dit":
        assert [r["class"] for r in rows] == [1, 2, 1, 2]


def test_scan_of_the_samples(family_model, tmp_path):
    _, path, _, _ = family_model
    assert main(["sample", str(path), "--n", "3", "--steps", str(STEPS), "--quiet", "--out", str(tmp_path / "s")]) == 0
    assert main(["scan", str(path), str(tmp_path / "s" / "manifest.jsonl"), "--quiet", "--batch-size", "2",
                 "--out", str(tmp_path / "scan")]) == 0
    summary = json.loads((tmp_path / "scan" / "summary.json").read_text())
    assert summary["n_scored"] == 3 and summary["n_errors"] == 0
    # the same images scored through the Python API (the image's key seeds its noise in both paths)
    import pandas as pd
    from diffmem.data import load_images
    from diffmem.detect import SpikinessDetector
    adapter = load_adapter(path)
    x = load_images(tmp_path / "s" / "manifest.jsonl", size=adapter.image_size, channels=adapter.image_channels)
    api = SpikinessDetector(adapter, batch_size=2).score(torch.from_numpy(x))
    scores = pd.read_parquet(tmp_path / "scan" / "scores.parquet")["score"].to_numpy()
    np.testing.assert_allclose(scores, api, rtol=1e-5)


@pytest.fixture
def copies_against_raw_images(monkeypatch):
    """The record's "training images" are the models' own samples, so copies are judged against those
    images themselves: a tiny random VAE maps every image to nearly the same round trip (d1/d2 ≈ 1 for
    all), so the round-trip rule (tested on the shipped text-to-image model) would leave no copy here."""
    from diffmem.probe.adapters import Adapter
    monkeypatch.setattr(Adapter, "round_trip", lambda self, x, batch_size=256: x)


def test_steer(family_model, tmp_path, copies_against_raw_images):
    family, path, concept, _ = family_model
    extra = ["--prompt", "a red square", "--guidance", "2", "--window", "0:2"] if family == "stable_diffusion" else []
    assert main(["steer", str(path), "--concept", str(concept), "--negative", "none", "--alphas", "0,1",
                 "--n-per-group", "2", "--pool-size", "8", "--steps", str(STEPS), "--window", "0:2", "--quiet",
                 "--out", str(tmp_path / "st"), *extra]) == 0
    r = json.loads((tmp_path / "st" / "steer.json").read_text())
    assert set(r["groups"]) == {"memorized", "generalized"}
    # the record's own samples are drawn with the default conditions, which SD's prompt does not repeat
    for name in ("generalized",) if family == "stable_diffusion" else ("generalized", "memorized"):
        g = r["groups"][name]
        assert g["n"] >= 1 and g["alpha0_equals_unsteered"] and g["output_change_per_unit"] > 0, name


def test_bench_model(family_model, tmp_path, copies_against_raw_images):
    family, path, _, _ = family_model
    assert main(["bench", "--model", str(path), "--n-samples", "24", "--seeds", "0", "--steps", str(STEPS),
                 "--quiet", "--out", str(tmp_path / "b")]) == 0
    r = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert r["split"]["overlap"] == 0 and r["methods"]["nn_oracle"]["auroc"]["mean"] > 0.9
    conditional = {"wen", "sharpness", "anisotropy"} <= set(r["methods"])
    assert conditional == (family == "dit")        # class labels only; SD here is sampled unconditionally


def test_commands_needing_a_record_check_it_before_any_work(tmp_path, capsys):
    path = SAVERS["unet2d"](tmp_path / "norecord", num_classes=None, seed=0)
    for argv in (["bench", "--model", str(path), "--out", str(tmp_path / "b")],
                 ["steer", str(path), "--concept", str(tmp_path), "--out", str(tmp_path / "s")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no diffmem.json training record" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()


def test_candidate_layers_come_from_each_familys_pattern(family_model):
    """The layers detectors and the monitor rank, by hand: a DiT's transformer blocks, the theory
    model's hidden layer, a UNet's resnets (each with its nonlinearity) and mid block."""
    family, path, _, _ = family_model
    layers = load_adapter(path).candidate_layers()
    if family == "dit":
        assert layers == [f"transformer_blocks.{i}" for i in range(4)]
    elif family == "theory":
        assert layers == ["act"]
    else:
        import re
        assert layers and all(re.search(r"(^|\.)(resnets\.\d+(\.nonlinearity)?|mid_block)$", n) for n in layers)
        assert {n for n in layers if n.endswith(".nonlinearity")} == {n + ".nonlinearity" for n in layers
                                                                       if re.search(r"resnets\.\d+$", n)}


def test_residual_t_is_the_timestep_at_snr_10_of_each_schedule(family_model):
    """The label-free residual's timestep, by hand from the schedule: ᾱ_t/(1 − ᾱ_t) nearest 10, so the
    linear 1e-4…0.02 schedule gives 92 and the cosine one 188; a family without a schedule keeps its
    ``default_t``."""
    from diffusers import DDPMScheduler
    from diffmem.probe.adapters import RESIDUAL_SNR
    family, path, _, _ = family_model
    a = load_adapter(path)
    if family == "theory":
        assert a.residual_t == a.default_t
        return
    ac = a.scheduler.alphas_cumprod.double().numpy()
    snr = ac / (1 - ac)
    t = a.residual_t
    assert RESIDUAL_SNR == 10 and isinstance(t, int) and abs(np.log(snr[t] / 10)) == np.abs(np.log(snr / 10)).min()
    a.validate_t(t)
    assert t == 92 and a.residual_rule == "signal-to-noise ratio 10"     # every tiny model has the linear schedule
    if family == "unet2d_unconditional":                               # a cosine schedule, read by the adapter
        DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(path / "scheduler")
        try:
            assert load_adapter(path).residual_t == 188
        finally:
            DDPMScheduler().save_pretrained(path / "scheduler")


def test_noising_is_signal_scale_times_z_plus_noise_std_times_eps(family_model):
    """What the Gaussian denoiser of the residual ratio assumes about every family's ``add_noise``."""
    _, path, _, _ = family_model
    a = load_adapter(path)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(3, *a.latent_shape, generator=g), torch.randn(3, *a.latent_shape, generator=g)
    t = a.residual_t
    np.testing.assert_allclose(a.add_noise(z, t, eps), a.signal_scale(t) * z + a.noise_std(t) * eps, atol=1e-5)
    from diffmem.probe.represent import forward
    f = forward(a, None, t, eps.to(a.device, a.dtype), z=z.to(a.device, a.dtype))
    assert torch.equal(f.z_t, a.add_noise(z.to(a.device, a.dtype), t, eps.to(a.device, a.dtype)))   # what it denoised
