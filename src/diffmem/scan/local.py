"""The local scan engine: stream inputs, score in batches, commit Parquet parts atomically, resume.

Layout of ``out``: ``parts/part-<first index>.parquet`` (each written to a temporary name, fsynced
and renamed, so a part is either whole or absent), then ``scores.parquet`` (all parts in input
order) and ``summary.json``. Inputs stream: at most one part of images is in memory. With
``resume`` the inputs whose index already sits in a committed part are skipped (an input's index
is its position in the sorted folder, array or manifest), so a scan killed at any moment and
resumed gives the same table as an uninterrupted one: every row's noise is seeded by the image's
hash and batches are zero-padded, so a row never depends on which batch it landed in. Settings
are stored in ``parts/settings.json``; resuming with different settings is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from diffmem.errors import DiffmemError, check
from diffmem.outputs import missing_parents, progress, write_json
from diffmem.probe.adapters import Adapter
from diffmem.probe.pooling import POOLS
from diffmem.data.images import image_key
from diffmem.probe.represent import spikiness
from diffmem.data.sources import Item, Source
from diffmem.stats import STATISTICS

SCHEMA = pa.schema([("index", pa.int64()), ("path", pa.string()), ("sha256", pa.string()), ("layer", pa.string()),
                    ("t", pa.float64()), ("pool", pa.string()), ("repeats", pa.int64()), ("score", pa.float64()),
                    *((k, pa.float64()) for k in STATISTICS), ("flagged", pa.bool_()), ("label", pa.string()),
                    ("prompt", pa.string()), ("error", pa.string())])
COLUMNS = SCHEMA.names
_DETECTORS: dict = {}     # (id(adapter), detector folder) → loaded detector, one per process


def _detector(adapter: Adapter, path: str, allow_other_model: bool = False):
    from diffmem.detect.fusion import FusionDetector
    key = (id(adapter), path)
    if key not in _DETECTORS:
        _DETECTORS[key] = FusionDetector.load(path, adapter, allow_other_model)
    return _DETECTORS[key]


def score_batch(adapter: Adapter, x: torch.Tensor, keys: list[str], settings: dict) -> dict[str, np.ndarray]:
    """Columns for a batch x (B, C, H, W): ``score`` and every statistic of the spikiness scan, or,
    with ``settings["detector"]``, the saved detector's ``score`` and ``flagged`` (statistics NaN)."""
    if settings.get("detector"):
        det = _detector(adapter, settings["detector"], settings.get("allow_other_model", False))
        s = det.score(x, keys)
        nan = np.full(len(s), np.nan)
        return {"score": s, **{k: nan for k in STATISTICS}, "flagged": (s > det.threshold_).astype(float)}
    stats = spikiness(adapter, x, keys, settings["layer"], settings["t"], settings["pool"], settings["seed"],
                      settings["repeats"])
    cols = {k: v.numpy() for k, v in stats.items()}
    return {"score": cols[settings["statistic"]], **cols, "flagged": np.full(len(x), np.nan)}


