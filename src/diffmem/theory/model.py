"""The two-layer ReLU denoising autoencoder f(x) = W2 · relu(W1ᵀ x), without biases.

Loss (one convention everywhere in diffmem):

    L(W1, W2) = (1/n) Σ_i E_ε ‖f(x_i + σ ε) − x_i‖² + λ (‖W1‖²_F + ‖W2‖²_F),   ε ~ N(0, I_d)

The data term is a *sum* over the d coordinates, averaged over samples. PyTorch's
``mse_loss(reduction="mean")`` averages over n·d numbers, i.e. equals the data term / d; the same
minimizer is reached with it when λ is divided by d. With plain SGD the regularizer corresponds to
``weight_decay = 2λ`` (2λ/d next to mean-reduced MSE). Decoupled decay (AdamW) is *not* this loss.
Tied weights mean W1 = W2 = W, so the penalty is 2λ‖W‖²_F.
"""

from __future__ import annotations

import torch
from torch import nn

from diffmem.errors import check


def check_hyper(sigma: float, lam: float, p: int) -> None:
    """Validate a noise level, weight decay and width, raising one clear error each."""
    check(sigma == sigma and sigma > 0, f"sigma={sigma}: the noise level must be > 0")
    check(lam == lam and lam >= 0, f"lambda={lam}: weight decay must be >= 0")
    check(int(p) == p and p >= 1, f"p={p}: the number of hidden units must be an integer >= 1")


class ReLUDAE(nn.Module):
    """f(x) = W2 relu(W1ᵀ x) with W1, W2 of shape (d, p); ``tied`` makes W2 the same tensor as W1."""

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor | None = None):
        super().__init__()
        self.W1 = nn.Parameter(W1.detach().clone())                       # (d, p)
        self.W2 = None if W2 is None else nn.Parameter(W2.detach().clone())  # (d, p) or tied
        self.act = nn.ReLU()                                              # hookable as "act"

    @classmethod
    def init(cls, d: int, p: int, tied: bool = True, scale: float = 0.01,
             generator: torch.Generator | None = None) -> "ReLUDAE":
        """Random N(0, scale²) weights."""
        W1 = torch.randn(d, p, generator=generator) * scale
        W2 = None if tied else torch.randn(d, p, generator=generator) * scale
        return cls(W1, W2)

    @property
    def tied(self) -> bool:
        return self.W2 is None

    @property
    def decoder(self) -> torch.Tensor:
        return self.W1 if self.W2 is None else self.W2

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """h(x) = relu(W1ᵀ x): (B, d) → (B, p)."""
        return self.act(x @ self.W1)                                      # (B, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) → (B, d)."""
        return self.hidden(x) @ self.decoder.T                            # (B, d)

    def product(self) -> torch.Tensor:
        """W2 W1ᵀ (d, d): the linear map on inputs that activate every unit; W Wᵀ when tied."""
        return (self.decoder @ self.W1.T).detach()

    def loss(self, x: torch.Tensor, sigma: float, lam: float, noise_draws: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo estimate of L (see the module docstring) on samples x (n, d)."""
        eps = torch.randn(noise_draws, *x.shape, generator=generator, dtype=x.dtype)  # (K, n, d)
        err = self(x + sigma * eps) - x                                   # (K, n, d)
        penalty = 2 * self.W1.pow(2).sum() if self.tied else self.W1.pow(2).sum() + self.W2.pow(2).sum()
        return err.pow(2).sum(-1).mean() + lam * penalty
