"""The Ray engine: Ray Data over a pool of model actors, on a local Ray started here or a cluster.

Only input *indices* travel to the actors, as Arrow int64 blocks of ``part_size`` rows; each actor
loads the model once, rebuilds the input source from its small spec (memory-mapped arrays, file
names) and reads its own images, with one torch thread (``threads``). Results come back to the
driver as Arrow tables (numeric columns, no per-row objects), and the driver commits each as a
Parquet part as it arrives, so a killed driver keeps every finished part for ``--resume`` and
workers need no shared output folder. Ray re-runs the tasks of a lost node (actors restart,
``max_restarts=-1``). Rows are computed by the same :func:`~diffmem.scan.local.score_items` as the
local engine (noise seeded per image, batches zero-padded), so both give the same table.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.errors import DiffmemError, check
from diffmem.outputs import progress
from diffmem.data.sources import Source
from diffmem.models.load import LoadOptions
from diffmem.scan.local import ScanConfig, _commit, committed_parts, finalize, prepare, score_items


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DiffmemError("engine='ray' needs Ray Data: pip install 'diffmem[ray]'") from None
    return ray


class _ScanWorker:
    """One model per actor process, ``threads`` torch threads; scores a block of input indices."""

    def __init__(self, model: str, settings: dict, spec: dict, on_error: str, batch_size: int, allow_pickle: bool,
                 threads: int, device: str = "cpu", dtype: str = "float32"):
        import torch
        torch.set_num_threads(threads)
        from diffmem.models import load_adapter
        self.adapter = load_adapter(model, allow_pickle=allow_pickle, device=device, dtype=dtype)
        self.source = Source.from_spec(spec)
        self.settings, self.on_error, self.batch_size = settings, on_error, batch_size

    def __call__(self, batch: dict):
        return score_items(self.adapter, self.source.items(batch["index"]), self.settings, self.on_error,
                           self.batch_size)


@dataclass(frozen=True)
class RayConfig:
    """The Ray engine's own settings: ``workers`` model actors of ``threads`` torch threads each,
    ``ray_address`` (an existing cluster; None starts a local Ray), ``gpus_per_worker`` (> 0: each
    actor's model runs on cuda unless the device says otherwise)."""

    workers: int = 2
    threads: int = 1
    ray_address: str | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self):
        check(self.workers >= 1 and self.threads >= 1, f"workers={self.workers}, threads={self.threads}: both must be >= 1")
        check(self.gpus_per_worker >= 0, f"gpus_per_worker={self.gpus_per_worker}: must be >= 0")


def scan_ray(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
             cfg: ScanConfig = ScanConfig(), engine: RayConfig = RayConfig(), load: LoadOptions = LoadOptions(),
             resume: bool = False, quiet: bool = False) -> dict:
    """Scan with Ray Data; same outputs as :func:`diffmem.scan.local.scan`, plus ``startup_seconds``
    (starting or joining Ray)."""
    from diffmem.models import load_adapter
    ray = _import_ray()
    adapter = load_adapter(model, allow_pickle=load.allow_pickle, device="cpu", dtype=load.dtype)   # settings only
    settings, source, batch_size = prepare(adapter, images, cfg, engine.threads)
    worker_device = ("cuda" if engine.gpus_per_worker else "cpu") if load.device == "auto" else load.device
    out = Path(out)
    t0 = time.perf_counter()
    with committed_parts(out, settings, resume) as done:
        todo = np.setdiff1d(np.arange(len(source)), np.fromiter(done, np.int64, len(done)))   # (n_todo,)
        started, startup = _start(ray, engine.ray_address, engine.workers)
        try:
            if len(todo):
                _run_pipeline(ray, todo, out / "parts", dict(
                    model=str(Path(model).resolve()), settings=settings, spec=source.spec(), on_error=cfg.on_error,
                    batch_size=batch_size, allow_pickle=load.allow_pickle, threads=engine.threads, device=worker_device,
                    dtype=load.dtype), cfg.part_size, engine.workers, engine.gpus_per_worker, quiet)
        finally:
            if started:
                ray.shutdown()
    return finalize(out, settings, {"model": str(model), "images": str(images), "engine": "ray", "workers": engine.workers,
                                    "seconds": time.perf_counter() - t0, "startup_seconds": startup,
                                    "new_rows": int(len(todo))})


def _start(ray, ray_address: str | None, workers: int) -> tuple[bool, float]:
    """Start a local Ray (``workers`` CPUs) or join ``ray_address``; (whether we started it, seconds)."""
    t0 = time.perf_counter()
    if ray.is_initialized():
        return False, 0.0
    import logging
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    return True, time.perf_counter() - t0


def _run_pipeline(ray, todo: np.ndarray, parts: Path, worker_kwargs: dict, part_size: int, workers: int,
                  gpus_per_worker: float, quiet: bool) -> None:
    """Score ``todo`` (input indices) through the actor pool, committing each returned block as a part."""
    import pyarrow as pa
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    blocks = [pa.table({"index": pa.array(todo[i:i + part_size], pa.int64())}) for i in range(0, len(todo), part_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _ScanWorker, batch_format="numpy", batch_size=part_size, concurrency=workers,
        num_cpus=0 if gpus_per_worker else 1, num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs=worker_kwargs)          # DataContext spreads actors over nodes by default
    bar = progress(total=len(todo), desc=f"scan (ray, {workers} workers)", unit="img", disable=quiet)
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            bar.update(_commit(parts, table))
    except Exception as exc:  # Ray wraps a worker's DiffmemError: surface it as one line
        text = str(exc)
        if "DiffmemError: " not in text:
            raise
        raise DiffmemError(text.split("DiffmemError: ")[-1].splitlines()[0]) from None
    finally:
        bar.close()
