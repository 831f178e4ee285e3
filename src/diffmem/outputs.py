"""Output folders written all-or-nothing, JSON with stable keys, and progress bars."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from diffmem.errors import DiffmemError


@contextlib.contextmanager
def output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder whose files land in ``out`` only if the block succeeds.

    Files are written into a hidden sibling folder; on success each is moved into ``out``
    (created if missing, other files there are kept); on any error the staging folder is
    removed, so a failed command leaves nothing half-written.
    """
    check_out(out)
    out = Path(out)
    parent = out.resolve().parent
    created = missing_parents(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    ok = False
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for item in sorted(stage.rglob("*")):
            target = out / item.relative_to(stage)
            if item.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.replace(item, target)
        ok = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not ok:
            remove_empty(created)


def missing_parents(folder: Path) -> list[Path]:
    """The folders that ``folder.mkdir(parents=True)`` would create, deepest first."""
    out, p = [], Path(folder).resolve()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def remove_empty(folders: list[Path]) -> None:
    """Remove the given folders (deepest first) where they are empty: a failed command leaves none behind."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            break


def check_out(out: str | os.PathLike | None) -> None:
    """Validate ``--out`` before any work: not an existing file, and its nearest existing ancestor
    a writable folder."""
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiffmemError(f"out={out}: exists and is not a folder")
    probe = out if out.exists() else out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise DiffmemError(f"out={out}: {probe} is not a writable folder")


def jsonable(obj: Any) -> Any:
    """Make numpy/torch scalars JSON-safe; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (keys kept in insertion order) and return the path. The file is
    replaced atomically (a sibling temporary file, then a rename), so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into one clear error."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffmemError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffmemError(f"{path}: not valid JSON ({exc})") from None


_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (the CLI's ``--quiet``)."""
    global _QUIET
    _QUIET = bool(quiet)


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """A tqdm progress bar on stderr that honours :func:`set_quiet`."""
    disable = kwargs.pop("disable", False) or _QUIET
    return tqdm(iterable, disable=disable, dynamic_ncols=True, mininterval=0.5, leave=False, **kwargs)


def write_pngs(images, folder: Path, names: Iterable[str] | None = None) -> list[str]:
    """Images (N, C, H, W) in [-1, 1] as 8-bit PNGs (gray or RGB) in ``folder`` (created), named
    ``NNNNN.png`` unless ``names``; returns the file names."""
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{j:05d}.png" for j in range(len(images))] if names is None else list(names)
    for im, name in zip(images, names):
        px = ((im + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)).save(folder / name)
    return names
