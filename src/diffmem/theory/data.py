"""Synthetic clustered data for the theory lab and the (α, β)-separability measure.

Cluster k has mean μ_k (norm ``radius``) and either a rank-r_k Gaussian spread (x = μ_k + U_k z,
U_k orthonormal (d, r_k), z ~ N(0, spread² I)) or, with rank 0, a single point repeated n_k times
(duplication). Means sit on a regular simplex blended with a common direction so that the cosine
between any two means equals ``mean_cosine`` (cross-cluster similarity, ≥ −1/(K−1));
``spread / radius`` sets within-cluster similarity. Spread subspaces are orthogonal to every mean
and to each other when d ≥ K + 1 + Σ r_k; otherwise they are random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffmem.errors import check


@dataclass(frozen=True)
class Cluster:
    """n samples; rank 0 = one point duplicated n times."""

    n: int
    rank: int = 0


def cluster_means(K: int, d: int, radius: float = 1.0, mean_cosine: float | None = None) -> torch.Tensor:
    """K means (K, d) of norm ``radius`` with pairwise cosine ``mean_cosine`` (default −1/(K−1))."""
    check(d >= K + 1, f"d={d}: need at least K+1={K + 1} dimensions for {K} clusters")
    lo = -1.0 / (K - 1) if K > 1 else -1.0
    c = lo if mean_cosine is None else float(mean_cosine)
    check(lo - 1e-9 <= c < 1.0, f"mean_cosine={c}: must lie in [{lo:.3f}, 1) for K={K}")
    eye = torch.eye(K, d)                                                 # (K, d)
    simplex = eye - eye.mean(0, keepdim=True)                             # (K, d) centred vertices
    simplex = simplex / simplex.norm(dim=1, keepdim=True).clamp_min(1e-12) if K > 1 else eye
    common = torch.zeros(d)
    common[K] = 1.0                                                       # orthogonal to the simplex
    gamma = (c - lo) / (1 - lo) if K > 1 else max(c, 0.0)                 # weight on the common axis
    return radius * (gamma ** 0.5 * common + (1 - gamma) ** 0.5 * simplex)


def make_clusters(clusters: list[Cluster], d: int, radius: float = 1.0, spread: float = 0.3,
                  mean_cosine: float | None = None, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample clustered data; return X (n, d) and cluster labels (n,)."""
    check(len(clusters) >= 1, "clusters: need at least one cluster")
    for c in clusters:
        check(c.n >= 1 and c.rank >= 0, f"cluster {c}: needs n >= 1 and rank >= 0")
    check(spread >= 0, f"spread={spread}: must be >= 0")
    K = len(clusters)
    mu = cluster_means(K, d, radius, mean_cosine)                         # (K, d)
    free = d - (K + 1)
    need = sum(c.rank for c in clusters)
    if need <= free:
        basis = torch.eye(d)[K + 1:K + 1 + need]                          # (need, d) orthonormal
    else:
        q, _ = torch.linalg.qr(torch.randn(d, max(need, 1), generator=generator))
        basis = q.T[:need] if need <= d else torch.randn(need, d, generator=generator)
        basis = basis / basis.norm(dim=1, keepdim=True)
    xs, labels, start = [], [], 0
    for k, c in enumerate(clusters):
        U = basis[start:start + c.rank]                                   # (r_k, d)
        start += c.rank
        z = torch.randn(c.n, c.rank, generator=generator) * spread        # (n_k, r_k)
        xs.append(mu[k] + z @ U)                                          # (n_k, d)
        labels.append(torch.full((c.n,), k))
    return torch.cat(xs), torch.cat(labels)


def separability(X: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(α, β) of labelled data X (n, d).

    With x̂ = x/‖x‖: α = min over pairs i ≠ j in the same cluster of x̂_iᵀx̂_j, β = max over
    pairs in different clusters. A cluster of one (or of copies of one point) gives α = 1 and
    a single cluster gives β = −1. The data is (α, β)-separable with a margin when α > β.
    """
    check(X.ndim == 2 and labels.shape == (X.shape[0],), "separability: X (n, d) and labels (n,) needed")
    check(bool(torch.isfinite(X).all()), "separability: data contains NaN or infinite values")
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    G = Xn @ Xn.T                                                         # (n, n) cosines
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(X), dtype=torch.bool)
    within, cross = G[same & off], G[~same]
    alpha = float(within.min()) if within.numel() else 1.0
    beta = float(cross.max()) if cross.numel() else -1.0
    return min(alpha, 1.0), beta
