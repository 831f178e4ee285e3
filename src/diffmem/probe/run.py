"""The probe's commands: ``diffmem layers``, ``diffmem scan`` and ``diffmem bench probe``."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from diffmem.models import load_adapter
from diffmem.outputs import output_dir, write_json
from diffmem.probe.represent import capture_layers, generators


def run_layers(model: str | os.PathLike, allow_pickle: bool = False) -> list[dict]:
    """Every hookable module of the model's denoiser: name, calls per forward, output shapes."""
    adapter = load_adapter(model, allow_pickle=allow_pickle)
    return [{"name": n, "calls": len(shapes), "shapes": [list(s) for s in shapes],
             "default": n == adapter.default_layer.split("@")[0]}
            for n, shapes in adapter.layers().items()]


def run_scan(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
             layer: str | None = None, t: float | None = None, pool: str | None = None, batch_size: int = 32,
             repeats: int = 1, seed: int = 0, on_error: str = "skip", resume: bool = False,
             allow_pickle: bool = False, quiet: bool = False) -> dict:
    """Load ``model`` and scan ``images`` into ``out`` (see :func:`diffmem.scan.scan`)."""
    from diffmem.scan import scan
    adapter = load_adapter(model, allow_pickle=allow_pickle)
    return scan(adapter, images, out, layer=layer, t=t, pool=pool, batch_size=batch_size, repeats=repeats,
                seed=seed, on_error=on_error, resume=resume, quiet=quiet)


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


@torch.no_grad()
def bench_probe(batch_size: int = 16, reps: int = 10, seed: int = 0, out: str | os.PathLike | None = None,
                quiet: bool = False) -> dict:
    """Per family (tiny models built in code): seconds of a full forward vs an early-exit capture at
    the default layer, same inputs, measured in one run; ``ratio`` = early / full."""
    from diffmem.models.tiny import SAVERS
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, saver in SAVERS.items():
            adapter = load_adapter(saver(f"{tmp}/{family}", seed=seed))
            x = torch.rand(batch_size, adapter.image_channels, adapter.image_size, adapter.image_size,
                           generator=torch.Generator().manual_seed(seed)) * 2 - 1
            z = adapter.prepare(x)
            gens = lambda: generators(seed, [str(i) for i in range(batch_size)])  # noqa: E731
            z_t = adapter.noise(z, adapter.default_t, gens())
            cond = adapter.null_condition(batch_size)
            full = _time(lambda: adapter.denoise(z_t, adapter.default_t, cond), reps)
            early = _time(lambda: capture_layers(adapter, x, [adapter.default_layer], adapter.default_t, gens(),
                                                 cond, z=z), reps)
            results[family] = {"layer": adapter.default_layer, "batch_size": batch_size,
                               "seconds_full_forward": full, "seconds_early_exit": early, "ratio": early / full}
    if out is not None:
        with output_dir(out) as d:
            write_json(d / "probe_bench.json", results)
    return results
