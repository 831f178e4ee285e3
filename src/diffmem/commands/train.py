"""``diffmem train`` and ``diffmem train-classifier``: the benchmark's models."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from diffmem.commands.options import Opt, Out, Quiet, Seed
from diffmem.errors import check
from diffmem.monitor.training import MONITOR_EVERY, TrainingCallback
from diffmem.outputs import check_out
from diffmem.steer.classifier import train_classifier
from diffmem.train.pixel import SCHEDULES, UNET_CONFIGS, PixelRun, train_unet
from diffmem.train.t2i import T2IConfig, train_t2i

PIXEL_DEFAULTS = {"size": 16, "distinct": 2000, "dup": "10x100,20x40", "steps": 6000, "batch_size": 128}
SD_DEFAULTS = {"size": T2IConfig.size, "distinct": T2IConfig.generic, "dup": T2IConfig.dup, "steps": T2IConfig.steps,
               "batch_size": T2IConfig.batch_size}


def train(out: Out,
          family: Annotated[str, Opt("unet2d: class-conditional pixel UNet2DModel; sd: Stable Diffusion in "
                                     "miniature (AutoencoderKL + frozen CLIP text encoder + UNet2DConditionModel "
                                     "on colour-tinted Fashion-MNIST with captions)", choices=("unet2d", "sd"))] = "unet2d",
          data: Annotated[str, Opt("'fashion-mnist' or an image folder / .npy array (unet2d)")] = "fashion-mnist",
          size: Annotated[int | None, Opt("image side in pixels (default 16; sd 32)", min=4, max=512)] = None,
          distinct: Annotated[int | None, Opt("images seen once (default 2000; sd: generic-caption items, 1000)",
                                              min=0)] = None,
          dup: Annotated[str | None, Opt("duplicated images: COUNTxCOPIES[,…]; 'none' for none (default "
                                         "10x100,20x40; sd 20x100,20x25, each with a unique caption)")] = None,
          steps: Annotated[int | None, Opt("training steps (default 6000; sd 10000 UNet steps)", min=1)] = None,
          batch_size: Annotated[int | None, Opt("training batch (default 128; sd 64)", min=1, max=4096)] = None,
          lr: Annotated[float, Opt("learning rate", above=0)] = 1e-3,
          label_dropout: Annotated[float, Opt("null-class / empty-caption rate (classifier-free guidance)",
                                              min=0, max=0.99)] = 0.1,
          config: Annotated[str, Opt("UNet size (unet2d)", choices=tuple(UNET_CONFIGS))] = "bench-s",
          schedule: Annotated[str, Opt("unet2d: DDPM noise schedule (1000 steps)", choices=tuple(SCHEDULES))] = "linear",
          single: Annotated[int, Opt("sd: items seen once with a unique caption (hard negatives)", min=0)] = T2IConfig.single,
          held_out: Annotated[int, Opt("sd: held-out test-split items (references)", min=4)] = T2IConfig.held_out,
          vae_steps: Annotated[int, Opt("sd: VAE training steps", min=1)] = T2IConfig.vae_steps,
          check_every: Annotated[int, Opt("sd: measure the unique captions' copy share every K UNet steps "
                                          "(0: never)", min=0)] = T2IConfig.check_every,
          checkpoint_every: Annotated[int, Opt("unet2d: save DIR/checkpoints/step-K every K steps (0: none)",
                                               min=0)] = 0,
          monitor: Annotated[bool, Opt("unet2d: run the memorization monitor every --checkpoint-every steps "
                                       "(default 500) and keep DIR/monitor.json; prints a line when its alarm "
                                       "fires")] = False,
          seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Train a model with a known training set: a ``DDPMPipeline`` (unet2d) or ``StableDiffusionPipeline``
    (sd) folder + ``diffmem.json`` (the training record)."""
    check_out(out)
    o = dict(locals())                                                 # the options as given
    _refuse_other_family(family, o)
    if family == "sd":
        return train_t2i(out, _t2i_config(o), seed=seed, quiet=quiet)
    s = {k: PIXEL_DEFAULTS[k] if o[k] is None else o[k] for k in PIXEL_DEFAULTS}
    callback = _monitor(checkpoint_every, s["steps"], seed, quiet) if monitor else None
    run = PixelRun(data, **{**s, "dup": "" if s["dup"] == "none" else s["dup"]}, lr=lr, label_dropout=label_dropout,
                   config=config, schedule=schedule, seed=seed)
    return train_unet(out, run, checkpoint_every=checkpoint_every, callback=callback, quiet=quiet)


def _monitor(checkpoint_every: int, steps: int, seed: int, quiet: bool) -> TrainingCallback:
    """The ``--monitor`` callback, refused when it would never measure within ``steps``."""
    every = checkpoint_every or MONITOR_EVERY
    check(every <= steps, f"--monitor: it measures every {every} steps, more than --steps {steps}, so it would "
                          f"never run; lower --checkpoint-every")
    return TrainingCallback(every, seed=seed, quiet=quiet)


FAMILY_ONLY = {"data": "unet2d", "config": "unet2d", "schedule": "unet2d", "single": "sd", "held_out": "sd", "vae_steps": "sd",
               "check_every": "sd", "checkpoint_every": "unet2d", "monitor": "unet2d"}   # in signature order


def _refuse_other_family(family: str, options: dict) -> None:
    """An option of the other family given a value other than its default is an error, not ignored."""
    import inspect
    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()}
    unused = ["--" + k.replace("_", "-") for k, owner in FAMILY_ONLY.items()
              if owner != family and options[k] != defaults[k]]
    check(not unused, f"{', '.join(unused)}: not an option of --family {family}")


def _t2i_config(o: dict) -> T2IConfig:
    """The :class:`T2IConfig` of ``diffmem train --family sd``'s options (None: the config's default)."""
    s = {k: SD_DEFAULTS[k] if o[k] is None else o[k] for k in SD_DEFAULTS}
    return dataclasses.replace(T2IConfig(), size=s["size"], generic=s["distinct"],
                               dup="" if s["dup"] == "none" else s["dup"], steps=s["steps"],
                               batch_size=s["batch_size"], lr=o["lr"], caption_dropout=o["label_dropout"],
                               single=o["single"], held_out=o["held_out"], vae_steps=o["vae_steps"],
                               check_every=o["check_every"])


def classifier(out: Out, size: Annotated[int, Opt("image side in pixels", min=4)] = 16,
               epochs: Annotated[int, Opt("training epochs", min=1)] = 3, seed: Seed = 0,
               quiet: Quiet = False) -> dict:
    """Train the small Fashion-MNIST CNN that scores steering (``model.safetensors`` + ``classifier.json``)."""
    check_out(out)
    return train_classifier(out, size=size, epochs=epochs, seed=seed, quiet=quiet)
