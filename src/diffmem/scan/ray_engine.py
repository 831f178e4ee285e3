"""The Ray engine: a Ray Data pipeline (input records → ``map_batches`` over a pool of model actors →
Parquet parts), on a local Ray started here or an existing cluster (``ray_address``).

Rows are computed by the same :func:`~diffmem.scan.local.score_items` as the local engine (noise
seeded per image, batches zero-padded), so both engines give identical tables for the same seed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from diffmem.errors import DiffmemError
from diffmem.scan.inputs import item_from_record, iter_inputs
from diffmem.scan.local import (COLUMNS, atomic_write_parquet, committed_parts, finalize, fingerprint,
                                scan_settings, score_items)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DiffmemError("--engine ray needs Ray Data: pip install 'diffmem[ray]'") from None
    return ray


class _ScanWorker:
    """One model per actor process, ``threads`` torch threads each (1: workers share the cores)."""

    def __init__(self, model: str, settings: dict, on_error: str, batch_size: int, allow_pickle: bool,
                 out_parts: str, threads: int, device: str = "cpu", dtype: str = "float32"):
        import torch
        torch.set_num_threads(threads)
        from diffmem.models import load_adapter
        self.adapter = load_adapter(model, allow_pickle=allow_pickle, device=device, dtype=dtype)
        self.settings, self.on_error, self.batch_size = settings, on_error, batch_size
        self.parts = Path(out_parts)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        items = [item_from_record(r, self.adapter.image_size, self.adapter.image_channels,
                                  self.settings.get("input_range")) for r in batch.to_dict("records")]
        rows = score_items(self.adapter, items, self.settings, self.on_error, self.batch_size)
        df = pd.DataFrame(rows, columns=COLUMNS)
        if len(df):  # commit this block as a part: a killed scan keeps every finished block
            atomic_write_parquet(df, self.parts / f"part-{int(df['index'].iloc[0]):09d}.parquet")
        return df[["index"]]


def scan_ray(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, layer: str | None = None,
             t: float | None = None, pool: str | None = None, batch_size: int = 32, repeats: int = 1, seed: int = 0,
             on_error: str = "skip", resume: bool = False, workers: int = 2, ray_address: str | None = None,
             allow_pickle: bool = False, part_size: int = 256, threads: int = 1, detector: str | None = None,
             device: str = "cpu", dtype: str = "float32", input_range=None, allow_outside: bool = False,
             quiet: bool = False) -> dict:
    """Scan with Ray Data; same outputs as :func:`diffmem.scan.scan`."""
    from diffmem.models import load_adapter
    ray = _import_ray()
    adapter = load_adapter(model, allow_pickle=allow_pickle, device=device, dtype=dtype)
    settings = scan_settings(adapter, layer, t, pool, repeats, seed, detector=detector)
    items = list(iter_inputs(images, adapter.image_size, adapter.image_channels, input_range, allow_outside))
    settings.update(fingerprint(adapter, items, images, batch_size, threads, input_range))
    records = [it.record() for it in items]
    out = Path(out)
    parts = out / "parts"
    t0 = time.perf_counter()
    with committed_parts(out, settings, resume) as done:
        todo = [r for r in records if r["index"] not in done]
        _run_pipeline(ray, todo, parts, model, settings, on_error, batch_size, allow_pickle, part_size, workers,
                      ray_address, threads, quiet, device=str(adapter.device), dtype=dtype)
    return finalize(out, settings, {"model": str(model), "images": str(images), "engine": "ray", "workers": workers,
                                    "seconds": time.perf_counter() - t0, "new_rows": len(todo)})


def _run_pipeline(ray, todo: list[dict], parts: Path, model, settings: dict, on_error: str, batch_size: int,
                  allow_pickle: bool, part_size: int, workers: int, ray_address: str | None, threads: int,
                  quiet: bool, device: str = "cpu", dtype: str = "float32") -> None:
    """Start (or join) Ray, score ``todo`` through the actor pool, and shut a Ray we started down."""
    started = not ray.is_initialized()
    if started:
        import logging
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    try:
        if todo:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = not quiet
            ds = ray.data.from_items(todo, override_num_blocks=max(1, -(-len(todo) // part_size)))
            ds = ds.map_batches(_ScanWorker, batch_format="pandas", batch_size=part_size, num_cpus=1,
                                concurrency=workers,
                                fn_constructor_kwargs={"model": str(model), "settings": settings,
                                                       "on_error": on_error, "batch_size": batch_size,
                                                       "allow_pickle": allow_pickle, "out_parts": str(parts),
                                                       "threads": threads, "device": device, "dtype": dtype})
            ds.materialize()
    except Exception as exc:  # Ray wraps a worker's DiffmemError: surface it as one line
        text = str(exc)
        if "DiffmemError: " not in text:
            raise
        raise DiffmemError(text.split("DiffmemError: ")[-1].splitlines()[0]) from None
    finally:
        if started:
            ray.shutdown()
