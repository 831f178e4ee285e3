"""Memorization scores compared in one harness: the paper's spikiness and its peers.

Every method maps a batch of images to one score per image for each of its candidate *settings*
(timestep, layer, …); the harness (:mod:`diffmem.bench.protocol`) tunes the setting and the sign of
every method on a calibration split, over the same timesteps. Natural orientation: higher =
memorized (the harness may flip it, and says so).

* ``spikiness`` — std of the pooled layer (the paper; early exit; no condition, no training data);
* ``wen`` — ‖ε(x_t, c) − ε(x_t, ∅)‖ (Wen et al., ICLR'24; needs the class/prompt);
* ``denoising_loss`` — −‖ε(x_t, ∅) − ε‖² (membership-inference style: low loss = memorized);
* ``nemo`` — max over units of the z-score of the pooled layer against held-out real images (NeMo-style);
* ``sharpness`` — ‖(H_c − H_∅)·Δs‖ with Δs = s(x_t, c) − s(x_t, ∅), s = −ε/σ_t (Jeon et al., ICML'25),
  the Hessian-vector product by a central finite difference along Δs (4 extra forwards);
* ``anisotropy`` — ‖ε_c − ε_∅‖ at t₁ + γ·cos(ε_∅, ε_c − ε_∅) at t₂ (Asthana & Belagiannis, ICLR'26;
  one cosine over the flattened prediction: the official per-pixel channel cosine is a bare sign
  for one-channel images);
* ``output_norm`` — −Σ ε(x₀, t, ∅)⁴ of the *clean* image, prompt-free (SimA, Rao et al. 2025:
  members have small predicted noise);
* ``nn_oracle`` — −(distance to the nearest training image) (needs the training set: an upper bound);
* ``random`` — a hash of the image key (the floor).

Peer definitions apply to a *given* image noised to t (the originals score generation
trajectories); each is documented where it departs from its official code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from diffmem.errors import DiffmemError
from diffmem.neighbours import nearest_two
from diffmem.probe.adapters import Adapter, gaussian_like
from diffmem.probe.represent import generators, noise_seed, represent
from diffmem.stats import std as std_stat

ANISOTROPY_GAMMAS = (0.1, 0.3, 1.0, 3.0, 10.0)
WEN_STEPS = (1, 3, 10)    # first generation steps averaged by the native Wen score
SHARPNESS_STEP = 0.05     # central-difference step along the unit Δs direction, model-space units


@dataclass
class Batch:
    """Images x (B, C, H, W) in [-1, 1], their keys (noise seeds) and conditions (B,) — class labels
    or prompts — or None. ``origins`` (B,): for generated images, the sample names whose initial noise
    made them (:func:`diffmem.probe.sampling.sample`), which the native prompt-based peers start from."""

    x: torch.Tensor
    keys: list[str]
    conditions: Sequence | None = None
    origins: list[str] | None = None


@dataclass(frozen=True)
class Native:
    """How the generations were sampled, so native peers can restart them: the sampling ``seed``,
    DDIM ``steps`` and the ``guidance`` scale."""

    seed: int
    steps: int
    guidance: float


@dataclass
class Method:
    """A named score with candidate settings; ``score(batch, settings)`` returns one (B,) array per setting."""

    name: str
    needs_condition: bool
    needs_training_data: bool
    needs_gradients: bool
    settings: list[dict]
    score: Callable[[Batch, Sequence[dict]], list[np.ndarray]]
    description: str = ""
    extra: dict = field(default_factory=dict)


def setting_key(setting: dict) -> str:
    """A stable text key of a setting, e.g. ``layer=mid_block,t=10``."""
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items()))


class _Forwards:
    """One image batch's denoiser calls at one t, each run at most once: ε_∅, ε_c, ε of the clean image.

    ``start`` (B, C', H', W'): a given z_t (e.g. a generation's initial noise) instead of the noised image."""

    def __init__(self, adapter: Adapter, b: Batch, t: int, seed: int, start: torch.Tensor | None = None):
        self.adapter, self.b, self.t, self.seed = adapter, b, t, seed
        self._cache: dict[str, torch.Tensor] = {}
        if start is not None:
            self.z = self.eps = None
            self.z_t = start
            return
        with torch.no_grad():
            self.z = adapter.prepare(b.x)                                         # (B, C', H', W')
        self.eps = gaussian_like(self.z, generators(seed, b.keys))               # (B, C', H', W')
        self.z_t = adapter.add_noise(self.z, t, self.eps)                        # (B, C', H', W')

    @torch.no_grad()
    def eps_null(self) -> torch.Tensor:
        if "null" not in self._cache:
            self._cache["null"] = self.adapter.predict_eps(self.z_t, self.t, None).float()
        return self._cache["null"]

    @torch.no_grad()
    def eps_cond(self) -> torch.Tensor:
        if "cond" not in self._cache:
            cond = self.adapter.condition(list(self.b.conditions))
            self._cache["cond"] = self.adapter.predict_eps(self.z_t, self.t, cond).float()
        return self._cache["cond"]

    @torch.no_grad()
    def eps_clean(self) -> torch.Tensor:
        if "clean" not in self._cache:
            self._cache["clean"] = self.adapter.predict_eps(self.z, self.t, None).float()
        return self._cache["clean"]


def _by_t(settings: Sequence[dict]) -> dict[float, list[int]]:
    out: dict[int, list[int]] = {}
    for i, s in enumerate(settings):
        out.setdefault(s["t"], []).append(i)
    return out


def _np(v: torch.Tensor) -> np.ndarray:
    return v.detach().cpu().double().numpy()


def _pooled_layers(adapter: Adapter, b: Batch, layers: Sequence[str], t: int, pool: str, seed: int,
                   early_exit: bool) -> dict[str, torch.Tensor]:
    """{layer: (B, C)} pooled activations of the batch (:func:`~diffmem.probe.represent.represent`)."""
    return represent(adapter, b.x, list(layers), t, pool, generators(seed, b.keys), early_exit=early_exit)


def spikiness_method(adapter: Adapter, layers: Sequence[str], ts: Sequence[int], seed: int) -> Method:
    """std of the pooled layer; one early-exit forward per timestep for all requested layers."""
    pool = adapter.default_pool

    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        out: list = [None] * len(settings)
        for t, idx in _by_t(settings).items():
            want = [settings[i]["layer"] for i in idx]
            vecs = _pooled_layers(adapter, b, sorted(set(want)), t, pool, seed, early_exit=True)
            for i in idx:
                out[i] = _np(std_stat(vecs[settings[i]["layer"]].double()))
        return out
    return Method("spikiness", False, False, False, [{"layer": L, "t": t} for t in ts for L in layers], score,
                  "std of the spatially pooled layer (the paper)")


def nemo_method(adapter: Adapter, layers: Sequence[str], ts: Sequence[int], reference: torch.Tensor,
                seed: int, batch_size: int = 256) -> Method:
    """Max unit z-score against reference activations of held-out real images, fitted once per t."""
    pool = adapter.default_pool
    stats: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    ref_keys = [f"reference{i}" for i in range(len(reference))]

    def fit(t: int) -> dict:
        if t not in stats:
            parts: dict[str, list] = {}
            for i in range(0, len(reference), batch_size):
                rb = Batch(reference[i:i + batch_size], ref_keys[i:i + batch_size])
                for k, v in _pooled_layers(adapter, rb, layers, t, pool, seed, early_exit=False).items():
                    parts.setdefault(k, []).append(v.double())
            stats[t] = {k: (torch.cat(v).mean(0), torch.cat(v).std(0).clamp_min(1e-6)) for k, v in parts.items()}
        return stats[t]

    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        out: list = [None] * len(settings)
        for t, idx in _by_t(settings).items():
            ref = fit(t)
            vecs = _pooled_layers(adapter, b, sorted({settings[i]["layer"] for i in idx}), t, pool, seed,
                                  early_exit=True)
            for i in idx:
                layer = settings[i]["layer"]
                mu, sd = ref[layer]
                out[i] = _np(((vecs[layer].double() - mu) / sd).amax(dim=1))
        return out
    return Method("nemo", False, False, False, [{"layer": L, "t": t} for t in ts for L in layers], score,
                  "max unit z-score of the pooled layer against held-out real images (NeMo-style)")


def _per_t(adapter: Adapter, ts: Sequence[int], seed: int, fn: Callable[[_Forwards], torch.Tensor]):
    """A score computed from one :class:`_Forwards` per timestep of the requested settings."""
    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        out: list = [None] * len(settings)
        for t, idx in _by_t(settings).items():
            v = _np(fn(_Forwards(adapter, b, t, seed)))
            for i in idx:
                out[i] = v
        return out
    return score


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)                                              # (B,)


def wen_method(adapter: Adapter, ts: Sequence[int], seed: int) -> Method:
    return Method("wen", True, False, False, [{"t": t} for t in ts],
                  _per_t(adapter, ts, seed, lambda f: _flat_norm(f.eps_cond() - f.eps_null())),
                  "‖ε(x_t, c) − ε(x_t, ∅)‖ (Wen et al., ICLR'24)")


def denoising_loss_method(adapter: Adapter, ts: Sequence[int], seed: int) -> Method:
    return Method("denoising_loss", False, False, False, [{"t": t} for t in ts],
                  _per_t(adapter, ts, seed, lambda f: -(f.eps_null() - f.eps).flatten(1).pow(2).sum(1)),
                  "−‖ε(x_t, ∅) − ε‖² (low denoising loss = memorized)")


def output_norm_method(adapter: Adapter, ts: Sequence[int], seed: int) -> Method:
    return Method("output_norm", False, False, False, [{"t": t} for t in ts],
                  _per_t(adapter, ts, seed, lambda f: -f.eps_clean().flatten(1).pow(4).sum(1)),
                  "−Σ ε(x₀, t, ∅)⁴ of the clean image (SimA, prompt-free)")


def _sharpness(step: float) -> Callable[[_Forwards], torch.Tensor]:
    """‖(H_c − H_∅)Δs‖ = ‖Δs‖·‖J_Δs(v)‖ with v = Δs/‖Δs‖ and J_Δs(v) ≈ [Δs(x + hv) − Δs(x − hv)] / 2h."""
    def sharp(f: _Forwards) -> torch.Tensor:
        a = f.adapter
        sigma = a.noise_std(f.t)
        ds = -(f.eps_cond() - f.eps_null()) / sigma                              # (B, C', H', W')
        n = _flat_norm(ds).clamp_min(1e-12)                                      # (B,)
        v = ds / n.view(-1, *[1] * (ds.ndim - 1))                                 # unit direction
        cond = a.condition(list(f.b.conditions))
        null = a.null_condition(len(ds))
        with torch.no_grad():
            zz = torch.cat([f.z_t + step * v, f.z_t + step * v, f.z_t - step * v, f.z_t - step * v])
            out = a.predict_eps(zz, f.t, torch.cat([cond, null, cond, null])).float().chunk(4)
        ds_plus, ds_minus = -(out[0] - out[1]) / sigma, -(out[2] - out[3]) / sigma
        hv = (ds_plus - ds_minus) / (2 * step)                                   # (B, C', H', W')
        return n * _flat_norm(hv)
    return sharp


def sharpness_method(adapter: Adapter, ts: Sequence[int], seed: int, step: float = SHARPNESS_STEP) -> Method:
    return Method("sharpness", True, False, True, [{"t": t} for t in ts], _per_t(adapter, ts, seed, _sharpness(step)),
                  "‖(H_c − H_∅)Δs‖ (Jeon et al., ICML'25; Hessian-vector product by finite differences)")


def _anisotropy_terms(f: _Forwards) -> tuple[np.ndarray, np.ndarray]:
    """(‖ε_c − ε_∅‖, cos(ε_∅, ε_c − ε_∅)) per image, (B,) each."""
    d = (f.eps_cond() - f.eps_null()).flatten(1)
    u = f.eps_null().flatten(1)
    return _np(d.norm(dim=1)), _np(torch.nn.functional.cosine_similarity(u, d, dim=1))


def anisotropy_method(adapter: Adapter, ts: Sequence[int], seed: int,
                      gammas: Sequence[float] = ANISOTROPY_GAMMAS) -> Method:
    """‖ε_c − ε_∅‖ at ``t_norm`` + γ·cos(ε_∅, ε_c − ε_∅) at ``t_cos``; both terms from the same two forwards per t."""
    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        need = sorted({s["t_norm"] for s in settings} | {s["t_cos"] for s in settings})
        cache = {t: _anisotropy_terms(_Forwards(adapter, b, t, seed)) for t in need}
        return [cache[s["t_norm"]][0] + s["gamma"] * cache[s["t_cos"]][1] for s in settings]
    settings = [{"t_norm": t1, "t_cos": t2, "gamma": g} for t1 in ts for t2 in ts for g in gammas]
    return Method("anisotropy", True, False, False, settings, score,
                  "‖ε_c − ε_∅‖ + γ·cos(ε_∅, ε_c − ε_∅) (Asthana & Belagiannis, ICLR'26)")


def _start(adapter: Adapter, b: Batch, native: Native):
    """(the sampler, the generations' initial noise z_T (B, C', H', W')) of a batch of generated images."""
    from diffmem.probe.sampling import initial_noise
    if b.origins is None:
        raise DiffmemError("native prompt-based scores need each generation's origin (its sample name)")
    plan = adapter.sampler(native.steps)
    return plan, initial_noise(adapter, plan.init_scale, native.seed, b.origins)


def wen_native_method(adapter: Adapter, native: Native, step_counts: Sequence[int] = WEN_STEPS) -> Method:
    """Wen et al.'s detector as released: the mean of ‖ε(z_k, c) − ε(z_k, ∅)‖ over the first n steps of
    the guided DDIM trajectory from the generation's own initial noise, with its prompt."""
    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        plan, z = _start(adapter, b, native)
        cond, null = adapter.condition(list(b.conditions)), adapter.null_condition(len(z))
        norms = []
        with torch.no_grad():
            for k in range(max(s["steps"] for s in settings)):
                eps_u, eps_c = adapter.predict_eps(torch.cat([z, z]), plan.timesteps[k],
                                                   torch.cat([null, cond])).float().chunk(2)
                norms.append(_np(_flat_norm(eps_c - eps_u)))                     # (B,)
                z = plan.step((eps_u + native.guidance * (eps_c - eps_u)).to(z.dtype), k, z, None)
        mean = np.cumsum(norms, axis=0) / np.arange(1, len(norms) + 1)[:, None]  # (n, B)
        return [mean[s["steps"] - 1] for s in settings]
    return Method("wen", True, False, False, [{"steps": n} for n in step_counts if n <= native.steps], score,
                  "mean ‖ε(z_k, c) − ε(z_k, ∅)‖ over the first n generation steps from the generation's own "
                  "initial noise (Wen et al., ICLR'24, native)")


