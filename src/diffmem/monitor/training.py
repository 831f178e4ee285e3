"""The monitor around a training run: probe/reference draws from a training record, the callback
``diffmem train --monitor`` passes to the training loop, offline checkpoints, and ground truth."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffmem.data.records import record_reference_images, record_training_images
from diffmem.neighbours import label_samples
from diffmem.errors import check
from diffmem.models.record import ModelRecord
from diffmem.monitor.monitor import MemorizationMonitor
from diffmem.outputs import jsonable
from diffmem.probe.adapters import Adapter
from diffmem.probe.sampling import Sampler, sample_images

N_PROBE, N_REFERENCE = 256, 512
MONITOR_EVERY = 500   # default measurement frequency of `diffmem train --monitor`, in steps
ONSET = 0.02           # ground-truth onset: the first checkpoint whose copy fraction reaches 2 %


def probe_and_reference(record: ModelRecord, n_probe: int = N_PROBE, n_reference: int = N_REFERENCE,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe: ``n_probe`` draws from the training rows as the loader serves them (a duplicated image
    is drawn as often as it is seen), duplicates dropped → (P, C, H, W). Reference: ``n_reference``
    held-out images (R, C, H, W). Both in [-1, 1]."""
    train, copies = record_training_images(record)
    rows = np.repeat(np.arange(len(train)), copies)
    rng = np.random.default_rng(seed)
    pick = np.unique(rng.choice(rows, size=min(n_probe, len(rows)), replace=False))
    ref = record_reference_images(record)[0]
    return train[pick], ref[rng.permutation(len(ref))[:n_reference]]


class TrainingCallback:
    """``train_unet(callback=TrainingCallback(every))``: builds a :class:`MemorizationMonitor` from
    the run's record at the first call, measures every ``every`` steps, keeps ``monitor.json`` in the
    run's output folder up to date and prints one line when the alarm fires."""

    def __init__(self, every: int = MONITOR_EVERY, n_probe: int = N_PROBE, n_reference: int = N_REFERENCE, seed: int = 0,
                 quiet: bool = False):
        self.every, self.n_probe, self.n_reference, self.seed, self.quiet = every, n_probe, n_reference, seed, quiet
        self.monitor: MemorizationMonitor | None = None

    def __call__(self, model, step: int, folder: Path, record: dict) -> None:
        if step % self.every:
            return
        if self.monitor is None:
            probe, ref = probe_and_reference(ModelRecord.from_dict(jsonable(record)), self.n_probe, self.n_reference, self.seed)
            self.monitor = MemorizationMonitor(every=self.every, seed=self.seed).fit(probe, ref)
        before = self.monitor.alarm_step_
        self.monitor.step(model, step)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.monitor.save(Path(folder) / "monitor.json")                    # atomic (outputs.write_json)
        if before is None and self.monitor.alarm_step_ is not None and not self.quiet:
            print(f"diffmem monitor: memorization alarm at step {step}", file=sys.stderr)


def _is_model(folder: Path) -> bool:
    from diffmem.models.load import LORA
    return any((folder / f).exists() for f in ("model_index.json", "config.json", LORA))


def checkpoint_folders(paths: Sequence[str | Path]) -> list[tuple[Path, int]]:
    """(model folder, training step) pairs from ``paths``, sorted by step: each path is a model
    folder (it has ``model_index.json``, ``config.json`` or a LoRA's ``lora.json``) or a folder of them (e.g.
    ``checkpoints/``). A lone folder with no step is step 0. Every checkpoint must be of one model:
    one family and one denoiser config (architecture, image size)."""
    out = []
    for p in map(Path, paths):
        check(p.is_dir(), f"{p}: not a folder")
        if _is_model(p):
            out.append(p)
            continue
        kids = sorted(c for c in p.iterdir() if c.is_dir() and _is_model(c))
        check(bool(kids), f"{p}: neither a model folder nor a folder of checkpoints")
        out.extend(kids)
    from diffmem.models.load import architecture
    first = architecture(out[0])
    for f in out[1:]:
        other = architecture(f)
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        check(not diff, f"{f}: not a checkpoint of the same model as {out[0]} ({', '.join(diff[:4])} differ)")
    steps = [checkpoint_step(f) for f in out]
    bad = [f for f, s in zip(out, steps) if s is None]
    check(len(out) == 1 or not bad, f"{bad[0] if bad else ''}: no global_step in diffmem.json and no step number "
                                    f"in its name, so checkpoints cannot be ordered")
    return sorted(((f, s or 0) for f, s in zip(out, steps)), key=lambda fs: (fs[1], str(fs[0])))


def checkpoint_step(folder: Path) -> int | None:
    """The ``global_step`` a checkpoint records (``diffmem.json``), else the digits of its name, else None."""
    rec = ModelRecord.read(folder)
    if rec is not None and "global_step" in rec.settings:
        return int(rec.settings["global_step"])
    digits = "".join(ch for ch in folder.name if ch.isdigit())
    return int(digits) if digits else None


