"""Fine-tuning a text-to-image model (diffmem.train.finetune): LoRA checkpoints load in plain diffusers,
training is bit-identical with the monitor on and off, the alarm stops training, bad input is refused."""

import json

import numpy as np
import pytest
import torch

from diffmem.cli import main
from diffmem.monitor.finetune import FinetuneWatch, monitored_finetune
from diffmem.train.finetune import Finetune, finetune
from diffmem.train.t2i import T2IConfig, train_t2i

TINY = T2IConfig(size=16, generic=24, dup="2x3", single=2, held_out=30, vae_steps=3, steps=4, batch_size=8,
                 text_width=16, max_tokens=10, unet_channels=(16, 32), check_every=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    g = np.random.default_rng(0)
    fake = lambda n: (g.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32), g.integers(0, 10, n))  # noqa: E731
    out = tmp_path_factory.mktemp("t2i") / "model"
    train_t2i(out, TINY, seed=0, quiet=True, data=(fake(60), fake(60)))
    rec = json.loads((out / "diffmem.json").read_text())
    data = np.load(out / "data.npy")
    held = rec["held_out"]
    x = torch.from_numpy(data[held]).float() / 127.5 - 1                      # (30, 3, 16, 16)
    return out, x, [rec["captions"][i] for i in held]


