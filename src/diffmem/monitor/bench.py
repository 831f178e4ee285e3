"""``diffmem bench monitor``: the monitor's cost inside a training run (pixel training or a text-to-image
fine-tune), and proof it changes nothing."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffmem.train.pixel import PixelRun, train_unet
from diffmem.monitor.training import TrainingCallback


class _Timed:
    """A training callback that adds its own wall time to ``seconds`` (and returns what it returns)."""

    def __init__(self, callback):
        self.callback, self.seconds = callback, 0.0

    def __call__(self, *args):
        t = time.perf_counter()
        result = self.callback(*args)
        self.seconds += time.perf_counter() - t
        return result


OVERHEAD_RUN = PixelRun(distinct=2000, dup="10x100", steps=500, batch_size=64, config="bench-s", size=16)


def _alternate(train, weights_of, pairs: int) -> dict:
    """Run ``train(folder, on) -> (seconds inside the monitor, measurements)`` ``pairs`` times off and
    on, in the order off, on, on, off, … (drift cancels), timing each run; ``weights_of(folder)`` reads
    the trained weights afterwards, outside the timing."""
    out: dict = {"pairs": pairs, "seconds_off": [], "seconds_on": []}
    weights, inside, count = [], 0.0, 0
    order = [kind for p in range(pairs) for kind in (("off", "on") if p % 2 == 0 else ("on", "off"))]
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(order):
            t0 = time.perf_counter()
            seconds, n = train(Path(tmp) / str(i), kind == "on")
            out[f"seconds_{kind}"].append(time.perf_counter() - t0)
            weights.append(weights_of(Path(tmp) / str(i)))
            inside, count = inside + seconds, count + n
    out["overhead_ratio"] = sum(out["seconds_on"]) / sum(out["seconds_off"])
    out["monitor_fraction"] = inside / sum(out["seconds_on"])
    out["measurements"] = count
    out["seconds_per_measurement"] = inside / max(1, count)
    out["weights_identical"] = all(w.keys() == weights[0].keys() and all(torch.equal(w[k], weights[0][k]) for k in w)
                                   for w in weights)
    return out


def overhead(run: PixelRun = OVERHEAD_RUN, every: int = 500, pairs: int = 2, quiet: bool = False) -> dict:
    """Train the same ``run`` with the monitor off and on (every ``every`` steps), ``pairs`` times in
    the order off, on, on, off, … (drift cancels), in one process:
    ``{"seconds_off", "seconds_on"`` (lists), ``"overhead_ratio"`` (Σ on / Σ off),
    ``"monitor_fraction"`` (time inside the monitor / time of the monitored runs, timed in the run),
    ``"measurements", "seconds_per_measurement", "weights_identical"}``."""
    def train(folder: Path, on: bool):
        cb = _Timed(TrainingCallback(every, seed=run.seed, quiet=True)) if on else None
        train_unet(folder, run, callback=cb, quiet=quiet)
        n = len(cb.callback.monitor.history_) if cb is not None and cb.callback.monitor else 0
        return (cb.seconds if cb else 0.0), n
    weights = lambda folder: load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")  # noqa: E731
    return {"steps": run.steps, "every": every, "batch_size": run.batch_size, "config": run.config,
            "size": run.size, **_alternate(train, weights, pairs)}


def finetune_overhead(base, cfg, every: int = 100, pairs: int = 2, n_images: int = 20, n_reference: int = 100,
                      quiet: bool = False) -> dict:
    """:func:`overhead` for a text-to-image fine-tune (``cfg``: a :class:`~diffmem.train.finetune.Finetune`,
    full or LoRA) of ``base`` on ``n_images`` of its held-out items, the monitor every ``every`` steps
    against ``n_reference`` other held-out items (no ground truth: that is sampling, not monitoring)."""
    from diffmem.errors import check
    from diffmem.models.load import LORA_WEIGHTS
    from diffmem.monitor.finetune import FinetuneMonitor, FinetuneWatch, held_out_split
    from diffmem.train.finetune import finetune
    check(every <= cfg.steps, f"every={every}: more than steps={cfg.steps}, so the monitor would never run")
    x, caps, (mem, ref) = held_out_split(base, (n_images, n_reference), cfg.seed)
    images, captions, reference = x[mem], [caps[i] for i in mem], x[ref]

    def train(folder: Path, on: bool):
        cb = _Timed(FinetuneMonitor(images, captions, reference, FinetuneWatch(every), cfg.seed, True).start()) \
            if on else None
        finetune(base, images, captions, folder, cfg, cb, quiet)
        return (cb.seconds if cb else 0.0), (len(cb.callback.monitor_.history_) if cb is not None else 0)
    name = LORA_WEIGHTS if cfg.lora_rank else "unet/diffusion_pytorch_model.safetensors"
    return {"base": str(base), "steps": cfg.steps, "every": every, "batch_size": cfg.batch_size,
            "lora_rank": cfg.lora_rank, "n_images": n_images,
            **_alternate(train, lambda folder: load_file(folder / name), pairs)}
