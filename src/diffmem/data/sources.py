"""Image sets: an image folder, a .npy/.npz array or a JSONL manifest, read one item at a time or whole.

Each item is an :class:`Item` whose ``load()`` returns float32 (C, H, W) in [-1, 1] at the model's
size or raises :class:`DiffmemError` naming the input (corrupt, empty, wrong shape, NaN, …).
Every item goes through the one image pipeline, :func:`diffmem.data.images.to_model_input`.
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

from diffmem.data.images import (IMAGE_SUFFIXES, array_to_model_range, load_fashion_mnist, read_image, to_model_input,
                                 to_nchw)
from diffmem.errors import DiffmemError, check


@dataclass
class Item:
    index: int
    path: str
    loader: Callable[[], tuple[np.ndarray, str]]   # → (image (C, H, W), sha256 of the source bytes)
    label: object = None
    prompt: str | None = None


def _file_loader(path: Path, size: int, channels: int, input_range=None):
    def load():
        data = path.read_bytes() if path.is_file() else b""
        sha = hashlib.sha256(data).hexdigest()
        return read_image(path, size=size, channels=channels, input_range=input_range), sha
    return load


def _array_image(arr: np.ndarray, name: str, size: int, channels: int,
                 input_range: tuple[float, float] | None = None) -> np.ndarray:
    """One array image (H, W), (C, H, W) or (H, W, C) through :func:`~diffmem.data.images.to_model_input`."""
    return to_model_input(np.asarray(arr)[None], name, size, channels, input_range)[0]


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


class Source:
    """An input source, validated once, addressed by index: ``len(source)``, ``source.item(i)``,
    ``source.items()``. :meth:`spec` is a small dict another process (a Ray actor) turns back into
    the same source with :meth:`from_spec`, so only indices need to travel. An array is memory-mapped
    (.npy) and a folder keeps only its sorted file names: memory does not grow with the inputs."""

    def __init__(self, source: str | os.PathLike, size: int, channels: int, input_range=None,
                 allow_outside: bool = False, open_at: str | None = None, _checked: bool = False):
        self.src = Path(source)                              # as given: names the inputs in every table
        src = self.real = Path(open_at) if open_at else self.src   # where the files are read
        self.size, self.channels = size, channels
        self.input_range, self.allow_outside = input_range, allow_outside
        self.labels = self.records = self.names = self.arr = None
        if not src.exists():
            raise DiffmemError(f"{src}: no such file or folder")
        if src.is_dir():
            self.kind = "folder"
            self.names = sorted(p.name for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.names:
                raise DiffmemError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        elif src.suffix in (".npy", ".npz"):
            self.kind = "array"
            self.arr, self.labels = _open_array(src)
            if self.arr.ndim not in (3, 4):
                raise DiffmemError(f"{src}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), "
                                   f"got shape {self.arr.shape}")
            to_nchw(np.asarray(self.arr[:1]), str(src))            # channels and pixels, before any work
            if not _checked:
                _check_array_source(self.arr, str(src), input_range)
            if self.labels is not None and self.labels.shape != (len(self.arr),):
                raise DiffmemError(f"{src}: 'labels' has shape {self.labels.shape}, expected ({len(self.arr)},): "
                                   f"one label per image")
        elif src.suffix in (".jsonl", ".json"):
            self.kind = "manifest"
            self.records = _manifest_records(src, allow_outside)
        else:
            raise DiffmemError(f"{src}: IMAGES must be a folder, a .npy/.npz array or a .jsonl manifest")

    def spec(self) -> dict:
        """What :meth:`from_spec` needs, with an absolute path (workers may run elsewhere)."""
        return {"source": str(self.src), "open_at": str(self.real.resolve()), "size": self.size,
                "channels": self.channels, "input_range": self.input_range, "allow_outside": self.allow_outside}

    @classmethod
    def from_spec(cls, spec: dict) -> "Source":
        """The source :meth:`spec` describes (its whole-array checks already passed)."""
        return cls(**spec, _checked=True)

    def __len__(self) -> int:
        return len(self.names if self.kind == "folder" else self.arr if self.kind == "array" else self.records)

    def item(self, i: int) -> Item:
        if self.kind == "folder":
            return Item(i, str(self.src / self.names[i]), _file_loader(self.real / self.names[i], self.size,
                                                                       self.channels, self.input_range))
        if self.kind == "array":
            name = f"{self.src}[{i}]"
            return Item(i, name, _array_loader(self.arr[i], name, self.size, self.channels, self.input_range),
                        label=None if self.labels is None else self.labels[i].item())
        rec = self.records[i]
        p = Path(rec["path"])
        prompt = rec.get("prompt")
        return Item(i, self._key(i), _file_loader(p if p.is_absolute() else self.real.parent / p, self.size,
                                                  self.channels, self.input_range), label=rec.get("label"),
                    prompt=None if prompt is None else str(prompt))

    def items(self, indices=None) -> Iterator[Item]:
        return (self.item(int(i)) for i in (range(len(self)) if indices is None else indices))

    def fingerprint(self) -> str:
        """sha256 of the inputs' keys (paths), plus an array file's bytes, read in chunks."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(((b"\n" if i else b"") + self._key(i).encode()))
        if self.kind == "array" and self.real.is_file():
            with open(self.real, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def _key(self, i: int) -> str:
        if self.kind == "folder":
            return str(self.src / self.names[i])
        if self.kind == "array":
            return f"{self.src}[{i}]"
        p = Path(self.records[i]["path"])
        return str(p if p.is_absolute() else self.src.parent / p)


def iter_inputs(source: str | os.PathLike, size: int, channels: int, input_range=None,
                allow_outside: bool = False) -> Iterator[Item]:
    """Stream the inputs of ``source``; validation of the source itself happens before the first item.

    ``input_range`` (lo, hi) rescales array values (see :func:`diffmem.data.images.array_to_model_range`);
    manifest paths resolve relative to the manifest and may not leave its folder unless ``allow_outside``."""
    return Source(source, size, channels, input_range, allow_outside).items()


def _manifest_records(src: Path, allow_outside: bool = False) -> list[dict]:
    """The validated ``{"path", "label"?, "prompt"?}`` lines of a JSONL manifest."""
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
                               f"allow_outside=True to read it")
        records.append({k: rec.get(k) for k in ("path", "label", "prompt")})
    if not records:
        raise DiffmemError(f"{src}: empty manifest")
    return records