def atomic_write_parquet(data: pa.Table | pd.DataFrame, path: Path) -> None:
    """Write a table to ``path`` via a temporary file, fsync, and rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, pa.Table):
        pq.write_table(data, tmp)
    else:
        data.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _batch_columns(adapter: Adapter, batch: list[tuple[Item, np.ndarray, str]], settings: dict,
                   on_error: str, batch_size: int) -> dict[str, list | np.ndarray]:
    """Columns of one scored batch (no per-row objects). Batches are zero-padded to ``batch_size``:
    kernels are then the same for every batch, and a row's score does not depend on how full its
    batch was (resumed scans equal uninterrupted ones)."""
    n = len(batch)
    x = torch.from_numpy(np.stack([im for _, im, _ in batch]))                  # (n, C, H, W)
    keys = [image_key(im) for _, im, _ in batch]           # the one image identity (seeds the noise)
    if batch_size > n:
        x = torch.cat([x, torch.zeros(batch_size - n, *x.shape[1:])])           # (batch_size, C, H, W)
        keys = keys + [f"pad{i}" for i in range(batch_size - n)]
    cols = {k: np.asarray(v, dtype=np.float64)[:n] for k, v in score_batch(adapter, x, keys, settings).items()}
    bad = ~np.isfinite(cols["score"])
    error = f"layer {settings['layer']!r}: NaN or infinite activations"
    if on_error == "fail" and bad.any():
        raise DiffmemError(f"{batch[int(np.argmax(bad))][0].path}: {error}")
    return {"index": [it.index for it, _, _ in batch], "path": [it.path for it, _, _ in batch],
            "sha256": [sha for _, _, sha in batch], **cols,
            "label": [None if it.label is None else str(it.label) for it, _, _ in batch],
            "prompt": [it.prompt for it, _, _ in batch], "error": [error if b else None for b in bad]}


def _error_columns(items: list[Item], errors: list[str]) -> dict[str, list | np.ndarray]:
    nan = np.full(len(items), np.nan)
    return {"index": [it.index for it in items], "path": [it.path for it in items], "sha256": [None] * len(items),
            **{k: nan for k in ("score", *STATISTICS, "flagged")},
            "label": [None if it.label is None else str(it.label) for it in items],
            "prompt": [it.prompt for it in items], "error": errors}


def _table(chunks: list[dict], settings: dict) -> pa.Table:
    """One Arrow table (:data:`SCHEMA`, sorted by index) from column chunks."""
    if not chunks:
        return SCHEMA.empty_table()
    cat = {k: [v for c in chunks for v in c[k]] if isinstance(chunks[0][k], list)
           else np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    n = len(cat["index"])
    flagged = np.asarray(cat.pop("flagged"), dtype=np.float64)
    cols = {**cat, "layer": [settings["layer"]] * n, "t": np.full(n, float(settings["t"])),
            "pool": [settings["pool"]] * n, "repeats": np.full(n, settings["repeats"], dtype=np.int64),
            "flagged": pa.array(flagged > 0.5, mask=np.isnan(flagged))}
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) if not isinstance(cols[f.name], pa.Array)
                     else cols[f.name] for f in SCHEMA}, schema=SCHEMA).sort_by("index")


def fingerprint(adapter: Adapter, source: Source, batch_size: int, threads: int, input_range=None) -> dict:
    """What else makes a scan's rows comparable, recorded with its settings for ``--resume``."""
    from diffmem.models import model_fingerprint
    return {"model_weights": model_fingerprint(adapter.path) if adapter.path is not None else None,
            "inputs": source.fingerprint(), "n_inputs": len(source), "batch_size": batch_size,
            "threads": threads, "input_range": None if input_range is None else [float(v) for v in input_range]}


def scan_settings(adapter: Adapter, cfg: "ScanConfig", statistic: str = "std") -> dict:
    """Resolved, validated settings of a scan (defaults from the adapter's family). With ``cfg.detector``
    (a folder saved by ``diffmem bench``) its timestep and features replace layer/t/pool/statistic."""
    from diffmem.probe.capture import parse_layer
    layer, t, pool, repeats, seed = cfg.layer, cfg.t, cfg.pool, cfg.repeats, cfg.seed
    detector, allow_other_model = cfg.detector, cfg.allow_other_model
    if detector is not None:
        det = _detector(adapter, str(detector), allow_other_model)
        return {"layer": "+".join(det.features_), "t": det.t_, "pool": adapter.default_pool, "repeats": 1,
                "seed": det.seed, "statistic": "fusion", "family": adapter.family, "detector": str(detector),
                "threshold": det.threshold_, "allow_other_model": allow_other_model}
    settings = {"layer": layer or adapter.default_layer, "t": adapter.default_t if t is None else t,
                "pool": pool or adapter.default_pool, "repeats": repeats, "seed": seed, "statistic": statistic,
                "family": adapter.family}
    parse_layer(settings["layer"], adapter.denoiser)
    adapter.validate_t(settings["t"])
    check(settings["pool"] in POOLS, f"pool={settings['pool']!r}: one of {', '.join(POOLS)}")
    check(repeats >= 1, f"repeats={repeats}: must be >= 1")
    check(statistic in STATISTICS, f"statistic {statistic!r}: one of {', '.join(STATISTICS)}")
    return settings


def batch_cap(batch_size: int, part_size: int, n_inputs: int) -> int:
    """The batch scans pad to: at most a part and at most the inputs (a huge --batch-size is capped
    before anything is allocated, not padded to)."""
    return max(1, min(batch_size, part_size, n_inputs))


