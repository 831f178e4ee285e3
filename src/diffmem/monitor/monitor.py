"""``MemorizationMonitor``: cheap memorization signals at training checkpoints, and an alarm.

Every ``every`` steps, with no sampling, on a fixed probe set of training images and held-out
reference images (one batch of forwards per noise level, no gradients):

* **spikiness** (ours) — per image, the std of each candidate layer's pooled representation at
  the adapter's probe timestep; probes are compared with references by :func:`~.rules.tail_test`
  (Bonferroni over layers). Memorized training images are spiky, so probes crowd the
  reference's top 1 %.
* **loss gap** — per image, the denoising loss averaged over ``loss_ts``; held-out minus training
  (Favero et al.), with :func:`~.rules.welch_gap` and, per image, :func:`~.rules.tail_test`.
* **stable rank** — ‖W‖_F² / ‖W‖₂² of the bottleneck's weights (the Spectral Signatures anchor);
  it has no reference, so its rule is a :func:`~.rules.control_chart`.

The model's train/eval modes and the global RNG states are restored after every measurement, so a
training run is bit-identical with the monitor on or off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffmem.data.images import image_key
from diffmem.errors import check
from diffmem.estimator import Params
from diffmem.models.load import wrap_model
from diffmem.monitor import rules
from diffmem.probe.adapters import Adapter, gaussian_like
from diffmem.probe.represent import forward, generators
from diffmem.schemas import MonitorFile, write_result
from diffmem.stats import std as std_stat

OURS = "spikiness.tail"
BASELINES = ("loss.tail", "loss_gap.welch", "loss_gap.chart", "stable_rank.chart", "spikiness.chart")


def stable_rank(w: torch.Tensor) -> float:
    """‖W‖_F² / ‖W‖₂² of a weight (out, …) flattened to (out, in·k·k)."""
    m = w.detach().float().reshape(w.shape[0], -1)
    return float(m.pow(2).sum() / torch.linalg.matrix_norm(m, ord=2).pow(2))


def _unique(images: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The distinct images (first occurrence of each key) and their keys."""
    keys = [image_key(im) for im in images]
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    return images[first], [keys[i] for i in first]


