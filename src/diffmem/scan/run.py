"""One entry point for every scan engine: ``run(model, images, out, ScanConfig(...), engine=...)``."""

from __future__ import annotations

import os

import torch

from diffmem.errors import check
from diffmem.scan.local import ScanConfig, scan
from diffmem.scan.ray_engine import RayConfig, scan_ray

ENGINES = ("local", "ray")


def run(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, cfg: ScanConfig = ScanConfig(),
        engine: str = "local", ray: RayConfig = RayConfig(), resume: bool = False, threads: int | None = None,
        device: str = "auto", dtype: str = "float32", allow_pickle: bool = False, quiet: bool = False) -> dict:
    """Scan ``images`` with the model folder ``model`` into ``out`` (``scores.parquet``, ``summary.json``).

    ``engine``: ``local`` (this process, ``threads`` torch threads, default all) or ``ray`` (a Ray
    Data pipeline of ``ray.workers`` actors). The two give bit-identical tables when their thread
    counts per process match (kernels reduce in a thread-count-dependent order)."""
    from diffmem.models import load_adapter
    check(engine in ENGINES, f"engine={engine!r}: one of {', '.join(ENGINES)}")
    if engine == "ray":
        return scan_ray(model, images, out, cfg, ray, resume, allow_pickle, device, dtype, quiet)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return scan(load_adapter(model, allow_pickle, device, dtype), images, out, cfg, resume, quiet)
    finally:
        torch.set_num_threads(before)
