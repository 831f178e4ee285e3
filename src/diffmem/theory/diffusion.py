"""Time-conditioned ReLU diffusion: the ReLU-DAE turned into a variance-exploding diffusion model.

    D(x_t, σ) = W h + s · x_t,   h = relu(Wᵀ x_t) ⊙ exp(g(log σ))

with W (d, p) shared by encoder and decoder, g a small MLP R → R^p, and a learned scalar s.
Training: σ log-uniform in [σ_min, σ_max] = [0.02, 2], loss E ω(σ) ‖D(x + σε, σ) − x‖² with the
EDM weight ω(σ) = (σ² + σ_d²)/(σ σ_d)². Sampling: probability-flow ODE dx/dσ = (x − D(x, σ))/σ,
Euler steps on a geometric σ grid from σ_max to σ_min, then one last denoising step.
Data are centred by the training mean (added back on output), so x_T = σ_max ε starts the sampler.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffmem.errors import check
from diffmem.neighbours import COPY_RATIO, nearest_two
from diffmem.outputs import progress

SIGMA_MIN, SIGMA_MAX = 0.02, 2.0


class ReLUDiffusion(nn.Module):
    """D(x_t, σ): (B, d), (B,) → (B, d)."""

    def __init__(self, d: int, p: int, hidden: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, p, generator=generator) / math.sqrt(d))   # (d, p)
        self.g = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, p))
        self.s = nn.Parameter(torch.zeros(()))
        self.act = nn.ReLU()                                              # hookable as "act"
        self.register_buffer("mean", torch.zeros(d))
        with torch.no_grad():
            for layer in self.g:
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.1)
                    layer.bias.zero_()

    def hidden(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """h (B, p) for centred inputs x_t (B, d) at noise levels σ (B,)."""
        gate = torch.exp(self.g(sigma.log()[:, None]))                  # (B, p)
        return self.act(x_t @ self.W) * gate                            # (B, p)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised estimate (B, d) of centred x_t (B, d) at σ (B,)."""
        return self.hidden(x_t, sigma) @ self.W.T + self.s * x_t         # (B, d)


def train_diffusion(X: torch.Tensor, p: int = 64, steps: int = 3000, batch_size: int = 128,
                    lr: float = 3e-3, seed: int = 0, quiet: bool = False) -> ReLUDiffusion:
    """Fit a :class:`ReLUDiffusion` to flattened training data X (n, d)."""
    check(X.ndim == 2 and len(X) >= 1, f"data: expected (n, d) samples, got shape {tuple(X.shape)}")
    check(bool(torch.isfinite(X).all()), "data: contains NaN or infinite values")
    check(p >= 1, f"p={p}: the number of hidden units must be >= 1")
    g = torch.Generator().manual_seed(seed)
    model = ReLUDiffusion(X.shape[1], p, generator=g)
    model.mean.copy_(X.mean(0))
    Xc = X - model.mean                                                   # (n, d)
    sd = float(Xc.std()) or 1.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    for _ in progress(range(steps), desc="ReLU diffusion", disable=quiet):
        x0 = Xc[torch.randint(len(Xc), (batch_size,), generator=g)]       # (B, d)
        sigma = torch.exp(lo + (hi - lo) * torch.rand(batch_size, generator=g))  # (B,)
        x_t = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)    # (B, d)
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2               # (B,)
        loss = (weight * (model(x_t, sigma) - x0).pow(2).sum(1)).mean() / X.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def sample(model: ReLUDiffusion, n: int, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """n samples (n, d) by Euler steps of the probability-flow ODE on a geometric σ grid."""
    check(n >= 1 and steps >= 1, "sample: n and steps must be >= 1")
    g = torch.Generator().manual_seed(seed)
    sigmas = torch.exp(torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), steps + 1))
    x = SIGMA_MAX * torch.randn(n, model.W.shape[0], generator=g)         # (n, d)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - model(x, s.expand(n))) / s                               # (n, d) dx/dσ
        x = x + (s_next - s) * d
    return model(x, sigmas[-1].expand(n)) + model.mean                    # (n, d)


def nearest_neighbours(samples: torch.Tensor, train: torch.Tensor) -> dict[str, torch.Tensor]:
    """Nearest training rows for each sample (n, d) against train (N, d).

    Returns ``index`` (n,) of the nearest by cosine, its ``cosine`` (n,), and the L2 distances
    ``d1``, ``d2`` (n,) to the nearest and second-nearest distinct training rows and their ratio.
    """
    tn = train / train.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sn = samples / samples.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (sn @ tn.T).max(dim=1)                                         # cosine to every row
    _, d1, d2 = (torch.from_numpy(a) for a in nearest_two(samples, torch.unique(train, dim=0)))
    return {"index": best.indices, "cosine": best.values, "d1": d1, "d2": d2, "ratio": d1 / d2}


def copy_fraction(nn: dict[str, torch.Tensor]) -> float:
    """Fraction of samples whose nearest/second-nearest distance ratio is below 1/3."""
    return float((nn["ratio"] < COPY_RATIO).double().mean())
