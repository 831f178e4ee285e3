"""The memorization monitor inside a text-to-image fine-tune (``diffmem finetune --monitor-every K``).

:class:`FinetuneMonitor` is the fine-tuning loop's callback: every ``every`` steps it runs
:class:`~diffmem.monitor.monitor.MemorizationMonitor` on the live model (the fine-tuning images as the
probe set against held-out ``reference`` images, with the empty prompt, as the detector does), keeps
``out/monitor.json`` up to date, optionally samples ``ground_truth`` generations of the fine-tuning
captions (DDIM 25 steps at ``guidance``) for the copy fraction (d1/d2 < 1/3 against the VAE round
trips of the fine-tuning images), and with ``stop_on_alarm`` stops training at the first alarm.
Everything it draws comes from its own generators, so training is bit-identical with it on or off."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffmem.errors import check
from diffmem.monitor.monitor import MemorizationMonitor
from diffmem.monitor.training import run_summary
from diffmem.schemas import MonitorFile, write_result
from diffmem.train.finetune import Finetune, finetune


@dataclass(frozen=True)
class FinetuneWatch:
    """The monitor's settings during a fine-tune: every ``every`` steps, ``stop_on_alarm``,
    ``ground_truth`` generations per measurement (0: none) at ``guidance``."""

    every: int = 100
    stop_on_alarm: bool = False
    ground_truth: int = 0
    guidance: float = 7.5

    def __post_init__(self):
        check(self.every >= 1, f"every={self.every}: must be >= 1")
        check(self.ground_truth >= 0, f"ground_truth={self.ground_truth}: must be >= 0")


class FinetuneMonitor:
    """``callback(adapter, step, out)`` for :func:`diffmem.train.finetune.finetune`; True = stop."""

    def __init__(self, images: torch.Tensor, captions: list[str], reference: torch.Tensor,
                 watch: FinetuneWatch = FinetuneWatch(), seed: int = 0, quiet: bool = False):
        self.images, self.captions, self.reference = images, list(captions), reference
        self.watch, self.seed, self.quiet = watch, seed, quiet

    def start(self) -> "FinetuneMonitor":
        """Fit the monitor on the probe and reference images (before training)."""
        self.monitor_ = MemorizationMonitor(every=self.watch.every, seed=self.seed).fit(self.images, self.reference)
        self.truth_: list[dict] = []
        self.copies_of_ = None
        return self

    def _copy_fraction(self, adapter, step: int) -> None:
        from diffmem.neighbours import label_samples
        from diffmem.probe.sampling import Sampler, sample_images
        if self.copies_of_ is None:
            self.copies_of_ = adapter.round_trip(self.images)                          # (N, 3, H, W)
        conds = [self.captions[j % len(self.captions)] for j in range(self.watch.ground_truth)]
        unet = adapter.denoiser
        was = unet.training
        unet.eval()
        with torch.no_grad():
            x = sample_images(adapter, len(conds), conds, Sampler(self.watch.guidance, 25), self.seed, True)
        unet.train(was)
        mem = label_samples(x, self.copies_of_, np.ones(len(self.images)))["memorized"]
        self.truth_.append({"step": step, "copy_fraction": float(mem.mean()), "n": len(conds), "copies": int(mem.sum())})

    def summary(self) -> dict:
        return run_summary(self.monitor_, self.truth_ or None)

    def __call__(self, adapter, step: int, out: Path) -> bool:
        if self.monitor_.step(adapter, step) is None:
            return False
        if self.watch.ground_truth:
            self._copy_fraction(adapter, step)
        out.mkdir(parents=True, exist_ok=True)                                      # kept up to date, atomically
        write_result(out / "monitor.json", {"runs": {"run": self.summary()}}, MonitorFile)
        fired = self.monitor_.alarm_step_ == step
        if fired and not self.quiet:
            print(f"diffmem finetune: memorization alarm at step {step}", file=sys.stderr)
        return fired and self.watch.stop_on_alarm


def monitored_finetune(base, images: torch.Tensor, captions: list[str], out, cfg: Finetune = Finetune(),
                       reference: torch.Tensor | None = None, watch: FinetuneWatch | None = None,
                       quiet: bool = False) -> dict:
    """:func:`~diffmem.train.finetune.finetune` with the monitor (``watch``; None: off). Adds to
    ``finetune.json`` the ``alarm_step``, the ``monitor`` row of ``monitor.json`` and, when training stopped
    at the alarm, ``keep``: the last checkpoint before it."""
    from diffmem.outputs import write_json
    if watch is None:
        return finetune(base, images, captions, out, cfg, None, quiet)
    check(reference is not None, "reference: the monitor needs held-out images")    # their count: fit checks it
    check(watch.every <= cfg.steps, f"every={watch.every}: more than the {cfg.steps} steps, so the monitor would "
                                    f"never run")
    mon = FinetuneMonitor(images, captions, reference, watch, cfg.seed, quiet).start()
    record = finetune(base, images, captions, out, cfg, mon, quiet)
    stopped = record["stopped_at"]
    keep = [c for c in record["checkpoints"] if stopped is None or c < stopped]
    record.update(alarm_step=mon.monitor_.alarm_step_, monitor=mon.summary(),
                  keep=None if stopped is None else (f"checkpoints/step-{keep[-1]:06d}" if keep else None))
    out = Path(out)
    write_result(out / "monitor.json", {"runs": {"run": record["monitor"]}}, MonitorFile)
    write_json(out / "finetune.json", record)
    return record


@dataclass(frozen=True)
class FinetuneDemo:
    """The demonstration on a captioned text-to-image model: ``memorizing`` held-out items fine-tuned on
    for ``steps`` steps (full UNet and LoRA of ``lora_rank``), and a ``control`` run on ``control`` other
    held-out items; ``n_reference`` further held-out items are the monitor's references; the monitor
    and ``ground_truth`` generations every ``every`` steps."""

    memorizing: int = 20
    control: int = 300
    n_reference: int = 100
    steps: int = 1200
    every: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    lora_lr: float = 1e-3
    lora_rank: int = 8
    ground_truth: int = 40


QUICK_DEMO = FinetuneDemo(memorizing=8, control=10, n_reference=12, steps=6, every=3, batch_size=4,
                          ground_truth=4)        # seconds; for tests


def held_out_split(base, sizes: tuple[int, ...], seed: int) -> tuple[torch.Tensor, list[str], list[np.ndarray]]:
    """``base``'s held-out images (N, 3, H, W) in [-1, 1], their captions, and disjoint index sets of
    ``sizes`` (in order) from one permutation drawn by ``seed``: the items a fine-tune may use as new data."""
    from diffmem.data.records import record_reference_captions, record_reference_images
    from diffmem.models.record import ModelRecord
    rec = ModelRecord.read(base)
    check(rec is not None and rec.captions is not None, f"{base}: needs a captioned training record")
    x, caps = record_reference_images(rec)[0], record_reference_captions(rec)
    check(len(x) >= sum(sizes), f"{base}: {len(x)} held-out items, need {sum(sizes)}")
    perm = np.random.default_rng(seed).permutation(len(x))
    ends = np.cumsum((0, *sizes))
    return x, caps, [perm[a:b] for a, b in zip(ends[:-1], ends[1:])]


def finetune_demo(base, out, demo: FinetuneDemo = FinetuneDemo(), seed: int = 0, quiet: bool = False) -> dict:
    """Run the demonstration's three fine-tunes of ``base`` (memorizing full, memorizing LoRA, control
    full) with the monitor and ground truth, and write ``out/monitor.json`` (``runs.NAME``, ``settings``),
    ``out/monitor.png`` and ``out/runs/NAME/``."""
    from dataclasses import asdict
    from diffmem.monitor.plots import plot_runs
    from diffmem.outputs import output_dir
    x, caps, (mem, ctl, ref_idx) = held_out_split(base, (demo.memorizing, demo.control, demo.n_reference), seed)
    ref = x[ref_idx]
    runs = {"memorizing-full": (mem, 0, demo.lr), "memorizing-lora": (mem, demo.lora_rank, demo.lora_lr),
            "control-full": (ctl, 0, demo.lr)}
    result = {"settings": {"seed": seed, "base": str(base), **asdict(demo)}, "runs": {}}
    watch = FinetuneWatch(demo.every, ground_truth=demo.ground_truth)
    with output_dir(out) as tmp:
        for name, (idx, rank, lr) in runs.items():
            cfg = Finetune(demo.steps, demo.batch_size, lr, rank, checkpoint_every=0, seed=seed)
            r = monitored_finetune(base, x[idx], [caps[i] for i in idx], tmp / "runs" / name, cfg, ref, watch, quiet)
            result["runs"][name] = {**r["monitor"], "seconds": r["seconds"], "n_images": len(idx), "lora": bool(rank)}
        write_result(tmp / "monitor.json", result, MonitorFile)
        plot_runs(result["runs"], tmp / "monitor.png")
    return result
