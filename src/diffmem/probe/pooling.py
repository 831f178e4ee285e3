"""Pool an activation into one vector per input."""

from __future__ import annotations

import torch

from diffmem.errors import DiffmemError

POOLS = ("spatial_max", "spatial_mean", "token_mean", "token_max", "flatten", "auto")


def pool(act: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """(B, C, H, W) | (B, N, D) | (B, C) → (B, C').

    ``spatial_max``/``spatial_mean`` reduce H, W of (B, C, H, W); ``token_mean``/``token_max``
    reduce N of (B, N, D); ``flatten`` keeps everything; ``auto`` is spatial_max for 4-D,
    token_mean for 3-D and identity for 2-D inputs.
    """
    if mode not in POOLS:
        raise DiffmemError(f"pool {mode!r}: must be one of {', '.join(POOLS)}")
    if mode == "auto":
        mode = {4: "spatial_max", 3: "token_mean"}.get(act.ndim, "flatten")
    if mode == "flatten":
        return act.reshape(act.shape[0], -1)
    need = 4 if mode.startswith("spatial") else 3
    if act.ndim != need:
        raise DiffmemError(f"pool {mode!r}: needs a {need}-D activation, got shape {tuple(act.shape)}")
    if mode == "spatial_max":
        return act.amax(dim=(2, 3))                                       # (B, C)
    if mode == "spatial_mean":
        return act.mean(dim=(2, 3))                                       # (B, C)
    if mode == "token_mean":
        return act.mean(dim=1)                                            # (B, D)
    return act.amax(dim=1)                                                # (B, D)
