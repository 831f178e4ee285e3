"""The training-recipe registry: defaults resolved per family, other families' options refused."""

import dataclasses

import pytest

from diffmem.cli import main
from diffmem.errors import DiffmemError
from diffmem.monitor.training import TrainingCallback
from diffmem.train import recipes
from diffmem.train.recipes import RECIPES, TrainOptions, train_model


def _recording(monkeypatch, family):
    """Replace ``family``'s trainer by one that returns the options it was given."""
    monkeypatch.setitem(RECIPES, family, dataclasses.replace(RECIPES[family], run=lambda out, o, cb, s, q: o))


def test_shared_options_resolve_to_each_familys_defaults(monkeypatch):
    for family in RECIPES:
        _recording(monkeypatch, family)
    pixel = train_model("unet2d", "o", TrainOptions())
    sd = train_model("sd", "o", TrainOptions(steps=7))
    assert (pixel.size, pixel.distinct, pixel.dup, pixel.steps, pixel.batch_size) == (16, 2000, "10x100,20x40", 6000, 128)
    assert (sd.size, sd.distinct, sd.dup, sd.steps, sd.batch_size) == (32, 1000, "20x100,20x25", 7, 64)


def test_another_familys_options_are_refused_with_their_values():
    with pytest.raises(DiffmemError, match=r"^config=bench-xs, schedule=cosine: not options of family=sd$"):
        train_model("sd", "o", TrainOptions(config="bench-xs", schedule="cosine"))
    with pytest.raises(DiffmemError, match=r"^vae_steps=5: not an option of family=unet2d$"):
        train_model("unet2d", "o", TrainOptions(vae_steps=5))
    with pytest.raises(DiffmemError, match="family='dit': one of unet2d, sd"):
        train_model("dit", "o")


def test_a_monitor_that_would_never_measure_is_refused_before_training(tmp_path):
    with pytest.raises(DiffmemError, match="every 500 steps, more than steps=100"):
        train_model("unet2d", tmp_path / "m", TrainOptions(steps=100), TrainingCallback(500))
    assert not (tmp_path / "m").exists()


def test_the_command_names_flags(tmp_path, capsys):
    assert main(["train", "--family", "sd", "--schedule", "cosine", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip() == "diffmem: error: --schedule cosine: not an option of --family sd"
    assert main(["train", "--monitor", "--steps", "100", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "more than --steps 100" in err and "lower it with --checkpoint-every K" in err
    assert not (tmp_path / "m").exists()


def test_every_recipe_owns_distinct_options():
    owned = [k for r in RECIPES.values() for k in r.own]
    assert len(owned) == len(set(owned)) and set(owned) <= {f.name for f in dataclasses.fields(TrainOptions)}


def test_options_map_onto_each_trainers_config(monkeypatch):
    got = {}
    monkeypatch.setattr(recipes, "train_unet", lambda out, run, **kw: got.setdefault("unet2d", (run, kw)))
    monkeypatch.setattr(recipes, "train_t2i", lambda out, cfg, seed, quiet: got.setdefault("sd", (cfg, seed)))
    train_model("unet2d", "o", TrainOptions(dup="none", lr=0.5, label_dropout=0.2, schedule="cosine",
                                            checkpoint_every=7), seed=3)
    run, kw = got["unet2d"]
    assert (run.dup, run.lr, run.label_dropout, run.schedule, run.seed, kw["checkpoint_every"]) == ("", 0.5, 0.2,
                                                                                                    "cosine", 3, 7)
    train_model("sd", "o", TrainOptions(distinct=5, dup="none", lr=0.5, label_dropout=0.2, vae_steps=9), seed=4)
    cfg, seed = got["sd"]
    assert (cfg.generic, cfg.dup, cfg.lr, cfg.caption_dropout, cfg.vae_steps, seed) == (5, "", 0.5, 0.2, 9, 4)


def test_a_monitor_option_without_its_callback_is_refused():
    with pytest.raises(DiffmemError, match="monitor=True: pass the monitor as callback"):
        train_model("unet2d", "o", TrainOptions(monitor=True))
    with pytest.raises(DiffmemError, match="callback: only family=unet2d takes one"):
        train_model("sd", "o", callback=lambda *a: None)
