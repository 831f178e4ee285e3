"""Closed-form local minimizers of the tied ReLU-DAE loss (derivation in docs/theory.md).

If the units given to cluster k are active on all of its (noisy) samples and silent on every other
cluster, the model is linear on cluster k with A_k = W_k W_kᵀ and the loss splits per cluster:

    ρ_k [tr(A_k (S_k + σ² I) A_k) − 2 tr(A_k S_k)] + 2λ tr(A_k),  S_k = X_kᵀX_k / n_k, ρ_k = n_k / n,

minimized over PSD A_k of rank ≤ p_k by A_k = Σ_j a_j u_j u_jᵀ over the top-p_k eigenpairs
(s_j, u_j) of S_k with a_j = max(0, (s_j − λ/ρ_k) / (s_j + σ²)). A cluster that is one point x
(memorization, or a duplicated sample) gives the rank-1 block r² x xᵀ with
r² = (‖x‖² − λ/ρ)/(‖x‖⁴ + σ²‖x‖²), i.e. r² = (‖x‖² − nλ)/(‖x‖⁴ + σ²‖x‖²) for one copy.
"""

from __future__ import annotations

import torch

from diffmem.errors import check


def cluster_block(Xk: torch.Tensor, n_total: int, p_k: int, sigma: float, lam: float) -> torch.Tensor:
    """Optimal A_k = W_k W_kᵀ (d, d) for the samples Xk (n_k, d) of one cluster."""
    n_k = Xk.shape[0]
    rho = n_k / n_total
    S = Xk.double().T @ Xk.double() / n_k                                 # (d, d)
    s, U = torch.linalg.eigh(S)                                           # ascending
    s, U = s.flip(0)[:p_k], U.flip(1)[:, :p_k]                            # top p_k
    a = ((s - lam / rho) / (s + sigma ** 2)).clamp_min(0)                 # (p_k,)
    return (U * a) @ U.T


def minimizer_product(X: torch.Tensor, labels: torch.Tensor, units: dict[int, int] | int,
                      sigma: float, lam: float) -> torch.Tensor:
    """W* W*ᵀ (d, d) of the hybrid minimizer: the sum of every cluster's optimal block.

    ``units`` maps cluster label → p_k, or one int for all clusters. Memorization and
    generalization are the special cases of single-point and well-sampled clusters.
    """
    check(sigma > 0 and lam >= 0, f"sigma={sigma}, lambda={lam}: need sigma > 0 and lambda >= 0")
    ks = sorted(int(k) for k in labels.unique())
    per = units if isinstance(units, dict) else {k: units for k in ks}
    A = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64)
    for k in ks:
        A += cluster_block(X[labels == k], len(X), per[k], sigma, lam)
    return A


def memorization_columns(X: torch.Tensor, sigma: float, lam: float) -> torch.Tensor:
    """W* (d, n) of the memorization minimizer: column i = r_i x_i (r_i from the formula above)."""
    sq = X.double().pow(2).sum(1)                                         # (n,)
    r2 = ((sq - len(X) * lam) / (sq.pow(2) + sigma ** 2 * sq)).clamp_min(0)
    return (X.double() * r2.sqrt()[:, None]).T


def rel_err(product: torch.Tensor, target: torch.Tensor) -> float:
    """‖P − P*‖_F / ‖P*‖_F between a trained W2W1ᵀ and the closed form."""
    return float((product.double() - target).norm() / target.norm().clamp_min(1e-30))