def _at_start(adapter: Adapter, native: Native, seed: int, fn: Callable[[_Forwards], object]):
    """fn of the forwards at the first sampling step, z_t = the generation's initial noise."""
    def forwards(b: Batch) -> object:
        plan, z = _start(adapter, b, native)
        return fn(_Forwards(adapter, b, plan.timesteps[0], seed, start=z))
    return forwards


def sharpness_native_method(adapter: Adapter, native: Native, seed: int, step: float = SHARPNESS_STEP) -> Method:
    at = _at_start(adapter, native, seed, _sharpness(step))
    return Method("sharpness", True, False, True, [{"t": "first step"}], lambda b, s: [_np(at(b))] * len(s),
                  "‖(H_c − H_∅)Δs‖ at the first generation step from the generation's initial noise "
                  "(Jeon et al., ICML'25, native; Hessian-vector product by finite differences)")


def anisotropy_native_method(adapter: Adapter, native: Native, seed: int,
                             gammas: Sequence[float] = ANISOTROPY_GAMMAS) -> Method:
    at = _at_start(adapter, native, seed, _anisotropy_terms)

    def score(b: Batch, settings: Sequence[dict]) -> list[np.ndarray]:
        norm, cos = at(b)
        return [norm + s["gamma"] * cos for s in settings]
    return Method("anisotropy", True, False, False, [{"gamma": g} for g in gammas], score,
                  "‖ε_c − ε_∅‖ + γ·cos(ε_∅, ε_c − ε_∅) at the first generation step from the generation's "
                  "initial noise (Asthana & Belagiannis, ICLR'26, native)")


