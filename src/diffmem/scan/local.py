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
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffmem.errors import DiffmemError, check
from diffmem.outputs import missing_parents, progress, write_json
from diffmem.probe.adapters import Adapter
from diffmem.probe.pooling import POOLS
from diffmem.data.images import image_key
from diffmem.probe.represent import spikiness
from diffmem.scan.inputs import Item, iter_inputs
from diffmem.stats import STATISTICS

COLUMNS = ["index", "path", "sha256", "layer", "t", "pool", "repeats", "score", *STATISTICS, "flagged",
           "label", "prompt", "error"]
_DETECTORS: dict = {}     # (id(adapter), detector folder) → loaded detector, one per process


def _detector(adapter: Adapter, path: str):
    from diffmem.detect.fusion import FusionDetector
    key = (id(adapter), path)
    if key not in _DETECTORS:
        _DETECTORS[key] = FusionDetector.load(path, adapter)
    return _DETECTORS[key]


def score_batch(adapter: Adapter, x: torch.Tensor, keys: list[str], settings: dict) -> dict[str, np.ndarray]:
    """Columns for a batch x (B, C, H, W): ``score`` and every statistic of the spikiness scan, or,
    with ``settings["detector"]``, the saved detector's ``score`` and ``flagged`` (statistics NaN)."""
    if settings.get("detector"):
        det = _detector(adapter, settings["detector"])
        s = det.score(x, keys)
        nan = np.full(len(s), np.nan)
        return {"score": s, **{k: nan for k in STATISTICS}, "flagged": (s > det.threshold_).astype(float)}
    stats = spikiness(adapter, x, keys, settings["layer"], settings["t"], settings["pool"], settings["seed"],
                      settings["repeats"], nan_ok=True)
    cols = {k: v.numpy() for k, v in stats.items()}
    return {"score": cols[settings["statistic"]], **cols, "flagged": np.full(len(x), np.nan)}


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` via a temporary file, fsync, and rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _rows_for_batch(adapter: Adapter, batch: list[tuple[Item, np.ndarray, str]], settings: dict,
                    on_error: str, batch_size: int) -> list[dict]:
    # Batches are zero-padded to batch_size: kernels are then the same for every batch, and a row's
    # score does not depend on how full its batch was (resumed scans equal uninterrupted ones).
    x = torch.from_numpy(np.stack([im for _, im, _ in batch]))
    keys = [image_key(im) for _, im, _ in batch]           # the one image identity (seeds the noise)
    pad = batch_size - len(batch)
    if pad > 0:
        x = torch.cat([x, torch.zeros(pad, *x.shape[1:])])
        keys = keys + [f"pad{i}" for i in range(pad)]
    cols = score_batch(adapter, x, keys, settings)
    rows = []
    for j, (item, _, sha) in enumerate(batch):
        vals = {k: float(v[j]) for k, v in cols.items()}
        error = None
        if not np.isfinite(vals["score"]):
            error = f"layer {settings['layer']!r}: NaN or infinite activations"
            if on_error == "fail":
                raise DiffmemError(f"{item.path}: {error}")
        rows.append(_row(item, sha, settings, vals, error))
    return rows


def _row(item: Item, sha: str | None, settings: dict, vals: dict | None, error: str | None) -> dict:
    vals = vals or {k: float("nan") for k in ("score", *STATISTICS, "flagged")}
    flagged = vals.pop("flagged")
    return {"index": item.index, "path": item.path, "sha256": sha, "layer": settings["layer"],
            "t": float(settings["t"]), "pool": settings["pool"], "repeats": settings["repeats"],
            **vals, "flagged": None if flagged != flagged else bool(flagged),
            "label": None if item.label is None else str(item.label), "prompt": item.prompt, "error": error}


def source_fingerprint(items: list[Item], source: str | os.PathLike) -> str:
    """sha256 of an input source's list of keys (its items' paths), plus an array file's bytes."""
    import hashlib
    h = hashlib.sha256("\n".join(it.path for it in items).encode())
    src = Path(source)
    if src.is_file() and src.suffix in (".npy", ".npz"):
        with open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(adapter: Adapter, items: list[Item], source, batch_size: int, threads: int,
                input_range=None) -> dict:
    """What else makes a scan's rows comparable, recorded with its settings for ``--resume``."""
    from diffmem.models import model_fingerprint
    return {"model_weights": model_fingerprint(adapter.path) if adapter.path is not None else None,
            "inputs": source_fingerprint(items, source), "n_inputs": len(items), "batch_size": batch_size,
            "threads": threads, "input_range": None if input_range is None else [float(v) for v in input_range]}


def scan_settings(adapter: Adapter, layer: str | None, t: float | None, pool: str | None, repeats: int,
                  seed: int, statistic: str = "std", detector: str | os.PathLike | None = None) -> dict:
    """Resolved, validated settings of a scan (defaults from the adapter's family). With ``detector``
    (a folder saved by ``diffmem bench``) its timestep and features replace layer/t/pool/statistic."""
    from diffmem.probe.capture import parse_layer
    if detector is not None:
        det = _detector(adapter, str(detector))
        return {"layer": "+".join(det.features_), "t": det.t_, "pool": adapter.default_pool, "repeats": 1,
                "seed": det.seed, "statistic": "fusion", "family": adapter.family, "detector": str(detector),
                "threshold": det.threshold_}
    settings = {"layer": layer or adapter.default_layer, "t": adapter.default_t if t is None else t,
                "pool": pool or adapter.default_pool, "repeats": repeats, "seed": seed, "statistic": statistic,
                "family": adapter.family}
    parse_layer(settings["layer"], adapter.denoiser)
    adapter.validate_t(settings["t"])
    check(settings["pool"] in POOLS, f"--pool {settings['pool']!r}: one of {', '.join(POOLS)}")
    check(repeats >= 1, f"--repeats {repeats}: must be >= 1")
    check(statistic in STATISTICS, f"statistic {statistic!r}: one of {', '.join(STATISTICS)}")
    return settings


def scan(adapter: Adapter, images: str | os.PathLike, out: str | os.PathLike, layer: str | None = None,
         t: float | None = None, pool: str | None = None, batch_size: int = 32, repeats: int = 1,
         seed: int = 0, on_error: str = "skip", resume: bool = False, part_size: int = 256,
         detector: str | os.PathLike | None = None, input_range=None, allow_outside: bool = False,
         quiet: bool = False) -> dict:
    """Score every input of ``images`` and write ``out/scores.parquet`` + ``out/summary.json``.

    ``parts/settings.json`` records the settings and a fingerprint of the model weights, the inputs,
    batch size and threads; ``resume`` refuses any difference, naming it."""
    check(on_error in ("skip", "fail"), f"--on-error {on_error!r}: 'skip' or 'fail'")
    check(batch_size >= 1 and part_size >= 1, "--batch-size and --part-size must be >= 1")
    settings = scan_settings(adapter, layer, t, pool, repeats, seed, detector=detector)
    items = list(iter_inputs(images, adapter.image_size, adapter.image_channels, input_range, allow_outside))
    settings.update(fingerprint(adapter, items, images, batch_size, torch.get_num_threads(), input_range))
    out = Path(out)
    parts = out / "parts"
    t0, n_new = time.perf_counter(), 0
    with committed_parts(out, settings, resume) as done:
        bar = progress(desc="scan", unit="img")
        chunk: list[Item] = []
        for item in items:
            bar.update()
            if item.index in done:
                continue
            chunk.append(item)
            if len(chunk) >= part_size:
                n_new += _commit(parts, score_items(adapter, chunk, settings, on_error, batch_size))
                chunk = []
        n_new += _commit(parts, score_items(adapter, chunk, settings, on_error, batch_size))
        bar.close()
    seconds = time.perf_counter() - t0
    return finalize(out, settings, {"model": str(getattr(adapter, "path", "")), "images": str(images),
                                    "seconds": seconds, "new_rows": n_new})


def score_items(adapter: Adapter, items: list[Item], settings: dict, on_error: str, batch_size: int) -> list[dict]:
    """Rows for ``items``: unreadable inputs become error rows (or raise with ``on_error='fail'``),
    readable ones are scored in zero-padded batches of ``batch_size``. Used by every engine."""
    rows, batch = [], []
    for item in items:
        try:
            image, sha = item.loader()
        except DiffmemError as exc:
            if on_error == "fail":
                raise
            rows.append(_row(item, None, settings, None, str(exc)))
            continue
        batch.append((item, image, sha))
        if len(batch) == batch_size:
            rows += _rows_for_batch(adapter, batch, settings, on_error, batch_size)
            batch = []
    if batch:
        rows += _rows_for_batch(adapter, batch, settings, on_error, batch_size)
    return sorted(rows, key=lambda r: r["index"])


def _commit(parts: Path, rows: list[dict]) -> int:
    """Write ``rows`` as one atomically committed part; return how many."""
    if rows:
        atomic_write_parquet(pd.DataFrame(rows, columns=COLUMNS), parts / f"part-{rows[0]['index']:09d}.parquet")
    return len(rows)


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
            raise DiffmemError(f"{parts}: holds parts of an earlier scan; pass --resume to continue it "
                               f"or choose another --out")
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


def finalize(out: Path, settings: dict, info: dict) -> dict:
    """Write ``scores.parquet`` and ``summary.json`` from the committed parts."""
    df = read_parts(out / "parts")
    atomic_write_parquet(df, out / "scores.parquet")
    ok = df[df["error"].isna()]
    s = ok["score"].astype(float)
    summary = {**info, **{k: settings.get(k) for k in ("family", "layer", "t", "pool", "repeats", "seed", "statistic",
                                                         "detector", "threshold")},
               "n_flagged": int(df["flagged"].fillna(False).astype(bool).sum()) if settings.get("detector") else None,
               "n_inputs": int(len(df)), "n_scored": int(len(ok)), "n_errors": int(df["error"].notna().sum()),
               "score_mean": float(s.mean()) if len(s) else None, "score_std": float(s.std(ddof=0)) if len(s) else None,
               "score_min": float(s.min()) if len(s) else None, "score_max": float(s.max()) if len(s) else None,
               "images_per_second": info["new_rows"] / info["seconds"] if info.get("seconds") else None}
    write_json(out / "summary.json", summary)
    return summary
