"""The probe's commands: ``diffmem layers``, ``diffmem scan``, ``diffmem bench probe`` and ``diffmem bench scan``."""

from __future__ import annotations

import tempfile
import time
from typing import Annotated

import torch

from diffmem.commands.options import (AllowOutside, AllowPickle, BatchSize, Device, DType, InputRange, Model, Opt,
                                      Out, Quiet, Seed)
from diffmem.commands.options import input_range as parse_range
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir, write_json
from diffmem.probe.pooling import POOLS
from diffmem.probe.represent import capture_layers, generators
from diffmem.scan import RayConfig, ScanConfig, run


def layers(model: Model, json_output: Annotated[bool, Opt("print JSON instead of a table", flag="--json")] = False,
           device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False) -> list[dict]:
    """List every hookable layer of a model with its calls per forward and output shapes (one dummy forward)."""
    adapter = load_adapter(model, allow_pickle, device, dtype)
    return [{"name": n, "calls": len(shapes), "shapes": [list(s) for s in shapes],
             "default": n == adapter.default_layer.split("@")[0]}
            for n, shapes in adapter.layers().items()]


def scan(model: Model, images: Annotated[str, Opt("image folder, .npy/.npz array or .jsonl manifest",
                                                  positional=True, metavar="IMAGES")],
         out: Out,
         layer: Annotated[str | None, Opt("dotted layer name, name@k for the k-th call (default: the family's "
                                          "recipe; see `diffmem layers`)")] = None,
         t: Annotated[float | None, Opt("timestep (default: 10, or σ=0.1 for theory models)", min=0)] = None,
         pool: Annotated[str | None, Opt("pooling (default: the family's)", choices=POOLS)] = None,
         batch_size: Annotated[int, Opt("images per forward pass", min=1)] = 32,
         repeats: Annotated[int, Opt("noise draws averaged per image", min=1, max=64)] = 1,
         detector: Annotated[str | None, Opt("a detector saved by `diffmem bench` (its DIR/detector): score and "
                                             "flag with it", metavar="DIR")] = None,
         on_error: Annotated[str, Opt("a bad image: an error row (skip) or a fatal error (fail)",
                                      choices=("skip", "fail"))] = "skip",
         resume: Annotated[bool, Opt("continue a killed scan in the same --out")] = False,
         engine: Annotated[str, Opt("local, or ray: a Ray Data pipeline (pip install 'diffmem[ray]')",
                                    choices=("local", "ray"))] = "local",
         workers: Annotated[int, Opt("ray: model actors (one CPU thread each)", min=1)] = 2,
         ray_address: Annotated[str | None, Opt("ray: an existing cluster (default: start a local Ray)")] = None,
         gpus_per_worker: Annotated[float, Opt("ray: GPUs reserved per model actor (0: CPU actors; > 0 runs "
                                               "each actor's model on cuda unless --device says otherwise)",
                                               min=0)] = 0.0,
         part_size: Annotated[int, Opt("inputs per committed Parquet part", min=1)] = 256,
         threads: Annotated[int | None, Opt("torch threads of the local process or of each Ray worker "
                                            "(default: all / 1)", min=1)] = None,
         input_range: InputRange = None, allow_outside: AllowOutside = False,
         device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
         seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Score the spikiness of every image (noise slightly, run the denoiser once, hook a layer, pool,
    take the std), or its memorization score and flag under a saved ``--detector``.

    ``threads``: torch threads of the local process, or of each Ray worker (default: all cores
    locally, 1 per worker). Kernels reduce in a thread-count-dependent order, so the two engines
    give bit-identical tables when their thread counts match."""
    check_out(out)
    cfg = ScanConfig(layer, t, pool, batch_size, repeats, seed, on_error, part_size, detector,
                     parse_range(input_range), allow_outside)
    ray = RayConfig(workers, threads or 1, ray_address, gpus_per_worker)
    return run(model, images, out, cfg, engine, ray, resume, threads, device, dtype, allow_pickle, quiet)


def bench_scan(n_images: Annotated[int, Opt("images per engine on the compute-bound model (the overhead case "
                                              "scans 8x as many)", min=16)] = 1024,
               batch_size: BatchSize = 32,
               part_size: Annotated[int, Opt("inputs per Parquet part (and per Ray task)", min=1)] = 256,
               rss_images: Annotated[int, Opt("inputs of the large memory run (the small one scans 1,000)",
                                              min=1000)] = 100_000,
               out: Annotated[str | None, Opt("also write scan_bench.json here", metavar="DIR")] = None,
               seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Throughput of the local engine (1 and 2 threads) and of Ray (1 and 2 one-thread workers) on a
    compute-bound 64×64 UNet built in code and on the shipped 16×16 model (the overhead case), with
    start-up apart and every table checked equal; peak RSS of scanning 1,000 vs ``rss_images``
    images of a .npy memmap. One run; ``scan_bench.json``."""
    from diffmem.data.records import HYBRID
    from diffmem.models.tiny import save_tiny_unet2d
    from diffmem.scan.bench import engine_throughput, peak_rss_mb
    check_out(out)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        heavy = save_tiny_unet2d(f"{tmp}/unet64", num_classes=None, seed=seed, sample_size=64, widths=(64, 128))
        cases = {"compute_bound": (heavy, 64, n_images), "overhead": (HYBRID, 16, 8 * n_images)}
        for case, (model, size, n) in cases.items():
            res[case] = {"model": "tiny UNet2D 64x64 (64, 128) built in code" if case == "compute_bound"
                         else "shipped 16x16 hybrid", **engine_throughput(
                             model, size, n // 8, n, batch_size, part_size, seed, quiet)}
            one = res[case]["local_1_thread"]["images_per_second"]
            res[case]["seconds_per_image_1_thread"] = 1 / one
    large = f"{rss_images // 1000}k"
    for key, n in (("1k", 1000), (large, rss_images)):
        res[f"rss_{key}_mb"] = peak_rss_mb(HYBRID, n, seed=seed)
    cb = res["compute_bound"]
    ray1, ray2 = cb["ray_1_worker"]["images_per_second"], cb["ray_2_workers"]["images_per_second"]
    res["goals"] = {"ray_1_worker_over_local_1_thread": ray1 / cb["local_1_thread"]["images_per_second"],
                    "ray_2_workers_over_ray_1_worker": ray2 / ray1,
                    "rss_large_over_1k": res[f"rss_{large}_mb"] / res["rss_1k_mb"]}
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
