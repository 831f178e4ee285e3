"""``diffmem train`` and ``diffmem train-classifier``: the benchmark's models."""

from __future__ import annotations

from typing import Annotated

from diffmem.bench.train import UNET_CONFIGS, train_unet
from diffmem.commands.options import BatchSize, Opt, Out, Quiet, Seed
from diffmem.monitor.training import MONITOR_EVERY, TrainingCallback
from diffmem.outputs import check_out
from diffmem.steer.classifier import train_classifier


def train(out: Out,
          data: Annotated[str, Opt("'fashion-mnist' or an image folder / .npy array")] = "fashion-mnist",
          size: Annotated[int, Opt("image side in pixels", min=4)] = 16,
          distinct: Annotated[int, Opt("images seen once", min=0)] = 2000,
          dup: Annotated[str, Opt("duplicated images: COUNTxCOPIES[,…]; 'none' for none")] = "10x100,20x40",
          steps: Annotated[int, Opt("training steps", min=1)] = 6000, batch_size: BatchSize = 128,
          lr: Annotated[float, Opt("learning rate", above=0)] = 1e-3,
          label_dropout: Annotated[float, Opt("null-class rate (classifier-free guidance)", min=0, max=0.99)] = 0.1,
          config: Annotated[str, Opt("UNet size", choices=tuple(UNET_CONFIGS))] = "bench-s",
          checkpoint_every: Annotated[int, Opt("save DIR/checkpoints/step-K every K steps (0: none)", min=0)] = 0,
          monitor: Annotated[bool, Opt("run the memorization monitor every --checkpoint-every steps (default "
                                       "500) and keep DIR/monitor.json; prints a line when its alarm fires")] = False,
          seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Train a class-conditional UNet2DModel on N distinct images plus duplicated ones: a diffusers
    ``DDPMPipeline`` folder + ``diffmem.json`` (the training record)."""
    check_out(out)
    callback = TrainingCallback(checkpoint_every or MONITOR_EVERY, seed=seed, quiet=quiet) if monitor else None
    return train_unet(out, data=data, size=size, distinct=distinct, dup="" if dup == "none" else dup, steps=steps,
                      batch_size=batch_size, lr=lr, label_dropout=label_dropout, config=config, seed=seed,
                      checkpoint_every=checkpoint_every, callback=callback, quiet=quiet)


def classifier(out: Out, size: Annotated[int, Opt("image side in pixels", min=4)] = 16,
               epochs: Annotated[int, Opt("training epochs", min=1)] = 3, seed: Seed = 0,
               quiet: Quiet = False) -> dict:
    """Train the small Fashion-MNIST CNN that scores steering (``model.safetensors`` + ``classifier.json``)."""
    check_out(out)
    return train_classifier(out, size=size, epochs=epochs, seed=seed, quiet=quiet)
