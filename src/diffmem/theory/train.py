"""Training ReLU-DAEs: one model, or a whole grid of models in one vectorized run.

A grid may mix sample counts n, widths p, noise levels σ, weight decays λ and seeds (the input
dimension d is shared). Models are padded to the largest n and p and trained with batched matrix
products; padded units are masked to zero and padded samples carry zero weight, so each model
follows exactly the trajectory it would follow alone (up to float rounding): its initial weights,
noise and minibatches come from its own ``torch.Generator(seed)``, and Adam is elementwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffmem.errors import DiffmemError, check
from diffmem.outputs import progress
from diffmem.theory.model import ReLUDAE, check_hyper


NOISE_BUFFER = 1 << 19  # floats of noise pre-drawn per model (a function of that model alone)


@dataclass
class DAESpec:
    """One model to train: data X (n, d), width p, noise σ, weight decay λ, seed, tied weights."""

    X: torch.Tensor
    p: int
    sigma: float
    lam: float
    seed: int = 0
    tied: bool = True
    tag: dict = field(default_factory=dict)

    def __post_init__(self):
        check_hyper(self.sigma, self.lam, self.p)
        check(self.X.ndim == 2 and self.X.shape[0] >= 1, f"data: expected (n, d) samples, got shape "
                                                         f"{tuple(self.X.shape)}")
        check(bool(torch.isfinite(self.X).all()), "data: contains NaN or infinite values")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model of a grid (Adam, cosine decay to 0)."""

    steps: int = 2000
    lr: float = 1e-2
    noise_draws: int = 8            # noise draws per sample and step, in antithetic pairs (ε, −ε)
    batch_size: int | None = None   # None: full batch; else samples drawn with replacement
    init_scale: float = 0.01
    log_every: int = 50


def train(spec: DAESpec, config: TrainConfig = TrainConfig(), quiet: bool = False) -> ReLUDAE:
    """Train one ReLU-DAE (a grid of one)."""
    return train_grid([spec], config, quiet=quiet)[0][0]


def train_grid(specs: list[DAESpec], config: TrainConfig = TrainConfig(), quiet: bool = False,
               desc: str = "train grid") -> tuple[list[ReLUDAE], torch.Tensor]:
    """Train every spec; return the models (in order) and the loss history (M, steps // log_every).

    Full-batch models are grouped by sample count n so that no group pays for padded samples;
    each group is one batched run (minibatch runs are a single group: every model draws B rows).
    """
    if not specs:
        raise DiffmemError("train_grid: no models to train")
    d = specs[0].X.shape[1]
    for s in specs:
        check(s.X.shape[1] == d, f"train_grid: every model needs the same input dimension ({d}), "
                                 f"got {s.X.shape[1]}")
    check(config.steps >= 1, f"steps={config.steps}: must be >= 1")
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(0 if config.batch_size else s.X.shape[0], []).append(i)
    models: list[ReLUDAE | None] = [None] * len(specs)
    history = torch.zeros(0)
    bar = progress(total=config.steps * len(groups), desc=desc, disable=quiet)
    for idx in groups.values():
        trained, hist = _train_batched([specs[i] for i in idx], config, bar)
        if history.numel() == 0:
            history = torch.zeros(len(specs), hist.shape[1])
        for j, i in enumerate(idx):
            models[i] = trained[j]
            history[i] = hist[j]
    bar.close()
    return models, history


def _train_batched(specs: list[DAESpec], config: TrainConfig, bar) -> tuple[list[ReLUDAE], torch.Tensor]:
    """One batched run over specs of equal row count, padded to the largest p.

    Noise (and minibatch indices) are drawn ahead for a chunk of steps whose length depends on
    K, rows and d only, so a model draws the same numbers whether trained alone or in a group.
    """
    d = specs[0].X.shape[1]
    M = len(specs)
    ns = [s.X.shape[0] for s in specs]
    P, N = max(s.p for s in specs), max(ns)
    tied = [s.tied for s in specs]
    gens = [torch.Generator().manual_seed(int(s.seed)) for s in specs]

    W1 = torch.zeros(M, d, P)                                             # (M, d, P)
    W2 = torch.zeros(M, d, P)                                             # (M, d, P)
    mask = torch.zeros(M, 1, P)                                           # (M, 1, P)
    X = torch.zeros(M, N, d)                                              # (M, N, d)
    w = torch.zeros(M, N)                                                 # (M, N) sample weights
    for m, s in enumerate(specs):
        W1[m, :, :s.p] = torch.randn(d, s.p, generator=gens[m]) * config.init_scale
        if not s.tied:
            W2[m, :, :s.p] = torch.randn(d, s.p, generator=gens[m]) * config.init_scale
        mask[m, :, :s.p] = 1.0
        X[m, :ns[m]] = s.X.float()
        w[m, :ns[m]] = 1.0 / ns[m]
    any_untied = not all(tied)
    tied_mask = torch.tensor(tied).view(M, 1, 1)
    sigma = torch.tensor([s.sigma for s in specs]).view(M, 1, 1, 1)
    lam = torch.tensor([s.lam for s in specs])
    W1.requires_grad_(True)
    params = [W1]
    if any_untied:
        W2.requires_grad_(True)
        params.append(W2)
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / config.steps)))
    K, B = config.noise_draws, config.batch_size
    rows = N if B is None else B                                          # same for every model here
    K_fresh = (K + 1) // 2                                                # antithetic: ε and −ε
    chunk = max(1, min(64, NOISE_BUFFER // (K_fresh * rows * d)))         # steps of noise per draw
    history = []
    for step in range(config.steps):
        bar.update()
        t = step % chunk
        if t == 0:  # each model draws its next `chunk` steps from its own generator
            n_draw = min(chunk, config.steps - step)
            if B is not None:
                idx_buf = torch.stack([torch.randint(ns[m], (n_draw, B), generator=gens[m])
                                       for m in range(M)])                # (M, chunk, B)
            eps_buf = torch.stack([torch.randn(n_draw, K_fresh, rows, d, generator=gens[m])
                                   for m in range(M)])                    # (M, chunk, K', rows, d)
            eps_buf = torch.cat([eps_buf, -eps_buf], 2)[:, :, :K]         # (M, chunk, K, rows, d)
        if B is None:
            xb, wb, nb = X, w, N
        else:
            xb = torch.gather(X, 1, idx_buf[:, t, :, None].expand(M, B, d))  # (M, B, d)
            wb, nb = torch.full((M, B), 1.0 / B), B
        eps = eps_buf[:, t]                                               # (M, K, nb, d)
        xn = (xb[:, None] + sigma * eps).reshape(M, K * nb, d)            # (M, K·nb, d)
        enc = W1 * mask                                                   # (M, d, P)
        dec = torch.where(tied_mask, W1, W2) * mask if any_untied else enc  # (M, d, P)
        h = torch.relu(torch.bmm(xn, enc))                                # (M, K·nb, P)
        out = torch.bmm(h, dec.transpose(1, 2)).view(M, K, nb, d)         # (M, K, nb, d)
        err = (out - xb[:, None]).pow(2).sum(-1).mean(1)                  # (M, nb)
        penalty = enc.pow(2).sum((1, 2)) + dec.pow(2).sum((1, 2))         # (M,)
        losses = (err * wb).sum(1) + lam * penalty                        # (M,)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        sched.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            history.append(losses.detach().clone())
    models = []
    for m, s in enumerate(specs):
        enc = W1[m, :, :s.p].detach()
        models.append(ReLUDAE(enc, None if s.tied else W2[m, :, :s.p].detach()))
    return models, torch.stack(history, 1)
