"""Scan inputs: an image folder, a .npy/.npz array or a JSONL manifest, streamed one item at a time.

Each item is an :class:`Item` whose ``load()`` returns float32 (C, H, W) in [-1, 1] at the model's
size or raises :class:`DiffmemError` naming the input (corrupt, empty, wrong shape, NaN, …).
Arrays follow the input policy of :func:`diffmem.data.images.array_to_model_range`: uint8 is
0…255, uint16 0…65535, floats must lie in [-1, 1] (``--input-range LO,HI`` rescales); anything else
is an error naming the input.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from diffmem.data.images import IMAGE_SUFFIXES, array_to_model_range, read_image
from diffmem.errors import DiffmemError


@dataclass
class Item:
    index: int
    path: str
    loader: Callable[[], tuple[np.ndarray, str]]   # → (image (C, H, W), sha256 of the source bytes)
    label: object = None
    prompt: str | None = None

    def record(self) -> dict:
        """A plain description another process can rebuild with :func:`item_from_record`."""
        return {"index": self.index, "path": self.path, "label": None if self.label is None else str(self.label),
                "prompt": self.prompt}


def item_from_record(rec: dict, size: int, channels: int, input_range=None) -> Item:
    """Rebuild an :class:`Item` from :meth:`Item.record` (``file.npy[i]`` paths address array rows)."""
    path = str(rec["path"])
    if path.endswith("]") and "[" in path and Path(path.rsplit("[", 1)[0]).suffix in (".npy", ".npz"):
        src, i = path.rsplit("[", 1)
        arr, _ = _open_array(Path(src))
        i = int(i[:-1])
        loader = _array_loader(arr[i], path, size, channels, input_range)
    else:
        loader = _file_loader(Path(path), size, channels)
    return Item(int(rec["index"]), path, loader, label=rec.get("label"), prompt=rec.get("prompt"))


def _file_loader(path: Path, size: int, channels: int):
    def load():
        data = path.read_bytes() if path.is_file() else b""
        sha = hashlib.sha256(data).hexdigest()
        return read_image(path, size=size, channels=channels), sha
    return load


def _array_image(arr: np.ndarray, name: str, size: int, channels: int,
                 input_range: tuple[float, float] | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)
    if a.ndim != 3 or a.shape[0] not in (1, 3, 4):
        raise DiffmemError(f"{name}: expected an image (H, W), (C, H, W) or (H, W, C), got shape {np.shape(arr)}")
    a = array_to_model_range(a, name, input_range)[:3]
    if a.shape[0] != channels:
        a = a.mean(0, keepdims=True) if channels == 1 else np.repeat(a[:1], channels, 0) if a.shape[0] == 1 else a
    if a.shape[1:] != (size, size):
        a = F.interpolate(torch.from_numpy(np.ascontiguousarray(a))[None], size=(size, size), mode="bicubic",
                          align_corners=False)[0].clamp(-1, 1).numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def _array_loader(arr: np.ndarray, name: str, size: int, channels: int, input_range=None):
    def load():
        raw = np.ascontiguousarray(arr)
        return _array_image(raw, name, size, channels, input_range), hashlib.sha256(raw.tobytes()).hexdigest()
    return load


def _open_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        z = np.load(path, allow_pickle=False)
        keys = list(z.files)
        key = "images" if "images" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise DiffmemError(f"{path}: .npz needs an 'images' array (has {', '.join(keys)})")
        return z[key], (z["labels"] if "labels" in keys else None)
    except (ValueError, OSError, EOFError) as exc:
        raise DiffmemError(f"{path}: not a readable array ({exc})") from None


def _check_array_source(arr: np.ndarray, name: str, input_range, chunk: int = 4096) -> None:
    """The input policy applied to a whole array before any work: its dtype, and (for floats
    without ``input_range``) its value range, read in chunks so a memmap is never loaded whole."""
    array_to_model_range(np.asarray(arr[:1]), name, input_range)          # dtype errors
    if input_range is None and arr.dtype.kind == "f":
        for i in range(0, len(arr), chunk):
            array_to_model_range(np.asarray(arr[i:i + chunk]), name, None)


def iter_inputs(source: str | os.PathLike, size: int, channels: int, input_range=None,
                allow_outside: bool = False) -> Iterator[Item]:
    """Stream the inputs of ``source``; validation of the source itself happens before the first item.

    ``input_range`` (lo, hi) rescales array values (see :func:`diffmem.data.images.array_to_model_range`);
    manifest paths resolve relative to the manifest and may not leave its folder unless ``allow_outside``."""
    src = Path(source)
    if not src.exists():
        raise DiffmemError(f"{src}: no such file or folder")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DiffmemError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return (Item(i, str(p), _file_loader(p, size, channels)) for i, p in enumerate(files))
    if src.suffix in (".npy", ".npz"):
        arr, labels = _open_array(src)
        if arr.ndim not in (3, 4) or len(arr) == 0:
            raise DiffmemError(f"{src}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), "
                               f"got shape {arr.shape}")
        _check_array_source(arr, str(src), input_range)
        if labels is not None and labels.shape != (len(arr),):
            raise DiffmemError(f"{src}: 'labels' has shape {labels.shape}, expected ({len(arr)},): one label per image")
        return (Item(i, f"{src}[{i}]", _array_loader(arr[i], f"{src}[{i}]", size, channels, input_range),
                     label=None if labels is None else labels[i].item()) for i in range(len(arr)))
    if src.suffix in (".jsonl", ".json"):
        return _manifest(src, size, channels, allow_outside)
    raise DiffmemError(f"{src}: IMAGES must be a folder, a .npy/.npz array or a .jsonl manifest")


def _manifest(src: Path, size: int, channels: int, allow_outside: bool = False) -> Iterator[Item]:
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffmemError(f"{src}: unreadable manifest ({type(exc).__name__})") from None
    home = src.parent.resolve()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DiffmemError(f"{src}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not rec["path"]:
            raise DiffmemError(f"{src}:{n}: each line needs a non-empty string 'path'")
        target = (src.parent / rec["path"]).resolve()
        if not allow_outside and not target.is_relative_to(home):
            raise DiffmemError(f"{src}:{n}: path {rec['path']!r} leaves the manifest's folder; pass "
                               f"--allow-outside to read it")
        records.append(rec)
    if not records:
        raise DiffmemError(f"{src}: empty manifest")
    def item(i: int, rec: dict) -> Item:
        p = Path(rec["path"])
        p = p if p.is_absolute() else src.parent / p
        prompt = rec.get("prompt")
        return Item(i, str(p), _file_loader(p, size, channels), label=rec.get("label"),
                    prompt=None if prompt is None else str(prompt))
    return (item(i, rec) for i, rec in enumerate(records))