def load_images(source: str | os.PathLike, size: int | None = None, channels: int | None = None,
                limit: int | None = None, input_range: tuple[float, float] | None = None,
                allow_outside: bool = False) -> np.ndarray:
    """A whole image set (N, C, H, W) in [-1, 1]: ``"fashion-mnist"`` (``:test`` for the test split),
    or any :class:`Source` (folder, .npy/.npz, manifest), every image through
    :func:`~diffmem.data.images.to_model_input`. ``size`` None keeps the images' own (they must agree);
    ``channels`` None keeps each image's own (RGBA → RGB); ``limit`` keeps the first images."""
    src = str(source)
    if src in ("fashion-mnist", "fashion-mnist:train", "fashion-mnist:test"):
        x, _ = load_fashion_mnist("test" if src.endswith(":test") else "train")
        return to_model_input(x[:limit] if limit else x, src, size, channels)
    items = Source(source, size, channels, input_range, allow_outside)
    images = [item.loader()[0] for item in items.items(range(min(len(items), limit or len(items))))]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise DiffmemError(f"{src}: images of different shapes ({', '.join('x'.join(map(str, s)) for s in shapes)}); "
                           f"give a size to resize them")
    return np.stack(images)


def read_inputs(source: str | os.PathLike, size: int, channels: int, input_range=None, allow_outside: bool = False,
                what: str = "images") -> tuple[torch.Tensor, list[str], list[str | None]]:
    """Every input of ``source`` (a folder, array or manifest) at once: images (N, C, H, W) in [-1, 1],
    their paths and their manifest prompts (None where absent); a bad input raises, naming itself."""
    xs, paths, prompts = [], [], []
    for item in iter_inputs(source, size, channels, input_range, allow_outside):
        image, _ = item.loader()
        xs.append(torch.from_numpy(image))
        paths.append(item.path)
        prompts.append(item.prompt)
    check(len(xs) > 0, f"{what}={source}: no images")
    return torch.stack(xs), paths, prompts

