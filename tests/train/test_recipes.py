"""The training-recipe registry: defaults resolved per family, other families' options refused."""

import dataclasses

import pytest

from diffmem.cli import main
from diffmem.errors import DiffmemError
from diffmem.monitor.training import TrainingCallback
from diffmem.train import recipes
from diffmem.train.recipes import RECIPES, Recipe, TrainOptions, train_model


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
    assert "more than --steps 100" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_every_recipe_owns_distinct_options():
    owned = [k for r in RECIPES.values() for k in r.own]
    assert len(owned) == len(set(owned)) and set(owned) <= {f.name for f in dataclasses.fields(TrainOptions)}
    assert isinstance(RECIPES["sd"], Recipe) and recipes.SHARED == ("size", "distinct", "dup", "steps", "batch_size")
