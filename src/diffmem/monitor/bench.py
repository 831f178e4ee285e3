"""``diffmem bench monitor``: the monitor's cost inside a training run, and proof it changes nothing."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffmem.bench.train import train_unet
from diffmem.monitor.training import TrainingCallback


def overhead(steps: int = 1000, every: int = 500, batch_size: int = 64, distinct: int = 2000, dup: str = "10x100",
             config: str = "bench-s", size: int = 16, seed: int = 0, quiet: bool = False) -> dict:
    """Train the same run twice, monitor off then on (every ``every`` steps), in one process:
    ``{"seconds_off", "seconds_on", "overhead_ratio" (on/off), "measurements",
    "seconds_per_measurement", "weights_identical"}``."""
    out: dict = {"steps": steps, "every": every, "batch_size": batch_size, "config": config, "size": size}
    weights = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("off", "on"):
            cb = TrainingCallback(every, seed=seed, quiet=True) if name == "on" else None
            t0 = time.perf_counter()
            train_unet(Path(tmp) / name, distinct=distinct, dup=dup, steps=steps, batch_size=batch_size,
                       config=config, size=size, seed=seed, callback=cb, quiet=quiet)
            out[f"seconds_{name}"] = time.perf_counter() - t0
            weights[name] = load_file(Path(tmp) / name / "unet" / "diffusion_pytorch_model.safetensors")
            if cb is not None:
                out["measurements"] = len(cb.monitor.history_) if cb.monitor else 0
    out["overhead_ratio"] = out["seconds_on"] / out["seconds_off"]
    out["seconds_per_measurement"] = (out["seconds_on"] - out["seconds_off"]) / max(1, out["measurements"])
    out["weights_identical"] = weights["on"].keys() == weights["off"].keys() and all(
        torch.equal(weights["on"][k], weights["off"][k]) for k in weights["on"])
    return out
