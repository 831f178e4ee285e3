"""``diffmem train`` and ``diffmem train-classifier``: the benchmark's models."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from diffmem.commands.options import Opt, Out, Quiet, Seed
from diffmem.monitor.training import MONITOR_EVERY, TrainingCallback
from diffmem.outputs import check_out
from diffmem.steer.classifier import train_classifier
from diffmem.train.pixel import SCHEDULES, UNET_CONFIGS
from diffmem.train.recipes import RECIPES, TrainOptions, train_model
from diffmem.train.t2i import T2IConfig


def train(out: Out,
          family: Annotated[str, Opt("unet2d: class-conditional pixel UNet2DModel; sd: Stable Diffusion in "
                                     "miniature (AutoencoderKL + frozen CLIP text encoder + UNet2DConditionModel "
                                     "on colour-tinted Fashion-MNIST with captions)", choices=tuple(RECIPES))] = "unet2d",
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
    options = TrainOptions(**{f.name: o[f.name] for f in dataclasses.fields(TrainOptions)})
    callback = TrainingCallback(checkpoint_every or MONITOR_EVERY, seed=seed, quiet=quiet) if monitor else None
    return train_model(family, out, options, callback, seed, quiet)


def classifier(out: Out, size: Annotated[int, Opt("image side in pixels", min=4)] = 16,
               epochs: Annotated[int, Opt("training epochs", min=1)] = 3, seed: Seed = 0,
               quiet: Quiet = False) -> dict:
    """Train the small Fashion-MNIST CNN that scores steering (``model.safetensors`` + ``classifier.json``)."""
    check_out(out)
    return train_classifier(out, size=size, epochs=epochs, seed=seed, quiet=quiet)
