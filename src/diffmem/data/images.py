"""Readers for image data sets. Images come out as float32 in [-1, 1], shape (N, C, H, W)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from diffmem.errors import DiffmemError

FASHION_MNIST_DIR = Path(os.environ.get("DIFFMEM_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # refuse decompression bombs rather than exhausting memory


def resize_area(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) area-resized to size × size (unchanged when already that size)."""
    return x if x.shape[-1] == size and x.shape[-2] == size else F.interpolate(x, size=(size, size), mode="area")


def image_key(image) -> str:
    """The identity of one model-input image (C, H, W) in [-1, 1]: sha256 of its float32 bytes.

    It seeds the image's noise everywhere (scan, detectors, bench, steer), so the CLI and the
    Python API give the same score for the same image."""
    import hashlib
    a = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


FLOAT_TOLERANCE = 1e-3      # float inputs may overshoot [-1, 1] by this much (resampling, rounding)


def array_to_model_range(a: np.ndarray, name: str, input_range: tuple[float, float] | None = None) -> np.ndarray:
    """The input policy for arrays, by dtype, never by values: uint8 → /127.5 − 1; uint16 → /32767.5 − 1;
    floats must already lie in [-1, 1] (± :data:`FLOAT_TOLERANCE`). ``input_range`` (lo, hi) maps any
    real array linearly from [lo, hi] to [-1, 1] first. Other integer types, bool, complex and
    structured arrays are errors naming ``name``."""
    dt = a.dtype
    if dt.fields is not None or dt.kind in "bcOSUV":
        raise DiffmemError(f"{name}: {dt} arrays are not images (use uint8, uint16 or float in [-1, 1])")
    if input_range is not None:
        lo, hi = (float(v) for v in input_range)
        out = ((a.astype(np.float64) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)
        what = f"after --input-range {lo:g},{hi:g}"
    elif dt == np.uint8:
        return to_model_range(a)
    elif dt == np.uint16:
        return (a.astype(np.float32) / 32767.5 - 1.0).astype(np.float32)
    elif dt.kind in "iu":
        raise DiffmemError(f"{name}: {dt} pixels are ambiguous; use uint8 (0…255), uint16 (0…65535), floats in "
                           f"[-1, 1], or say the range with --input-range LO,HI")
    else:
        out, what = a.astype(np.float32), "as floats (taken to be in [-1, 1])"
    if not np.isfinite(out).all():
        raise DiffmemError(f"{name}: contains NaN or infinite values")
    lo_v, hi_v = float(out.min()), float(out.max())
    if lo_v < -1 - FLOAT_TOLERANCE or hi_v > 1 + FLOAT_TOLERANCE:
        raise DiffmemError(f"{name}: values span [{lo_v:.4g}, {hi_v:.4g}] {what}, outside [-1, 1]; "
                           f"pass --input-range LO,HI (e.g. 0,1 or 0,255) to rescale")
    return np.clip(out, -1, 1)


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels in [0, 255] → float32 in [-1, 1]."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def _read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DiffmemError(f"{path}: no such file (install the Debian package dataset-fashion-mnist "
                           f"or set DIFFMEM_FASHION_MNIST)") from None
    except (OSError, EOFError) as exc:
        raise DiffmemError(f"{path}: not a readable IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DiffmemError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DiffmemError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64).

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000); ``root`` defaults to the Debian
    package's folder (override with the environment variable ``DIFFMEM_FASHION_MNIST``).
    """
    if split not in ("train", "test"):
        raise DiffmemError(f"split {split!r}: must be 'train' or 'test'")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise DiffmemError(f"{root}: Fashion-MNIST folder not found (apt-get install "
                           f"dataset-fashion-mnist, or set DIFFMEM_FASHION_MNIST)")
    stem = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for name in (f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                     f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            if (root / name).exists():
                return root / name
        return root / f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"

    images = _read_idx(find("images"))
    labels = _read_idx(find("labels")).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DiffmemError(f"{root}: image and label files do not match")
    return to_model_range(images)[:, None], labels


def read_image(path: str | os.PathLike, size: int | None = None, channels: int = 1) -> np.ndarray:
    """Decode one image file to float32 (channels, size, size) in [-1, 1].

    Gray, RGB, RGBA (alpha composited on white), palette and 16-bit images (scaled by 65535, by their
    mode) are accepted; the image
    is resized (bicubic) to ``size`` × ``size`` when given. Raises :class:`DiffmemError` naming the
    file when it is missing, empty, truncated, not an image, or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffmemError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise DiffmemError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DiffmemError(f"{path}: image too large ({img.width}x{img.height} pixels)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):      # 16-bit: by mode, never by the values
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(np.round(arr / 65535.0 * 255.0), 0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "P", "PA"):
                img = img.convert("RGBA")
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img)
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8)
    except DiffmemError:
        raise
    except Image.DecompressionBombError as exc:
        raise DiffmemError(f"{path}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DiffmemError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return to_model_range(arr)


def load_image_folder(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (by suffix) directly inside ``folder``; error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffmemError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DiffmemError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_images(source: str | os.PathLike, size: int | None = None, channels: int | None = None,
                limit: int | None = None, input_range: tuple[float, float] | None = None) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] from ``"fashion-mnist"``, an image folder or a .npy file.

    Arrays follow :func:`array_to_model_range` (``input_range`` rescales); ``channels`` converts
    (gray ↔ RGB; None keeps an array's own, 1 for folders) and ``size`` area-resizes arrays.
    NaN or infinite values raise :class:`DiffmemError`.
    """
    src = str(source)
    if src in ("fashion-mnist", "fashion-mnist:train", "fashion-mnist:test"):
        x, _ = load_fashion_mnist("test" if src.endswith(":test") else "train")
        x = x[:limit] if limit else x
        return x if size is None else resize_area(torch.from_numpy(x), size).numpy()
    path = Path(src)
    if path.suffix == ".npy":
        if not path.is_file():
            raise DiffmemError(f"{path}: no such file")
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DiffmemError(f"{path}: not a plain numeric .npy array ({exc})") from None
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DiffmemError(f"{path}: expected an array (N, H, W) or (N, C, H, W), got shape {x.shape}")
        x = array_to_model_range(np.asarray(x[:limit]), str(path), input_range)
        if channels is not None and x.shape[1] != channels:
            check_channels = x.shape[1] in (1, 3, 4) and channels in (1, 3)
            if not check_channels:
                raise DiffmemError(f"{path}: {x.shape[1]} channels cannot become {channels}")
            x = x[:, :3].mean(1, keepdims=True) if channels == 1 else np.repeat(x[:, :1], 3, 1)
        if size is not None and x.shape[-1] != size:
            x = resize_area(torch.from_numpy(np.ascontiguousarray(x)), size).numpy()
    elif path.is_file():
        raise DiffmemError(f"{path}: expected 'fashion-mnist', an image folder or a .npy array, "
                           f"got a {path.suffix or 'suffix-less'} file")
    else:
        files = load_image_folder(path)[:limit]
        x = np.stack([read_image(f, size=size, channels=channels or 1) for f in files])
    if not np.isfinite(x).all():
        raise DiffmemError(f"{path}: data contains NaN or infinite values")
    return x