def _unet_weights(folder):
    from safetensors.torch import load_file
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_lora_checkpoint_loads_with_plain_diffusers_and_samples(base, tmp_path):
    from diffusers import StableDiffusionPipeline
    path, x, caps = base
    r = finetune(path, x[:6], caps[:6], tmp_path / "ft", Finetune(steps=4, batch_size=4, lr=1e-2, lora_rank=4,
                                                                   checkpoint_every=2), quiet=True)
    assert r["lora"] and r["checkpoints"] == [2, 4] and 0 < r["trainable_parameters"] < 20_000
    ckpt = tmp_path / "ft" / "checkpoints" / "step-000004"
    assert (ckpt / "pytorch_lora_weights.safetensors").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    plain = pipe(caps[0], num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(ckpt)
    tuned = pipe(caps[0], num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert tuned.shape == plain.shape == (1, 16, 16, 3) and np.isfinite(tuned).all()
    assert not np.allclose(tuned, plain)                       # the LoRA (lr 1e-2, 4 steps) changed the model


def test_training_is_bit_identical_with_the_monitor_on_and_off_with_lora(base, tmp_path):
    from safetensors.torch import load_file
    path, x, caps = base
    cfg = Finetune(steps=4, batch_size=4, lr=1e-2, lora_rank=4)
    finetune(path, x[:10], caps[:10], tmp_path / "off", cfg, quiet=True)
    on = monitored_finetune(path, x[:10], caps[:10], tmp_path / "on", cfg, x[10:], FinetuneWatch(2, ground_truth=4),
                            quiet=True)
    a, b = (load_file(tmp_path / d / "pytorch_lora_weights.safetensors") for d in ("off", "on"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mon = json.loads((tmp_path / "on" / "monitor.json").read_text())["runs"]["run"]
    assert [c["step"] for c in mon["checkpoints"]] == [2, 4] and on["alarm_step"] == mon["alarm_step"]
    assert all(0 <= c["copy_fraction"] <= 1 for c in mon["checkpoints"]) and "onset_step" in mon


def test_full_finetune_writes_a_pipeline_and_stop_on_alarm_names_the_checkpoint_to_keep(base, tmp_path, monkeypatch):
    """The stop mechanics, with the alarm forced at the third measurement (the tiny model cannot memorize
    in a few steps): training stops at step 3 and names checkpoint 2; the model written is a full UNet."""
    from diffmem.monitor.monitor import MemorizationMonitor
    monkeypatch.setattr(MemorizationMonitor, "alarm_step_",
                        property(lambda self: self.history_[2]["step"] if len(self.history_) >= 3 else None))
    path, x, caps = base
    r = monitored_finetune(path, x[:8], caps[:8], tmp_path / "full", Finetune(steps=40, batch_size=8, lr=3e-3,
                           checkpoint_every=1), x[8:], FinetuneWatch(1, stop_on_alarm=True), quiet=True)
    assert r["stopped_at"] == r["alarm_step"] == r["steps_done"] == 3 and r["checkpoints"] == [1, 2, 3]
    assert json.loads((tmp_path / "full" / "finetune.json").read_text())["keep"] == "checkpoints/step-000002"
    assert r["keep"] == "checkpoints/step-000002"
    assert _unet_weights(tmp_path / "full").keys() == _unet_weights(path).keys()
    assert not all(torch.equal(_unet_weights(tmp_path / "full")[k], v) for k, v in _unet_weights(path).items())


def test_finetune_refuses_bad_input_before_training(base, tmp_path, capsys):
    path, x, caps = base
    np.save(tmp_path / "x.npy", ((x[:3].numpy() + 1) * 127.5).astype(np.uint8))
    for argv, problem in ((["--images", str(tmp_path / "x.npy")], "3 images but 0 captions"),
                          (["--images", str(tmp_path / "x.npy"), "--monitor-every", "2"], "needs --reference"),
                          (["--images", str(tmp_path / "x.npy"), "--stop-on-alarm"], "need the monitor")):
        assert main(["finetune", str(path), *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffmem: error:") and problem in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rank", [0, 4])
def test_offline_monitor_on_finetune_checkpoints_gives_the_online_rows(base, tmp_path, rank):
    """Full-UNet checkpoints are pipeline folders; LoRA ones load onto the base named in lora.json."""
    path, x, caps = base
    monitored_finetune(path, x[:8], caps[:8], tmp_path / "ft", Finetune(steps=4, batch_size=4, lr=1e-2,
                       lora_rank=rank, checkpoint_every=2), x[8:], FinetuneWatch(2), quiet=True)
    online = json.loads((tmp_path / "ft" / "monitor.json").read_text())["runs"]["run"]
    for name, imgs in (("probe", x[:8]), ("reference", x[8:])):
        np.save(tmp_path / f"{name}.npy", np.round((imgs.numpy() + 1) * 127.5).astype(np.uint8))
    assert main(["monitor", str(tmp_path / "ft" / "checkpoints"), "--probe", str(tmp_path / "probe.npy"),
                 "--reference", str(tmp_path / "reference.npy"), "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "off")]) == 0
    offline = json.loads((tmp_path / "off" / "monitor.json").read_text())["runs"]["run"]
    assert [c["step"] for c in offline["checkpoints"]] == [c["step"] for c in online["checkpoints"]] == [2, 4]
    for a, b in zip(online["checkpoints"], offline["checkpoints"]):
        assert a["spikiness"]["p"] == pytest.approx(b["spikiness"]["p"], rel=1e-6)
        assert a["loss"]["train"] == pytest.approx(b["loss"]["train"], rel=1e-5)
    assert online["checkpoints"][0]["loss"]["train"] != online["checkpoints"][1]["loss"]["train"]   # it trained
    if rank:                                        # the LoRA weights are in the loaded checkpoint's forward
        from diffmem.models import load_adapter
        z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        eps = [load_adapter(p).predict_eps(z, 500) for p in (path, tmp_path / "ft" / "checkpoints" / "step-000004")]
        assert (eps[0] - eps[1]).abs().max() > 1e-4


def test_smoke_finetune_demo_quick_runs_the_three_fine_tunes_with_ground_truth(base, tmp_path):
    path, _, _ = base
    assert main(["finetune", str(path), "--demo", "--quick", "--quiet", "--out", str(tmp_path / "d")]) == 0
    res = json.loads((tmp_path / "d" / "monitor.json").read_text())
    assert set(res["runs"]) == {"memorizing-full", "memorizing-lora", "control-full"}
    for name, run in res["runs"].items():
        assert [c["step"] for c in run["checkpoints"]] == [3, 6] and run["lora"] == (name == "memorizing-lora")
        assert all(0 <= c["copy_fraction"] <= 1 for c in run["checkpoints"]) and "lead_steps" in run
    assert res["runs"]["control-full"]["n_images"] == 10 and (tmp_path / "d" / "monitor.png").stat().st_size > 0



@pytest.mark.parametrize("rank", [0, 2])
def test_finetune_overhead_benchmark_trains_identical_weights_with_the_monitor_on(base, rank):
    from diffmem.monitor.bench import finetune_overhead
    path, _, _ = base
    res = finetune_overhead(path, Finetune(steps=4, batch_size=4, lr=1e-3, lora_rank=rank), every=2, pairs=1,
                            n_images=8, n_reference=16, quiet=True)
    assert res["weights_identical"] and res["measurements"] == 2 and res["lora_rank"] == rank
    assert len(res["seconds_off"]) == len(res["seconds_on"]) == 1
    assert res["overhead_ratio"] == sum(res["seconds_on"]) / sum(res["seconds_off"])


def test_broken_lora_checkpoints_are_refused_naming_the_file(base, tmp_path):
    from diffmem.errors import DiffmemError
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    path, _, _ = base
    pixel = SAVERS["unet2d"](tmp_path / "pixel", seed=0)
    for name, spec, weights, words in (("nobase", {}, True, "names its base model folder"),
                                       ("noweights", {"base": str(path)}, False, "names its base model folder"),
                                       ("pixelbase", {"base": str(pixel)}, True, "is not a Stable Diffusion model"),
                                       ("missing", {"base": str(tmp_path / "gone")}, True, "is not a model folder"),
                                       ("emptyweights", {"base": str(path)}, True, "not LoRA weights of its base")):
        d = tmp_path / name
        d.mkdir()
        (d / "lora.json").write_text(json.dumps(spec))
        if weights:
            (d / "pytorch_lora_weights.safetensors").write_bytes(b"")
        with pytest.raises(DiffmemError, match=f"(lora.json|safetensors): .*{words}"):
            load_adapter(d)
