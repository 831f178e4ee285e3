"""The registry of training recipes behind ``diffmem train --family NAME`` (as DiT's ``DiT_models``).

A :class:`Recipe` names the :class:`TrainOptions` fields only it takes, resolves the shared ones left
None to its own defaults, builds its config and trains. :func:`train_model` looks the family up and
refuses, before any work, an option of another family given a non-default value."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

from diffmem.errors import check
from diffmem.train.pixel import PixelRun, train_unet
from diffmem.train.t2i import T2IConfig, train_t2i


@dataclass(frozen=True)
class TrainOptions:
    """Every option of ``diffmem train``; None = the recipe's default (see :data:`RECIPES`)."""

    data: str = "fashion-mnist"
    size: int | None = None
    distinct: int | None = None
    dup: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    label_dropout: float = 0.1
    config: str = PixelRun.config
    schedule: str = PixelRun.schedule
    single: int = T2IConfig.single
    held_out: int = T2IConfig.held_out
    vae_steps: int = T2IConfig.vae_steps
    check_every: int = T2IConfig.check_every
    checkpoint_every: int = 0
    monitor: bool = False


SHARED = ("size", "distinct", "dup", "steps", "batch_size")          # None-able options every recipe resolves


@dataclass(frozen=True)
class Recipe:
    """One family's trainer: ``own`` the options only it takes, ``defaults`` for :data:`SHARED`, and
    ``run(out, options, callback, seed, quiet)`` with every shared option resolved."""

    own: tuple[str, ...]
    defaults: dict
    run: Callable[..., dict]


def _dup(dup: str) -> str:
    return "" if dup == "none" else dup


def _pixel(out, o: TrainOptions, callback, seed: int, quiet: bool) -> dict:
    every = getattr(callback, "every", None)
    check(every is None or every <= o.steps, f"monitor: it measures every {every} steps, more than steps={o.steps}, "
                                             f"so it would never run; lower it with checkpoint_every=K")
    run = PixelRun(data=o.data, size=o.size, distinct=o.distinct, dup=_dup(o.dup), steps=o.steps,
                   batch_size=o.batch_size, lr=o.lr, label_dropout=o.label_dropout, config=o.config,
                   schedule=o.schedule, seed=seed)
    return train_unet(out, run, checkpoint_every=o.checkpoint_every, callback=callback, quiet=quiet)


def _sd(out, o: TrainOptions, callback, seed: int, quiet: bool) -> dict:
    cfg = dataclasses.replace(T2IConfig(), size=o.size, generic=o.distinct, dup=_dup(o.dup), steps=o.steps,
                              batch_size=o.batch_size, lr=o.lr, caption_dropout=o.label_dropout, single=o.single,
                              held_out=o.held_out, vae_steps=o.vae_steps, check_every=o.check_every)
    return train_t2i(out, cfg, seed=seed, quiet=quiet)


RECIPES: dict[str, Recipe] = {
    "unet2d": Recipe(("data", "config", "schedule", "checkpoint_every", "monitor"),
                     {"size": PixelRun.size, "distinct": PixelRun.distinct, "dup": PixelRun.dup,
                      "steps": PixelRun.steps, "batch_size": PixelRun.batch_size}, _pixel),
    "sd": Recipe(("single", "held_out", "vae_steps", "check_every"),
                 {"size": T2IConfig.size, "distinct": T2IConfig.generic, "dup": T2IConfig.dup,
                  "steps": T2IConfig.steps, "batch_size": T2IConfig.batch_size}, _sd),
}


OWNED = tuple(k for r in RECIPES.values() for k in r.own)                 # options some recipe owns


def train_model(family: str, out: str | os.PathLike, options: TrainOptions = TrainOptions(),
                callback: Callable | None = None, seed: int = 0, quiet: bool = False) -> dict:
    """Train ``family``'s recipe with ``options`` into ``out`` (``callback``: the training loop's, unet2d);
    returns the training record's summary."""
    check(family in RECIPES, f"family={family!r}: one of {', '.join(RECIPES)}")
    recipe, default = RECIPES[family], TrainOptions()
    unused = [f"{k}={getattr(options, k)}" for k in OWNED if k not in recipe.own
              and getattr(options, k) != getattr(default, k)]
    check(not unused, f"{', '.join(unused)}: not {'an option' if len(unused) == 1 else 'options'} of family={family}")
    check(callback is None or "monitor" in recipe.own, f"callback: only family=unet2d takes one, not family={family}")
    check(not options.monitor or callback is not None,
          "monitor=True: pass the monitor as callback (diffmem.monitor.training.TrainingCallback)")
    resolved = {k: recipe.defaults[k] if getattr(options, k) is None else getattr(options, k) for k in SHARED}
    return recipe.run(out, dataclasses.replace(options, **resolved), callback, seed, quiet)
