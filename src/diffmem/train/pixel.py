"""Train a small class-conditional diffusers ``UNet2DModel`` (DDPM, ε-prediction, CFG dropout)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from diffmem.data.records import load_source
from diffmem.train.dataset import Duplication, build_training_set
from diffmem.errors import check
from diffmem.outputs import output_dir, progress
from diffmem.schemas import RecordFile, write_result
from diffmem.train import cosine_schedule, update

@dataclass(frozen=True)
class UNetConfig:
    """A named ``UNet2DModel`` size: channels per level, resnets per level, self-attention at the
    lowest resolution (one ``AttnDownBlock2D`` / ``AttnUpBlock2D`` pair)."""

    blocks: tuple[int, ...]
    layers: int
    attention: bool = False


UNET_CONFIGS = {
    "bench-s": UNetConfig((32, 64, 64), 1),
    "bench-s-attn": UNetConfig((32, 64, 64), 1, attention=True),
    "bench-xs": UNetConfig((16, 32, 32), 1),
    "bench-m": UNetConfig((64, 128, 128), 2),
    "test-xs": UNetConfig((16, 32), 1),
}
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}   # --schedule → DDPMScheduler beta_schedule


def make_unet(config: str, size: int, channels: int, num_classes: int | None, seed: int):
    """A ``UNet2DModel`` from :data:`UNET_CONFIGS`; class embeddings 0…num_classes−1 plus a null class."""
    from diffusers import UNet2DModel
    check(config in UNET_CONFIGS, f"config={config!r}: one of {', '.join(UNET_CONFIGS)}")
    c = UNET_CONFIGS[config]
    n = len(c.blocks)
    down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D" if c.attention else "DownBlock2D",)
    up = ("AttnUpBlock2D" if c.attention else "UpBlock2D",) + ("UpBlock2D",) * (n - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                           block_out_channels=c.blocks, layers_per_block=c.layers,
                           norm_num_groups=min(32, c.blocks[0] // 2), attention_head_dim=16,
                           down_block_types=down, up_block_types=up,
                           num_class_embeds=None if num_classes is None else num_classes + 1)


@dataclass(frozen=True)
class PixelRun:
    """What ``diffmem train`` trains (unet2d): ``distinct`` images of ``data`` at ``size`` px seen once plus
    the ``dup`` ones (COUNTxCOPIES[,…]), ``steps`` AdamW steps of ``batch_size`` at ``lr`` (cosine decay),
    ``label_dropout`` (classifier-free guidance), the UNet ``config`` and noise ``schedule``, ``seed``."""

    data: str = "fashion-mnist"
    size: int = 16
    distinct: int = 2000
    dup: str = "10x100,20x40"
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    label_dropout: float = 0.1
    config: str = "bench-s"
    schedule: str = "linear"
    seed: int = 0

    def __post_init__(self):
        check(self.steps >= 1 and self.batch_size >= 1,
              f"steps={self.steps}, batch_size={self.batch_size}: both must be >= 1")
        check(0 <= self.label_dropout < 1, f"label_dropout={self.label_dropout}: must be in [0, 1)")
        check(self.schedule in SCHEDULES, f"schedule={self.schedule!r}: one of {', '.join(SCHEDULES)}")
        check(self.config in UNET_CONFIGS, f"config={self.config!r}: one of {', '.join(UNET_CONFIGS)}")


def train_unet(out: str | os.PathLike, run: PixelRun = PixelRun(), threads: int | None = None,
               checkpoint_every: int = 0, callback: Callable | None = None, quiet: bool = False) -> dict:
    """Train ``run`` and save a diffusers pipeline folder.

    ``out`` gets ``model_index.json``, ``unet/`` (safetensors), ``scheduler/`` and ``diffmem.json``
    (source indices, copies, labels, null class, seed and the training settings); with
    ``checkpoint_every`` K also ``checkpoints/step-000K/`` (the same layout, ``diffmem.json`` holding
    ``global_step``) every K steps, written straight into ``out`` as training goes (the final model
    lands only on success). ``callback(unet, global_step, out, record)`` runs after every optimizer
    step (``record``: the training record dict), e.g. :class:`diffmem.monitor.training.TrainingCallback`.
    """
    from diffusers import DDPMPipeline, DDPMScheduler
    check(checkpoint_every >= 0, f"checkpoint_every={checkpoint_every}: must be >= 0")
    data, size, distinct, dup, steps, batch_size = run.data, run.size, run.distinct, run.dup, run.steps, run.batch_size
    lr, label_dropout, config, schedule, seed = run.lr, run.label_dropout, run.config, run.schedule, run.seed
    if threads:
        torch.set_num_threads(threads)
    dups = Duplication.parse(dup)
    images, labels = load_source(data, size)
    ts = build_training_set(images, labels, distinct, dups, seed)
    rows = np.asarray(ts["rows"])
    X = torch.from_numpy(images[rows])                                    # (R, C, H, W)
    num_classes = None if labels is None else int(labels.max()) + 1
    Y = torch.from_numpy(labels[rows]) if labels is not None else None    # (R,)
    unet = make_unet(config, size, X.shape[1], num_classes, seed)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule])
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lrs = cosine_schedule(opt, steps)
    g = torch.Generator().manual_seed(seed)
    record = {"data": data, "size": size, "distinct": distinct, "dup": dup, "steps": steps,
              "batch_size": batch_size, "lr": lr, "label_dropout": label_dropout, "config": config, "schedule": schedule,
              "seed": seed, "num_classes": num_classes, "null_class": num_classes,
              "parameters": sum(p.numel() for p in unet.parameters()),
              "indices": ts["indices"], "copies": ts["copies"], "labels": ts["labels"]}

    def save(folder: Path, **extra) -> None:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
        write_result(folder / "diffmem.json", {**record, **extra}, RecordFile)

    def checkpoint(k: int) -> None:            # straight into out (each one atomic): kept if training dies
        with output_dir(Path(out) / "checkpoints" / f"step-{k:06d}") as folder:
            save(folder, global_step=k)

    unet.train()
    t0, losses = time.time(), []
    with output_dir(out) as tmp:
        bar = progress(range(1, steps + 1), desc="train unet", disable=quiet)
        for k in bar:
            idx = torch.randint(len(X), (batch_size,), generator=g)
            x0 = X[idx]                                                       # (B, C, H, W)
            eps = torch.randn(x0.shape, generator=g)                          # (B, C, H, W)
            t = torch.randint(0, 1000, (batch_size,), generator=g)            # (B,)
            x_t = sched.add_noise(x0, eps, t)                                 # (B, C, H, W)
            cond = None
            if Y is not None:
                drop = torch.rand(batch_size, generator=g) < label_dropout
                cond = torch.where(drop, torch.full_like(Y[idx], num_classes), Y[idx])   # (B,)
            losses.append(update(opt, lrs, F.mse_loss(unet(x_t, t, class_labels=cond).sample, eps)))
            if k % 100 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            if checkpoint_every and k % checkpoint_every == 0:
                checkpoint(k)
            if callback is not None:
                callback(unet, k, Path(out), record)
        bar.close()
        unet.eval()
        record.update(train_seconds=time.time() - t0, final_loss=float(np.mean(losses[-200:])))
        save(tmp, global_step=steps)
    return {k: v for k, v in record.items() if k not in ("indices", "copies", "labels")}