@dataclass(frozen=True)
class ScanConfig:
    """What a scan computes, whatever the engine: ``layer``, ``t``, ``pool`` (None: the family's
    recipe), noise ``repeats`` and ``seed``, a saved ``detector`` folder instead (its t and features),
    ``batch_size`` and ``part_size`` (inputs per committed Parquet part), ``on_error`` ('skip': an
    error row; 'fail'), ``input_range`` (lo, hi) of arrays, ``allow_outside`` (manifest paths) and
    ``allow_other_model`` (apply a detector fitted on other weights)."""

    layer: str | None = None
    t: float | None = None
    pool: str | None = None
    batch_size: int = 32
    repeats: int = 1
    seed: int = 0
    on_error: str = "skip"
    part_size: int = 256
    detector: str | None = None
    input_range: tuple[float, float] | None = None
    allow_outside: bool = False
    allow_other_model: bool = False

    def __post_init__(self):
        check(self.on_error in ("skip", "fail"), f"on_error={self.on_error!r}: 'skip' or 'fail'")
        check(self.batch_size >= 1 and self.part_size >= 1, f"batch_size={self.batch_size}, part_size={self.part_size}: both must be >= 1")


def prepare(adapter: Adapter, images: str | os.PathLike, cfg: ScanConfig, threads: int) -> tuple[dict, Source, int]:
    """Every engine's set-up, before any work: (the resolved settings with their resume fingerprint,
    the validated input source, the batch inputs are padded to)."""
    settings = scan_settings(adapter, cfg)
    source = Source(images, adapter.image_size, adapter.image_channels, cfg.input_range, cfg.allow_outside)
    batch_size = batch_cap(cfg.batch_size, cfg.part_size, len(source))
    settings.update(fingerprint(adapter, source, batch_size, threads, cfg.input_range))
    return settings, source, batch_size


def scan(adapter: Adapter, images: str | os.PathLike, out: str | os.PathLike, cfg: ScanConfig = ScanConfig(),
         resume: bool = False, quiet: bool = False) -> dict:
    """Score every input of ``images`` and write ``out/scores.parquet`` + ``out/summary.json``.

    ``parts/settings.json`` records the settings and a fingerprint of the model weights, the inputs,
    batch size and threads; ``resume`` refuses any difference, naming it."""
    settings, source, batch_size = prepare(adapter, images, cfg, torch.get_num_threads())
    out = Path(out)
    parts = out / "parts"
    t0, n_new = time.perf_counter(), 0
    with committed_parts(out, settings, resume) as done:
        todo = np.setdiff1d(np.arange(len(source)), np.fromiter(done, np.int64, len(done)))   # (n_todo,)
        bar = progress(total=len(todo), desc="scan", unit="img")
        for k in range(0, len(todo), cfg.part_size):
            chunk = todo[k:k + cfg.part_size]
            n_new += _commit(parts, score_items(adapter, source.items(chunk), settings, cfg.on_error, batch_size))
            bar.update(len(chunk))
        bar.close()
    seconds = time.perf_counter() - t0
    return finalize(out, settings, {"model": str(getattr(adapter, "path", "")), "images": str(images),
                                    "seconds": seconds, "new_rows": n_new})


def score_items(adapter: Adapter, items: Iterable[Item], settings: dict, on_error: str, batch_size: int) -> pa.Table:
    """The rows of ``items`` as an Arrow table: unreadable inputs become error rows (or raise with
    ``on_error='fail'``), readable ones are scored in zero-padded batches of ``batch_size``. Used by
    every engine."""
    chunks, batch, failed, errors = [], [], [], []
    for item in items:
        try:
            image, sha = item.loader()
        except DiffmemError as exc:
            if on_error == "fail":
                raise
            failed.append(item)
            errors.append(str(exc))
            continue
        batch.append((item, image, sha))
        if len(batch) == batch_size:
            chunks.append(_batch_columns(adapter, batch, settings, on_error, batch_size))
            batch = []
    if batch:
        chunks.append(_batch_columns(adapter, batch, settings, on_error, batch_size))
    if failed:
        chunks.append(_error_columns(failed, errors))
    return _table(chunks, settings)


def _commit(parts: Path, table: pa.Table) -> int:
    """Write ``table`` as one atomically committed part named by its first index; return its rows."""
    if table.num_rows:
        atomic_write_parquet(table, parts / f"part-{table['index'][0].as_py():09d}.parquet")
    return table.num_rows