def copy_fraction(adapter: Adapter, n: int, seed: int = 0, guidance: float = 1.0, steps: int = 50) -> dict:
    """Sample n images (classes in turn, DDIM) and label them against the training record:
    ``{"copy_fraction", "n", "copies"}`` (d1/d2 < 1/3)."""
    train, copies = record_training_images(adapter.record)
    x = sample_images(adapter, n, adapter.conditions(n), Sampler(guidance, steps), seed, True)
    mem = label_samples(x, train, copies)["memorized"]
    return {"copy_fraction": float(mem.mean()), "n": int(n), "copies": int(mem.sum())}


def onset_step(steps: Sequence[int], fractions: Sequence[float], onset: float = ONSET) -> int | None:
    """The first step whose copy fraction reaches ``onset``, or None."""
    return next((s for s, f in zip(steps, fractions) if f >= onset), None)


def ground_truth(checkpoints: Sequence[tuple[Path, int]], n: int, seed: int = 0, device: str = "cpu",
                 quiet: bool = False) -> list[dict]:
    """:func:`copy_fraction` of every (folder, step) of :func:`checkpoint_folders`:
    ``[{"step", "copy_fraction", "n", "copies"}]``."""
    from diffmem.models.load import load_adapter
    from diffmem.outputs import progress
    out = []
    for f, step in progress(checkpoints, desc="ground truth", disable=quiet):
        adapter = load_adapter(f, device=device)
        check(adapter.record is not None, f"{f}: no diffmem.json training record; ground_truth=True needs one")
        out.append({"step": step, **copy_fraction(adapter, n, seed)})
    return out


def run_summary(monitor: MemorizationMonitor, truth: Sequence[dict] | None = None) -> dict:
    """One run for ``monitor.json``: the monitor's :meth:`~MemorizationMonitor.summary` plus, with
    ground truth, ``onset_step``, each checkpoint's ``copy_fraction`` and the ``lead_steps`` of every
    rule (onset − alarm; positive = the alarm came first)."""
    out = monitor.summary()
    if truth is None:
        return out
    by_step = {g["step"]: g["copy_fraction"] for g in truth}
    for c in out["checkpoints"]:
        c["copy_fraction"] = by_step.get(c["step"])
    onset = onset_step(sorted(by_step), [by_step[s] for s in sorted(by_step)])
    lead = lambda a: None if a is None or onset is None else onset - a  # noqa: E731
    out.update(onset_step=onset, lead_steps=lead(out["alarm_step"]),
               baselines_lead_steps={k: lead(v) for k, v in out["baselines"].items()})
    return out


@dataclass(frozen=True)
class OfflineMonitor:
    """What ``diffmem monitor`` measures over saved checkpoints: ``probe``/``reference`` image sources
    (None: drawn from the checkpoints' training record), at most ``n_probe`` / ``n_reference`` of them,
    and with ``ground_truth`` the copy fraction of ``n`` samples per checkpoint; ``seed``."""

    probe: str | None = None
    reference: str | None = None
    n_probe: int = N_PROBE
    n_reference: int = N_REFERENCE
    ground_truth: bool = False
    n: int = 500
    seed: int = 0


def monitor_checkpoints(checkpoints: Sequence[str | Path], cfg: OfflineMonitor = OfflineMonitor(),
                        device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
                        quiet: bool = False) -> dict:
    """The monitor run over saved checkpoints (folders, or folders of them), in step order: the
    :func:`run_summary` row of ``monitor.json`` plus ``checkpoint_folders``. The checkpoints must share
    one family, architecture and image size (:func:`checkpoint_folders`)."""
    from diffmem.data.sources import load_images
    from diffmem.models.load import load_adapter
    from diffmem.outputs import progress
    check(len(checkpoints) > 0, "checkpoints: give at least one checkpoint folder")
    pairs = checkpoint_folders(checkpoints)
    folders, steps = [f for f, _ in pairs], [s for _, s in pairs]
    check(len(set(steps)) == len(steps), f"checkpoints: two share a training step ({steps})")
    first = load_adapter(folders[0], allow_pickle, device, dtype)
    if cfg.probe is None or cfg.reference is None or cfg.ground_truth:
        check(first.record is not None, f"{folders[0]}: no diffmem.json training record; give probe and "
                                        f"reference images (and no ground_truth=True)")
    drawn = (probe_and_reference(first.record, cfg.n_probe, cfg.n_reference, cfg.seed) if first.record is not None
             else (None, None))
    images = [drawn[i] if src is None else torch.from_numpy(load_images(src, size=first.image_size,
                                                                         channels=first.image_channels))
              for i, src in enumerate((cfg.probe, cfg.reference))]
    mon = MemorizationMonitor(every=1, seed=cfg.seed).fit(images[0][:cfg.n_probe], images[1][:cfg.n_reference])
    for folder, step in progress(pairs, desc="monitor", disable=quiet):
        mon.step(first if folder == folders[0] else load_adapter(folder, allow_pickle, device, dtype), step)
    truth = ground_truth(pairs, cfg.n, cfg.seed, device, quiet) if cfg.ground_truth else None
    return {**run_summary(mon, truth), "checkpoint_folders": [str(f) for f in folders]}