def official_spikiness_method(adapter: Adapter, seed: int) -> Method:
    """The paper's released recipe, untuned: the family's default layer, t and pooling (SD: VAE-encode,
    empty prompt, t = 10, ``up_blocks.0.resnets.<last>.nonlinearity``, spatial max, std)."""
    m = spikiness_method(adapter, [adapter.default_layer], [adapter.default_t], seed)
    return Method("spikiness_official", False, False, False, m.settings, m.score,
                  "std of the default layer's spatial max at t = 10, the paper's recipe, untuned")


def nn_oracle_method(train: torch.Tensor) -> Method:
    return Method("nn_oracle", False, True, False, [{}], lambda b, s: [-nearest_two(b.x, train)[1]] * len(s),
                  "−distance to the nearest training image (needs the training set: an upper bound)")


def random_method(seed: int) -> Method:
    return Method("random", False, False, False, [{}],
                  lambda b, s: [np.array([noise_seed(seed, k, 99) / 2.0 ** 63 for k in b.keys])] * len(s),
                  "a hash of the image (the floor)")


def peer_methods(adapter: Adapter, layers: Sequence[str], reference: torch.Tensor, train: torch.Tensor | None,
                 seed: int, ts: Sequence[float] | None = None, conditional: bool = True,
                 native: Native | None = None) -> list[Method]:
    """Every method of the harness over the same timesteps ``ts`` (default: the adapter's ``t_grid``; and ``layers`` for representation
    methods). ``reference``: held-out real images for NeMo; ``train``: the training set for the
    oracle (omitted when None); ``conditional``: include methods that need the condition; ``native``:
    score generated images, the prompt-based peers in their native setting (from each generation's
    initial noise) and the paper's untuned recipe beside the tuned spikiness."""
    ts = adapter.t_grid if ts is None else ts
    ms = [spikiness_method(adapter, layers, ts, seed), denoising_loss_method(adapter, ts, seed),
          output_norm_method(adapter, ts, seed), nemo_method(adapter, layers, ts, reference, seed)]
    if native is not None:
        ms.insert(1, official_spikiness_method(adapter, seed))
    if conditional and native is not None:
        ms += [wen_native_method(adapter, native), sharpness_native_method(adapter, native, seed),
               anisotropy_native_method(adapter, native, seed)]
    elif conditional:
        ms += [wen_method(adapter, ts, seed), sharpness_method(adapter, ts, seed), anisotropy_method(adapter, ts, seed)]
    if train is not None:
        ms.append(nn_oracle_method(train))
    return ms + [random_method(seed)]
