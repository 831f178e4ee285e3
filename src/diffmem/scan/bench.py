"""``diffmem bench scan``: engine throughput on a compute-bound and an overhead-bound model, and
peak memory against the number of inputs.

Throughput is *marginal*: each engine scans a small and a large input set; images/s is
(n_large − n_small) / (t_large − t_small), and ``startup_seconds`` is what remains of the small run
(starting Ray, spawning actors, loading the model) — so start-up is reported apart from speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from diffmem.scan import Engine, RayConfig, ScanConfig, run

ENGINES = {"local_1_thread": Engine("local", 1), "local_2_threads": Engine("local", 2),
           "ray_1_worker": Engine("ray", ray=RayConfig(workers=1, threads=1)),
           "ray_2_workers": Engine("ray", ray=RayConfig(workers=2, threads=1))}
ONE_THREAD = ("local_1_thread", "ray_1_worker", "ray_2_workers")      # one torch thread per process


def write_images(path: Path, n: int, size: int, seed: int = 0) -> Path:
    """n random uint8 gray images (n, size, size) as a .npy file, written in chunks."""
    rng = np.random.default_rng(seed)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    for i in range(0, n, 8192):
        arr[i:i + 8192] = rng.integers(0, 256, (min(8192, n - i), size, size), dtype=np.uint8)
    arr.flush()
    return path


def engine_throughput(model: str | Path, size: int, n_small: int, n_large: int, batch_size: int,
                      part_size: int, seed: int = 0, quiet: bool = False) -> dict:
    """Every engine of :data:`ENGINES` on the same inputs (:func:`diffmem.scan.run`):
    ``{engine: {images_per_second, startup_seconds, wall_seconds, images}}`` plus ``rows_equal``
    (every table equal to ``local_1_thread``'s within float32 noise: rtol 1e-4, atol 1e-5),
    ``bit_identical`` (engines with one thread per process) and ``max_abs_diff``."""
    out, tables = {"part_size": min(part_size, max(1, n_small // 4))}, {}
    part_size = out["part_size"]          # the small run must give every Ray worker blocks to chew on
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {n: write_images(tmp / f"images_{n}.npy", n, size, seed) for n in (n_small, n_large)}
        for name, engine in ENGINES.items():
            wall = {}
            for n, f in files.items():
                dest = tmp / f"{name}_{n}"
                t0 = time.perf_counter()
                run(str(model), str(f), str(dest), ScanConfig(batch_size=batch_size, part_size=part_size, seed=seed),
                    engine, quiet=quiet)
                wall[n] = time.perf_counter() - t0
            ips = (n_large - n_small) / max(wall[n_large] - wall[n_small], 1e-9)
            out[name] = {"images_per_second": ips, "startup_seconds": max(0.0, wall[n_small] - n_small / ips),
                         "wall_seconds": wall[n_large], "wall_images_per_second": n_large / wall[n_large],
                         "images": n_large}
            tables[name] = pd.read_parquet(tmp / f"{name}_{n_large}" / "scores.parquet")
    base = tables["local_1_thread"]
    num = [c for c in base.columns if base[c].dtype.kind == "f"]
    diffs = {k: float(np.nanmax(np.abs(t[num].to_numpy() - base[num].to_numpy()))) for k, t in tables.items()}
    out["max_abs_diff"] = max(diffs.values())
    out["rows_equal"] = all(t["index"].equals(base["index"]) and t["sha256"].equals(base["sha256"])
                            and np.allclose(t[num].to_numpy(), base[num].to_numpy(), rtol=1e-4, atol=1e-5,
                                            equal_nan=True) for t in tables.values())
    out["bit_identical"] = all(tables[k].equals(base) for k in ONE_THREAD if k in tables)
    return out


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would report its parent's peak
_RSS_CHILD = """
import sys
from diffmem.scan import Engine, ScanConfig, run
run(sys.argv[1], sys.argv[2], sys.argv[3], ScanConfig(batch_size=int(sys.argv[4]), part_size=int(sys.argv[5])),
    Engine("local", 1), quiet=True)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024)
"""


def peak_rss_mb(model: str | Path, n: int, size: int = 16, batch_size: int = 256, part_size: int = 4096,
                seed: int = 0) -> float:
    """Peak resident memory (MB) of a child process that scans n images of a .npy memmap (the
    library's scan, imports and model load included; mapped pages of the array count too)."""
    with tempfile.TemporaryDirectory() as tmp:
        f = write_images(Path(tmp) / "images.npy", n, size, seed)
        r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(model), str(f), f"{tmp}/scan", str(batch_size),
                            str(part_size)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"scan of {n} images failed: {r.stderr[-500:]}")
        return float(r.stdout.strip().splitlines()[-1])

def scan_speed(n_images: int = 1024, batch_size: int = 32, part_size: int = 256, rss_images: int = 100_000,
               seed: int = 0, quiet: bool = False) -> dict:
    """Throughput of the local engine (1 and 2 threads) and of Ray (1 and 2 one-thread workers) on a
    compute-bound 64×64 UNet built in code (``n_images``) and on the shipped 16×16 model (the overhead
    case, 8× as many), start-up apart and every table checked equal; peak RSS of scanning 1,000 vs
    ``rss_images`` images of a .npy memmap; ``goals``: the three ratios (``scan_bench.json``)."""
    from diffmem.data.records import HYBRID
    from diffmem.models.tiny import save_tiny_unet2d
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        heavy = save_tiny_unet2d(f"{tmp}/unet64", num_classes=None, seed=seed, sample_size=64, widths=(64, 128))
        cases = {"compute_bound": (heavy, 64, n_images), "overhead": (HYBRID, 16, 8 * n_images)}
        for case, (model, size, n) in cases.items():
            res[case] = {"model": "tiny UNet2D 64x64 (64, 128) built in code" if case == "compute_bound"
                         else "shipped 16x16 hybrid", **engine_throughput(
                             model, size, n // 8, n, batch_size, part_size, seed, quiet)}
            res[case]["seconds_per_image_1_thread"] = 1 / res[case]["local_1_thread"]["images_per_second"]
    large = f"{rss_images // 1000}k"
    for key, n in (("1k", 1000), (large, rss_images)):
        res[f"rss_{key}_mb"] = peak_rss_mb(HYBRID, n, seed=seed)
    cb = res["compute_bound"]
    ray1, ray2 = cb["ray_1_worker"]["images_per_second"], cb["ray_2_workers"]["images_per_second"]
    res["goals"] = {"ray_1_worker_over_local_1_thread": ray1 / cb["local_1_thread"]["images_per_second"],
                    "ray_2_workers_over_ray_1_worker": ray2 / ray1,
                    "rss_large_over_1k": res[f"rss_{large}_mb"] / res["rss_1k_mb"]}
    return res