class _Restored:
    """Context: eval mode inside; train/eval flags and the CPU/CUDA RNG states restored on exit."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        self.flags = [(m, m.training) for root in modules for m in root.modules()]
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.rng = torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else [])

    def __enter__(self):
        self.rng.__enter__()
        for m, _ in self.flags:
            m.training = False
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return self.rng.__exit__(*exc)


class MemorizationMonitor(Params):
    """``MemorizationMonitor(every=500, …).fit(probe_images, reference_images)``, then call
    ``monitor.step(model, global_step)`` in a training loop; read ``history_``/``alarm_step_``.

    ``probe_images`` (P, C, H, W) and ``reference_images`` (R, C, H, W) in [-1, 1]: training images
    (a draw of what the loader serves, duplicates dropped by ``fit``) and never-trained images. ``model``
    is an :class:`Adapter` or a diffusers model (see :func:`~diffmem.models.load.wrap_model`). ``layers``,
    ``t`` and ``loss_ts`` default to the model's family (its candidate layers, ``default_t``, ``t_grid``).
    """

    def __init__(self, every: int = 500, layers: Sequence[str] | None = None, t: float | None = None,
                 loss_ts: Sequence[float] | None = None, alpha: float = rules.ALPHA, tail: float = rules.TAIL,
                 seed: int = 0, batch_size: int = 256, scheduler=None):
        self.every, self.layers, self.t, self.loss_ts = every, layers, t, loss_ts
        self.alpha, self.tail, self.seed, self.batch_size, self.scheduler = alpha, tail, seed, batch_size, scheduler

    def fit(self, probe_images: torch.Tensor, reference_images: torch.Tensor) -> "MemorizationMonitor":
        """Keep the distinct probe (``probe_``) and reference (``reference_``) images and their noise keys."""
        check(self.every >= 1, f"every={self.every}: must be >= 1")
        check(len(probe_images) >= 8 and len(reference_images) >= 8, "monitor: need >= 8 probe and reference images")
        check(probe_images.shape[1:] == reference_images.shape[1:],
              f"monitor: probe images {tuple(probe_images.shape[1:])} and references "
              f"{tuple(reference_images.shape[1:])} differ in shape")
        self.probe_, probe_keys = _unique(probe_images.float())             # (P', C, H, W)
        self.reference_, ref_keys = _unique(reference_images.float())       # (R', C, H, W)
        self.keys_ = probe_keys + ref_keys
        check(len(self.probe_) >= 8 and len(self.reference_) >= 8,
              f"monitor: {len(self.probe_)} distinct probe and {len(self.reference_)} distinct reference images; "
              f"need >= 8 of each")
        self.history_: list[dict] = []
        self._wrapped: tuple | None = None      # (model, its adapter): rebuilt when another model comes
        self._z: tuple | None = None            # (VAE weakref, key, encoded batches): see _prepared
        return self

    def settings(self) -> dict:
        """What ``monitor.json`` records as ``params``: the parameters and the probe and reference counts."""
        return {"every": self.every, "layers": list(self.layers or []), "t": self.t,
                "loss_ts": None if self.loss_ts is None else list(self.loss_ts), "alpha": self.alpha,
                "tail": self.tail, "seed": self.seed, "batch_size": self.batch_size,
                "n_probe": len(self.probe_), "n_reference": len(self.reference_)}

    # -- measurement ----------------------------------------------------------------------
    def step(self, model, global_step: int, force: bool = False) -> dict | None:
        """Measure at ``global_step`` when it is a multiple of ``every`` (or ``force``); returns the
        checkpoint's record (also appended to ``history_``) or None."""
        if global_step % self.every and not force:
            return None
        roots = model.modules() if isinstance(model, Adapter) else [model]
        with _Restored(roots):
            if isinstance(model, Adapter):
                adapter = model
            else:
                if self._wrapped is None or self._wrapped[0] is not model:
                    self._wrapped = (model, wrap_model(model, self.scheduler))
                adapter = self._wrapped[1]
            row = {"step": int(global_step), **self.measure(adapter)}
        self.history_.append(row)
        return row

    @torch.no_grad()
    def measure(self, adapter: Adapter) -> dict:
        """Every signal of one model state (see the module docstring)."""
        layers = self.layers or adapter.candidate_layers()
        t_spike = adapter.default_t if self.t is None else self.t
        loss_ts = self.loss_ts if self.loss_ts is not None else adapter.t_grid[::2]   # 10, 50, 200 for diffusers
        ts = sorted(set(loss_ts) | {t_spike})
        loss = {t: [] for t in loss_ts}
        spikes = {name: [] for name in layers}
        for i, z in zip(range(0, len(self.keys_), self.batch_size), self._prepared(adapter)):   # z: (B, C', H', W')
            eps = gaussian_like(z, generators(self.seed, self.keys_[i:i + self.batch_size]))
            for t in ts:
                f = forward(adapter, None, t, eps, layers if t == t_spike else [], z=z)
                if t in loss:
                    loss[t].append((f.eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1).cpu())
                for name, v in f.pooled(adapter.default_pool).items():                # (B, C'')
                    spikes[name].append(std_stat(v.double()))
        p = len(self.probe_)
        per_loss = torch.stack([torch.cat(v) for v in loss.values()]).mean(0).double().numpy()   # (N,)
        tails = {name: rules.tail_test(s[:p], s[p:], self.tail)
                 for name, s in ((n, torch.cat(v).double().numpy()) for n, v in spikes.items())}
        best = min(tails, key=lambda n: tails[n]["p"])
        weights = {n: stable_rank(w) for n, w in adapter.bottleneck_weights().items()}
        loss_tail = rules.tail_test(-per_loss[:p], -per_loss[p:], self.tail)
        welch = rules.welch_gap(per_loss[:p], per_loss[p:])
        return {
            "spikiness": {"excess": tails[best]["excess"], "p": min(1.0, tails[best]["p"] * len(tails)),
                          "layer": best, "expected": tails[best]["expected"],
                          "per_layer": {n: {"excess": v["excess"], "p": v["p"]} for n, v in tails.items()}},
            "loss": {"train": float(per_loss[:p].mean()), "heldout": float(per_loss[p:].mean()),
                     "gap": welch["gap"], "welch_p": welch["p"], "excess": loss_tail["excess"], "tail_p": loss_tail["p"]},
            "stable_rank": {"mean": float(np.mean(list(weights.values()))), "per_weight": weights},
        }

    def _prepared(self, adapter: Adapter) -> list[torch.Tensor]:
        """The probes' and references' model inputs in batches (``adapter.prepare``). A VAE encode is
        done once and kept while the VAE is the same module (held by weak reference) with unchanged
        weights, device, dtype and batch size: every fine-tuning recipe freezes the VAE, and an
        optimizer's in-place update bumps a parameter's version, which re-encodes (a write through
        ``param.data`` does not, and would not be seen)."""
        import weakref
        x = torch.cat([self.probe_, self.reference_])                                    # (N, C, H, W)
        encode = lambda: [adapter.prepare(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]  # noqa: E731
        vae = getattr(adapter, "vae", None)
        if vae is None:
            return encode()
        key = (sum(p._version for p in vae.parameters()), adapter.device, adapter.dtype, self.batch_size)
        if self._z is None or self._z[0]() is not vae or self._z[1] != key:
            self._z = (weakref.ref(vae), key, encode())
        return self._z[2]

    # -- alarms ---------------------------------------------------------------------------
    def alarms(self) -> dict[str, int | None]:
        """Global step at which each rule first fires (None = never): ``spikiness.tail`` (ours) and
        the baselines (:data:`BASELINES`)."""
        h, steps = self.history_, [r["step"] for r in self.history_]
        at = lambda i: None if i is None else steps[i]  # noqa: E731
        return {
            OURS: at(rules.first_true([r["spikiness"]["p"] < self.alpha for r in h])),
            "loss.tail": at(rules.first_true([r["loss"]["tail_p"] < self.alpha for r in h])),
            "loss_gap.welch": at(rules.first_true([r["loss"]["welch_p"] < self.alpha for r in h])),
            "loss_gap.chart": at(rules.control_chart([r["loss"]["gap"] for r in h], direction="up")),
            "stable_rank.chart": at(rules.control_chart([r["stable_rank"]["mean"] for r in h])),
            "spikiness.chart": at(rules.control_chart([r["spikiness"]["excess"] for r in h], direction="up")),
        }

    @property
    def alarm_step_(self) -> int | None:
        return self.alarms()[OURS]

    def summary(self) -> dict:
        """``{"params", "alarm_step", "baselines": {rule: step}, "checkpoints": [...]}`` (monitor.json)."""
        alarms = self.alarms()
        fired = {r["step"] for r in self.history_ if r["spikiness"]["p"] < self.alpha}
        return {"params": self.settings(), "alarm_step": alarms[OURS],
                "baselines": {k: v for k, v in alarms.items() if k != OURS},
                "checkpoints": [{**r, "alarm": r["step"] in fired} for r in self.history_]}

    def save(self, path: str | Path) -> Path:
        """``monitor.json`` with this monitor as its one run (``runs.run``, :class:`~diffmem.schemas.MonitorFile`)."""
        return write_result(path, {"runs": {"run": self.summary()}}, MonitorFile)
