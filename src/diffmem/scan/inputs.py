"""Scan inputs: an image folder, a .npy/.npz array or a JSONL manifest, streamed one item at a time.

Each item is an :class:`Item` whose ``load()`` returns float32 (C, H, W) in [-1, 1] at the model's
size or raises :class:`DiffmemError` naming the input (corrupt, empty, wrong shape, NaN, …).
Arrays: uint8 values are 0…255; float values are taken as already in [-1, 1].
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

from diffmem.data.images import IMAGE_SUFFIXES, read_image, to_model_range
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


def item_from_record(rec: dict, size: int, channels: int) -> Item:
    """Rebuild an :class:`Item` from :meth:`Item.record` (``file.npy[i]`` paths address array rows)."""
    path = str(rec["path"])
    if path.endswith("]") and "[" in path and Path(path.rsplit("[", 1)[0]).suffix in (".npy", ".npz"):
        src, i = path.rsplit("[", 1)
        arr, _ = _open_array(Path(src))
        i = int(i[:-1])
        loader = _array_loader(arr[i], path, size, channels)
    else:
        loader = _file_loader(Path(path), size, channels)
    return Item(int(rec["index"]), path, loader, label=rec.get("label"), prompt=rec.get("prompt"))


def _file_loader(path: Path, size: int, channels: int):
    def load():
        data = path.read_bytes() if path.is_file() else b""
        sha = hashlib.sha256(data).hexdigest()
        return read_image(path, size=size, channels=channels), sha
    return load


def _array_image(arr: np.ndarray, name: str, size: int, channels: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)
    if a.ndim != 3 or a.shape[0] not in (1, 3, 4):
        raise DiffmemError(f"{name}: expected an image (H, W), (C, H, W) or (H, W, C), got shape {np.shape(arr)}")
    a = to_model_range(a) if a.dtype == np.uint8 else a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DiffmemError(f"{name}: contains NaN or infinite values")
    a = a[:3]
    if a.shape[0] != channels:
        a = a.mean(0, keepdims=True) if channels == 1 else np.repeat(a[:1], channels, 0) if a.shape[0] == 1 else a
    if a.shape[1:] != (size, size):
        a = F.interpolate(torch.from_numpy(np.ascontiguousarray(a))[None], size=(size, size), mode="bicubic",
                          align_corners=False)[0].clamp(-1, 1).numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def _array_loader(arr: np.ndarray, name: str, size: int, channels: int):
    def load():
        raw = np.ascontiguousarray(arr)
        return _array_image(raw, name, size, channels), hashlib.sha256(raw.tobytes()).hexdigest()
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


def iter_inputs(source: str | os.PathLike, size: int, channels: int) -> Iterator[Item]:
    """Stream the inputs of ``source``; validation of the source itself happens before the first item."""
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
        return (Item(i, f"{src}[{i}]", _array_loader(arr[i], f"{src}[{i}]", size, channels),
                     label=None if labels is None else labels[i].item()) for i in range(len(arr)))
    if src.suffix in (".jsonl", ".json"):
        return _manifest(src, size, channels)
    raise DiffmemError(f"{src}: IMAGES must be a folder, a .npy/.npz array or a .jsonl manifest")


def _manifest(src: Path, size: int, channels: int) -> Iterator[Item]:
    lines = src.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DiffmemError(f"{src}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise DiffmemError(f"{src}:{n}: each line needs a string 'path'")
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
