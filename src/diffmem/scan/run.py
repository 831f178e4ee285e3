"""One entry point for every scan engine: ``run(model, images, out, ScanConfig(...), Engine(...))``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from diffmem.errors import check
from diffmem.models.load import LoadOptions
from diffmem.scan.local import ScanConfig, scan
from diffmem.scan.ray_engine import RayConfig, scan_ray

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """Where a scan runs: ``kind`` ``local`` (this process, ``threads`` torch threads, default all) or
    ``ray`` (a Ray Data pipeline, ``ray``: its :class:`RayConfig`)."""

    kind: str = "local"
    threads: int | None = None
    ray: RayConfig = RayConfig()

    def __post_init__(self):
        check(self.kind in ENGINES, f"engine={self.kind!r}: one of {', '.join(ENGINES)}")


def run(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, cfg: ScanConfig = ScanConfig(),
        engine: Engine = Engine(), load: LoadOptions = LoadOptions(), resume: bool = False, quiet: bool = False) -> dict:
    """Scan ``images`` with the model folder ``model`` into ``out`` (``scores.parquet``, ``summary.json``).

    The local and the Ray engine give bit-identical tables when their thread counts per process match
    (kernels reduce in a thread-count-dependent order)."""
    if engine.kind == "ray":
        return scan_ray(model, images, out, cfg, engine.ray, load, resume, quiet)
    before = torch.get_num_threads()
    torch.set_num_threads(engine.threads or before)
    try:
        return scan(load.load(model), images, out, cfg, resume, quiet)
    finally:
        torch.set_num_threads(before)
