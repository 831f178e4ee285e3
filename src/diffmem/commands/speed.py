"""``diffmem bench scan`` and ``diffmem bench probe``: speed and memory goals, printed as ratios of one run."""

from __future__ import annotations

import tempfile
import time
from typing import Annotated

import torch

from diffmem.commands.options import BatchSize, Device, Opt, Quiet, Seed
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir, write_json
from diffmem.probe.represent import capture_layers, generators


def bench_scan(n_images: Annotated[int, Opt("images per engine on the compute-bound model (the overhead case "
                                              "scans 8x as many)", min=16)] = 1024,
               batch_size: BatchSize = 32,
               part_size: Annotated[int, Opt("inputs per Parquet part (and per Ray task)", min=1)] = 256,
               rss_images: Annotated[int, Opt("inputs of the large memory run (the small one scans 1,000)",
                                              min=1000)] = 100_000,
               out: Annotated[str | None, Opt("also write scan_bench.json here", metavar="DIR")] = None,
               seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Scan throughput of the local engine and of Ray, and peak memory against the number of inputs
    (:func:`diffmem.scan.bench.scan_speed`), printed as ratios of one run; ``scan_bench.json``."""
    from diffmem.scan.bench import scan_speed
    check_out(out)
    res = scan_speed(n_images, batch_size, part_size, rss_images, seed, quiet)
    cb, large = res["compute_bound"], f"{rss_images // 1000}k"
    g = res["goals"]
    print(f"compute-bound ({cb['seconds_per_image_1_thread'] * 1e3:.1f} ms/image/thread): Ray 1 worker / local "
          f"1 thread = {g['ray_1_worker_over_local_1_thread']:.2f} (goal >= 0.8); Ray 2 / 1 workers = "
          f"{g['ray_2_workers_over_ray_1_worker']:.2f} (goal >= 1.7); rows equal: {cb['rows_equal']}")
    print(f"peak RSS {rss_images:,} / 1,000 images = {res[f'rss_{large}_mb']:.0f} / {res['rss_1k_mb']:.0f} MB = "
          f"{g['rss_large_over_1k']:.3f} (goal <= 1.10)")
    if out is not None:
        with output_dir(out) as d:
            write_json(d / "scan_bench.json", res)
    return res


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


@torch.no_grad()
def bench_probe(batch_size: BatchSize = 16, reps: Annotated[int, Opt("timed repetitions", min=1)] = 10,
                device: Device = "auto",
                out: Annotated[str | None, Opt("also write probe_bench.json here", metavar="DIR")] = None,
                seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Per family (tiny models built in code): seconds of a full forward vs an early-exit capture at
    the default layer, same inputs, measured in one run; ``ratio`` = early / full."""
    from diffmem.models.tiny import SAVERS
    check_out(out)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, saver in SAVERS.items():
            adapter = load_adapter(saver(f"{tmp}/{family}", seed=seed), device=device)
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
