"""The training monitor: alarm rules, restored state (bit-identical training), plain and accelerate
loops, offline == online, the CLI and the demo's keys."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffmem.train.pixel import make_unet
from diffmem.monitor import MemorizationMonitor, stable_rank
from diffmem.monitor import rules


def test_tail_test_is_calibrated_and_detects_a_crowded_tail():
    rng = np.random.default_rng(0)
    ps = [rules.tail_test(rng.normal(size=200), rng.normal(size=500))["p"] for _ in range(400)]
    assert np.mean(np.array(ps) < 0.05) <= 0.08          # valid under exchangeability (no inflation)
    assert np.mean(np.array(ps) < 0.5) > 0.3               # and not vacuous
    probe = np.r_[rng.normal(size=190), rng.normal(5, 0.1, size=10)]   # 10 of 200 probes far in the tail
    res = rules.tail_test(probe, rng.normal(size=500))
    assert res["p"] < 1e-3 and res["excess"] >= 0.05


def test_tail_test_exact_law_sums_to_one():
    # all probes below every reference: J = 0, so P(J >= 0) must be exactly 1
    assert rules.tail_test(np.zeros(30), np.ones(40))["p"] == pytest.approx(1.0)
    assert rules.tail_test(np.ones(30), np.zeros(40))["p"] < 1e-6


def test_control_chart_fires_on_a_sustained_shift_only():
    base = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0]
    assert rules.control_chart(base) is None
    assert rules.control_chart(base + [5, 5, 5]) == 7            # second consecutive out-of-band point
    assert rules.control_chart(base + [5, 1.0, 5]) is None       # single spikes do not
    assert rules.control_chart(base + [-5, -5], direction="up") is None


def test_stable_rank_of_known_matrices():
    assert stable_rank(torch.eye(6)) == pytest.approx(6.0, rel=1e-5)
    assert stable_rank(torch.outer(torch.arange(1., 5.), torch.ones(3))) == pytest.approx(1.0, rel=1e-5)


def _images(n, seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def _train(steps, monitor=None, accelerate=False):
    """A tiny class-conditional UNet trained ``steps`` steps; the monitor (if any) runs every step it asks."""
    unet = make_unet("test-xs", 8, 1, 10, seed=0)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000)
    model = unet
    if accelerate:
        from accelerate import Accelerator
        acc = Accelerator(cpu=True)
        model, opt = acc.prepare(unet, opt)
    torch.manual_seed(123)       # the loop draws from the global RNG, so a monitor touching it would show
    data = _images(32, 1)
    for k in range(1, steps + 1):
        x0 = data[torch.randint(len(data), (8,))]
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (8,))
        model.train()
        loss = F.mse_loss(model(sched.add_noise(x0, eps, t), t, class_labels=torch.randint(0, 11, (8,))).sample, eps)
        opt.zero_grad()
        (acc.backward(loss) if accelerate else loss.backward())
        opt.step()
        if monitor is not None:
            monitor.step(model, k)
            assert model.training                       # train mode restored
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("accelerate", [False, True], ids=["plain", "accelerate"])
def test_training_is_bit_identical_with_the_monitor_on(accelerate):
    if accelerate:
        pytest.importorskip("accelerate")
    mon = MemorizationMonitor(every=3, batch_size=16).fit(_images(24, 2), _images(40, 3))
    off, on = _train(7, accelerate=accelerate), _train(7, mon, accelerate=accelerate)
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)
    assert [r["step"] for r in mon.history_] == [3, 6]
    row = mon.history_[-1]
    assert 0 <= row["spikiness"]["p"] <= 1 and row["spikiness"]["layer"] in row["spikiness"]["per_layer"]
    assert set(row["loss"]) >= {"train", "heldout", "gap", "welch_p", "tail_p"}
    assert row["stable_rank"]["per_weight"] and all(k.startswith("mid_block.") for k in row["stable_rank"]["per_weight"])
    assert set(mon.alarms()) == {"spikiness.tail", *__import__("diffmem.monitor.monitor", fromlist=["x"]).BASELINES}


def test_monitor_drops_duplicate_probes_and_checks_shapes():
    x = _images(10, 0)
    mon = MemorizationMonitor().fit(torch.cat([x, x]), _images(12, 1))
    assert len(mon.probe_) == 10
    from diffmem.errors import DiffmemError
    with pytest.raises(DiffmemError, match="differ in shape"):
        MemorizationMonitor().fit(x, _images(12, 1, size=16))


def test_alarm_steps_follow_the_rules_on_a_recorded_history():
    """Quiet signals raise no alarm; our alarm is the first checkpoint whose corrected p < alpha."""
    rng = np.random.default_rng(0)
    fake = [{"step": s, "spikiness": {"p": 0.5, "excess": 0.01}, "loss": {"tail_p": 0.5, "welch_p": 0.5, "gap": 0.0},
             "stable_rank": {"mean": 10 + rng.normal(0, 0.01)}} for s in range(100, 1100, 100)]
    mon = MemorizationMonitor().fit(_images(10, 0), _images(12, 1))
    mon.history_ = fake
    assert all(v is None for v in mon.alarms().values())
    for r in fake[6:]:
        r["spikiness"]["p"] = 1e-5
    assert mon.alarm_step_ == 700 and mon.summary()["checkpoints"][6]["alarm"]


@pytest.mark.slow
def test_train_monitor_then_offline_monitor_agree(tmp_path):
    run = tmp_path / "run"
    from diffmem.cli import main
    assert main(["train", "--distinct", "60", "--dup", "4x40", "--steps", "40", "--batch-size", "16", "--config",
                 "test-xs", "--size", "8", "--checkpoint-every", "20", "--monitor", "--out", str(run), "--quiet"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000020", "step-000040"]
    online = json.loads((run / "monitor.json").read_text())["runs"]["run"]
    assert main(["monitor", str(run / "checkpoints"), "--ground-truth", "--n", "8", "--device", "cpu",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 0
    offline = json.loads((tmp_path / "m" / "monitor.json").read_text())["runs"]["run"]
    assert (tmp_path / "m" / "monitor.png").stat().st_size > 0
    assert [c["step"] for c in offline["checkpoints"]] == [20, 40]
    for a, b in zip(online["checkpoints"], offline["checkpoints"]):
        assert a["spikiness"] == b["spikiness"] and a["loss"] == b["loss"] and a["stable_rank"] == b["stable_rank"]
        assert 0 <= b["copy_fraction"] <= 1
    assert "onset_step" in offline and "lead_steps" in offline


@pytest.mark.slow
def test_smoke_monitor_demo_quick_writes_both_runs(tmp_path):
    from diffmem.cli import main
    assert main(["monitor", "--demo", "--quick", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    res = json.loads((tmp_path / "d" / "monitor.json").read_text())
    assert set(res["runs"]) == {"duplicated", "control"}
    for run in res["runs"].values():
        assert {"alarm_step", "onset_step", "baselines", "checkpoints", "lead_steps"} <= set(run)
        assert set(run["baselines"]) >= {"loss_gap.welch", "stable_rank.chart"}
    assert (tmp_path / "d" / "monitor.png").exists()


def test_monitor_cli_errors_are_one_line(tmp_path, capfd):
    from diffmem.cli import main
    (tmp_path / "empty").mkdir()
    for args, words in (([], "CKPT_DIR"), ([tmp_path / "missing"], "not a folder"),
                        ([tmp_path / "empty"], "neither a model folder")):
        assert main(["monitor", *map(str, args), "--out", str(tmp_path / "o")]) == 2
        err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]   # library output too
        assert len(err) == 1 and err[0].startswith("diffmem: error:") and words in err[0], (args, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_overhead_benchmark_trains_identical_weights_with_the_monitor_on():
    from diffmem.monitor.bench import overhead
    from diffmem.train.pixel import PixelRun
    res = overhead(PixelRun(size=8, distinct=20, dup="2x3", steps=4, batch_size=4, config="test-xs"), every=2,
                   pairs=1, quiet=True)
    assert res["weights_identical"] and res["measurements"] == 2
    assert len(res["seconds_off"]) == len(res["seconds_on"]) == 1 and 0 < res["monitor_fraction"] < 1


def test_probes_are_vae_encoded_once_while_the_vae_is_unchanged(tmp_path, monkeypatch):
    from diffmem.models import load_adapter
    from diffmem.models.tiny import SAVERS
    a = load_adapter(SAVERS["stable_diffusion"](tmp_path / "sd", seed=0))
    g = torch.Generator().manual_seed(0)
    imgs = lambda n: torch.rand(n, 3, a.image_size, a.image_size, generator=g) * 2 - 1  # noqa: E731
    encoded, real = [], a.vae.encode
    def encode(x):
        encoded.extend([len(x)] if len(x) > 1 else [])      # batch-1 encodes: the layer listing's dummy runs
        return real(x)
    monkeypatch.setattr(a.vae, "encode", encode)
    mon = MemorizationMonitor(every=1, batch_size=16).fit(imgs(10), imgs(12))
    first = mon.step(a, 1)
    assert mon.step(a, 2)["loss"] == first["loss"] and encoded == [16, 6]      # encoded once, same rows
    with torch.no_grad():
        next(a.vae.parameters()).mul_(1.5)                                      # the VAE changed: encode again
    mon.step(a, 3)
    assert encoded == [16, 6, 16, 6]
    mon.set_params(batch_size=8).step(a, 4)                                    # other batches: encode again
    assert encoded == [16, 6, 16, 6, 8, 8, 6]