@contextlib.contextmanager
def committed_parts(out: Path, settings: dict, resume: bool):
    """Yield the indices already committed under ``out/parts``. If the block fails before any part
    was ever committed, the folders it created are removed again (nothing written half-way);
    committed parts are kept for ``--resume``."""
    created = missing_parents(out / "parts")
    done = _prepare_parts(out / "parts", settings, resume)
    try:
        yield done
    except BaseException:
        if not any((out / "parts").glob("*.parquet")):
            if created:
                shutil.rmtree(created[-1], ignore_errors=True)     # the outermost folder this scan made
        raise


def _prepare_parts(parts: Path, settings: dict, resume: bool) -> set:
    """Create ``parts`` (or reuse it with ``resume``); return the input indices already committed."""
    record = parts / "settings.json"
    if parts.exists() and any(parts.glob("*.parquet")):
        if not resume:
            raise DiffmemError(f"{parts}: holds parts of an earlier scan; pass resume=True to continue it "
                               f"or write to another folder")
        old = json.loads(record.read_text()) if record.exists() else {}
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise DiffmemError(f"{parts}: cannot resume: {k} differs (was {old.get(k)!r}, now {settings.get(k)!r})"
                               + (f"; also {', '.join(diff[1:])}" if diff[1:] else ""))
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob(".*.tmp"):
        stale.unlink()
    write_json(record, settings)
    done: set[int] = set()
    for f in sorted(parts.glob("*.parquet")):
        done.update(pd.read_parquet(f, columns=["index"])["index"].tolist())
    return done


def read_parts(parts: Path) -> pd.DataFrame:
    """All committed parts, in input order, one row per input (latest part wins on a repeat)."""
    frames = [pd.read_parquet(f) for f in sorted(parts.glob("*.parquet"))]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("index", keep="last").sort_values("index").reset_index(drop=True)


def _ordered_parts(parts: Path) -> list[Path] | None:
    """The part files in input order when their index ranges neither overlap nor interleave, else None."""
    files = sorted(parts.glob("*.parquet"))
    last = -1
    for f in files:
        idx = pq.read_table(f, columns=["index"])["index"].to_numpy()
        if len(idx) and idx.min() <= last:
            return None
        last = int(idx.max()) if len(idx) else last
    return files


class _Moments:
    """Streaming count, mean, M2, min, max of scores (parallel-combine formula)."""

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, 0.0, 0.0, np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        n, mean = len(x), float(x.mean())
        delta, total = mean - self.mean, self.n + n
        self.m2 += float(((x - mean) ** 2).sum()) + delta ** 2 * self.n * n / total
        self.mean += delta * n / total
        self.n, self.lo, self.hi = total, min(self.lo, float(x.min())), max(self.hi, float(x.max()))


def finalize(out: Path, settings: dict, info: dict) -> dict:
    """Write ``scores.parquet`` (streamed part by part: memory does not grow with the scan) and
    ``summary.json`` from the committed parts."""
    files = _ordered_parts(out / "parts")
    tables = (pq.read_table(f) for f in files) if files is not None else [
        pa.Table.from_pandas(read_parts(out / "parts"), schema=SCHEMA, preserve_index=False)]
    moments, n_rows, n_err, n_flag = _Moments(), 0, 0, 0
    tmp = out / f".scores.parquet.{os.getpid()}.tmp"
    with pq.ParquetWriter(tmp, SCHEMA) as writer:
        for table in tables:
            table = table.cast(SCHEMA)          # parts of older versions may hold all-null columns
            writer.write_table(table)
            err = table["error"].is_valid().to_numpy(zero_copy_only=False)
            n_rows, n_err = n_rows + table.num_rows, n_err + int(err.sum())
            n_flag += int(table["flagged"].fill_null(False).to_numpy(zero_copy_only=False).sum())
            moments.add(table["score"].to_numpy(zero_copy_only=False)[~err].astype(float))
    os.replace(tmp, out / "scores.parquet")
    ok = moments.n > 0
    summary = {**info, **{k: settings.get(k) for k in ("family", "layer", "t", "pool", "repeats", "seed", "statistic",
                                                         "detector", "threshold")},
               "n_flagged": n_flag if settings.get("detector") else None,
               "n_inputs": n_rows, "n_scored": moments.n, "n_errors": n_err,
               "score_mean": moments.mean if ok else None,
               "score_std": float(np.sqrt(moments.m2 / moments.n)) if ok else None,
               "score_min": moments.lo if ok else None, "score_max": moments.hi if ok else None,
               "images_per_second": info["new_rows"] / info["seconds"] if info.get("seconds") else None}
    write_json(out / "summary.json", summary)
    return summary
