"""Spikiness statistics of representation vectors, shared by the theory lab and the probe.

Every function takes ``h`` of shape (B, C) (one vector of C units per row) and returns (B,).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def std(h: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over units (the paper's spikiness score)."""
    return h.std(dim=1, unbiased=False)


def l2(h: torch.Tensor) -> torch.Tensor:
    """Euclidean norm."""
    return h.norm(dim=1)


def l4_over_l2(h: torch.Tensor) -> torch.Tensor:
    """‖h‖₄ / ‖h‖₂ ∈ [C^(-1/4), 1]: 1 for a one-hot vector."""
    return h.norm(p=4, dim=1) / (h.norm(dim=1) + _EPS)


def max_over_mean(h: torch.Tensor) -> torch.Tensor:
    """max |h| / mean |h|: C for a one-hot vector, 1 for a constant one."""
    a = h.abs()
    return a.amax(dim=1) / (a.mean(dim=1) + _EPS)


def max_over_sum(h: torch.Tensor) -> torch.Tensor:
    """max |h| / Σ |h| ∈ [1/C, 1]."""
    a = h.abs()
    return a.amax(dim=1) / (a.sum(dim=1) + _EPS)


def kurtosis(h: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis over units, E[(h-μ)⁴]/Var² − 3."""
    c = h - h.mean(dim=1, keepdim=True)
    var = c.pow(2).mean(dim=1)
    return c.pow(4).mean(dim=1) / (var.pow(2) + _EPS) - 3.0


def participation_ratio(h: torch.Tensor) -> torch.Tensor:
    """(Σ h²)² / Σ h⁴: the effective number of active units (1 for one-hot, C for flat)."""
    s2 = h.pow(2).sum(dim=1)
    return s2.pow(2) / (h.pow(4).sum(dim=1) + _EPS)


STATISTICS = {
    "std": std,
    "l2": l2,
    "l4_over_l2": l4_over_l2,
    "max_over_mean": max_over_mean,
    "max_over_sum": max_over_sum,
    "kurtosis": kurtosis,
    "participation_ratio": participation_ratio,
}


def all_stats(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every statistic of :data:`STATISTICS`, each (B,), computed in float64."""
    h = h.detach().to(torch.float64)
    return {name: fn(h) for name, fn in STATISTICS.items()}
