"""Numbers that say how a trained ReLU-DAE represents its data."""

from __future__ import annotations

import torch

from diffmem.stats import all_stats
from diffmem.theory.model import ReLUDAE

ALIGN_COS = 0.99  # a column "stores a sample" when its cosine to that training sample is at least this


def column_alignment(model: ReLUDAE, X: torch.Tensor, min_norm: float = 1e-3) -> dict[str, float]:
    """Cosine of each live encoder column to its nearest training sample.

    Returns the number of live columns (norm ≥ ``min_norm``), their mean best cosine and the
    fraction aligned to a single sample: best cosine ≥ :data:`ALIGN_COS` while the second-best
    distinct sample stays below it (a column on a dense cluster's mean is near many samples).
    """
    W = model.W1.detach()                                                 # (d, p)
    live = W.norm(dim=0) >= min_norm
    if not bool(live.any()):
        return {"live_units": 0, "mean_best_cosine": 0.0, "frac_aligned": 0.0}
    Wn = W[:, live] / W[:, live].norm(dim=0, keepdim=True)                # (d, p_live)
    Xu = torch.unique(X, dim=0)                                           # (n_distinct, d)
    Xn = Xu / Xu.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (Xn @ Wn).T                                                     # (p_live, n_distinct)
    top = cos.topk(min(2, cos.shape[1]), dim=1).values                    # (p_live, ≤2)
    second = top[:, 1] if top.shape[1] > 1 else torch.full_like(top[:, 0], -1.0)
    single = (top[:, 0] >= ALIGN_COS) & (second < ALIGN_COS)
    return {"live_units": int(live.sum()), "mean_best_cosine": float(top[:, 0].mean()),
            "frac_aligned": float(single.float().mean())}


def representation_stats(model: ReLUDAE, X: torch.Tensor) -> dict[str, float]:
    """Mean over samples X (n, d) of every spikiness statistic of h(x) = relu(W1ᵀx)."""
    with torch.no_grad():
        h = model.hidden(X.float())                                       # (n, p)
    return {k: float(v.mean()) for k, v in all_stats(h).items()}


def denoising_error(model: ReLUDAE, X: torch.Tensor, sigma: float, draws: int = 8,
                    generator: torch.Generator | None = None) -> float:
    """E‖f(x + σε) − x‖² averaged over X (n, d) and ``draws`` noise draws."""
    with torch.no_grad():
        eps = torch.randn(draws, *X.shape, generator=generator)          # (K, n, d)
        return float((model(X + sigma * eps) - X).pow(2).sum(-1).mean())
