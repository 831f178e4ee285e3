"""``diffmem bench monitor``: the monitor's cost inside a training run, and proof it changes nothing."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffmem.train.pixel import PixelRun, train_unet
from diffmem.monitor.training import TrainingCallback


class _Timed:
    """A training callback that adds its own wall time to ``seconds``."""

    def __init__(self, callback: TrainingCallback):
        self.callback, self.seconds = callback, 0.0

    def __call__(self, *args) -> None:
        t = time.perf_counter()
        self.callback(*args)
        self.seconds += time.perf_counter() - t


OVERHEAD_RUN = PixelRun(distinct=2000, dup="10x100", steps=500, batch_size=64, config="bench-s", size=16)


def overhead(run: PixelRun = OVERHEAD_RUN, every: int = 500, pairs: int = 2, quiet: bool = False) -> dict:
    """Train the same ``run`` with the monitor off and on (every ``every`` steps), ``pairs`` times in
    the order off, on, on, off, … (drift cancels), in one process:
    ``{"seconds_off", "seconds_on"`` (lists), ``"overhead_ratio"`` (Σ on / Σ off),
    ``"monitor_fraction"`` (time inside the monitor / time of the monitored runs, timed in the run),
    ``"measurements", "seconds_per_measurement", "weights_identical"}``."""
    out: dict = {"steps": run.steps, "every": every, "batch_size": run.batch_size, "config": run.config,
                 "size": run.size, "pairs": pairs, "seconds_off": [], "seconds_on": []}
    weights, inside, count = [], 0.0, 0
    order = [kind for p in range(pairs) for kind in (("off", "on") if p % 2 == 0 else ("on", "off"))]
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(order):
            cb = _Timed(TrainingCallback(every, seed=run.seed, quiet=True)) if kind == "on" else None
            t0 = time.perf_counter()
            train_unet(Path(tmp) / str(i), run, callback=cb, quiet=quiet)
            out[f"seconds_{kind}"].append(time.perf_counter() - t0)
            weights.append(load_file(Path(tmp) / str(i) / "unet" / "diffusion_pytorch_model.safetensors"))
            if cb is not None:
                inside += cb.seconds
                count += len(cb.callback.monitor.history_) if cb.callback.monitor else 0
    out["overhead_ratio"] = sum(out["seconds_on"]) / sum(out["seconds_off"])
    out["monitor_fraction"] = inside / sum(out["seconds_on"])
    out["measurements"] = count
    out["seconds_per_measurement"] = inside / max(1, count)
    out["weights_identical"] = all(w.keys() == weights[0].keys() and all(torch.equal(w[k], weights[0][k]) for k in w)
                                   for w in weights)
    return out
