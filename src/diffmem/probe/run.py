"""The probe's commands: ``diffmem layers``, ``diffmem scan`` and ``diffmem bench probe``."""

from __future__ import annotations

import os
import tempfile
import time

import pandas as pd
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
             allow_pickle: bool = False, engine: str = "local", workers: int = 2, ray_address: str | None = None,
             part_size: int = 256, threads: int | None = None, detector: str | os.PathLike | None = None,
             quiet: bool = False) -> dict:
    """Load ``model`` and scan ``images`` into ``out`` (see :func:`diffmem.scan.scan`) with the local
    engine, or with Ray Data (``engine="ray"``, ``workers`` actors, optional ``ray_address``).

    ``threads``: torch threads of the local process, or of each Ray worker (default: all cores
    locally, 1 per worker). Kernels reduce in a thread-count-dependent order, so the two engines
    give bit-identical tables when their thread counts match."""
    from diffmem.scan import scan
    from diffmem.errors import check
    check(engine in ("local", "ray"), f"--engine {engine!r}: 'local' or 'ray'")
    if engine == "ray":
        from diffmem.scan.ray_engine import scan_ray
        check(workers >= 1, f"--workers {workers}: must be >= 1")
        return scan_ray(model, images, out, layer=layer, t=t, pool=pool, batch_size=batch_size, repeats=repeats,
                        seed=seed, on_error=on_error, resume=resume, workers=workers, ray_address=ray_address,
                        allow_pickle=allow_pickle, part_size=part_size, threads=threads or 1, detector=detector,
                        quiet=quiet)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        adapter = load_adapter(model, allow_pickle=allow_pickle)
        return scan(adapter, images, out, layer=layer, t=t, pool=pool, batch_size=batch_size, repeats=repeats,
                    seed=seed, on_error=on_error, resume=resume, part_size=part_size, detector=detector, quiet=quiet)
    finally:
        torch.set_num_threads(before)


def bench_scan(n_images: int = 512, batch_size: int = 32, model: str | os.PathLike | None = None, seed: int = 0,
               out: str | os.PathLike | None = None, quiet: bool = False) -> dict:
    """Images per second of the local engine and of Ray with 1 and 2 workers, one thread per process
    (so all three tables are bit-identical), same inputs and settings, one run, on the shipped
    hybrid model; ``scan_bench.json``."""
    import shutil
    import numpy as np
    from PIL import Image
    from diffmem.bench.run import HYBRID
    model = model or HYBRID
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.mkdir(folder)
        rng = np.random.default_rng(seed)
        for i in range(n_images):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(f"{folder}/{i:05d}.png")
        runs = {"local": {"engine": "local", "threads": 1}, "ray_1_worker": {"engine": "ray", "workers": 1},
                "ray_2_workers": {"engine": "ray", "workers": 2}}
        tables = {}
        for name, kw in runs.items():
            dest = os.path.join(tmp, name)
            t0 = time.perf_counter()
            summary = run_scan(model, folder, dest, batch_size=batch_size, seed=seed, quiet=quiet, **kw)
            wall = time.perf_counter() - t0
            tables[name] = pd.read_parquet(os.path.join(dest, "scores.parquet"))
            results[name] = {"images": n_images, "wall_seconds": wall, "images_per_second": n_images / wall,
                             "scan_seconds": summary["seconds"]}
            shutil.rmtree(dest)
        results["tables_identical"] = all(tables["local"].equals(t) for t in tables.values())
    if out is not None:
        with output_dir(out) as d:
            write_json(d / "scan_bench.json", results)
    return results


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
