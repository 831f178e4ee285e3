"""Training the models diffmem benchmarks: pixel UNets (:mod:`~diffmem.train.pixel`) and Stable
Diffusion in miniature (:mod:`~diffmem.train.t2i`), with the optimizer pieces they share."""

from __future__ import annotations

import math

import torch


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over min(200, steps/10 + 1) steps, then cosine decay to 0 at ``steps``."""
    warm = min(200, steps // 10 + 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / steps)))


def update(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, clip: float | None = None) -> float:
    """One optimizer step on ``loss`` (gradient norm clipped to ``clip`` when given); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    sched.step()
    return loss.item()
