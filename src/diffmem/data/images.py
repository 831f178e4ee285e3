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
        what = f"after input_range={lo:g},{hi:g}"
    elif dt == np.uint8:
        return to_model_range(a)
    elif dt == np.uint16:
        return (a.astype(np.float32) / 32767.5 - 1.0).astype(np.float32)
    elif dt.kind in "iu":
        raise DiffmemError(f"{name}: {dt} pixels are ambiguous; use uint8 (0…255), uint16 (0…65535), floats in "
                           f"[-1, 1], or say the range with input_range=LO,HI")
    else:
        out, what = a.astype(np.float32), "as floats (taken to be in [-1, 1])"
    if not np.isfinite(out).all():
        raise DiffmemError(f"{name}: contains NaN or infinite values")
    lo_v, hi_v = float(out.min()), float(out.max())
    if lo_v < -1 - FLOAT_TOLERANCE or hi_v > 1 + FLOAT_TOLERANCE:
        raise DiffmemError(f"{name}: values span [{lo_v:.4g}, {hi_v:.4g}] {what}, outside [-1, 1]; "
                           f"pass input_range=LO,HI (e.g. 0,1 or 0,255) to rescale")
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


LUMA = (0.299, 0.587, 0.114)      # RGB → gray weights (ITU-R 601-2, as PIL's "L")


def to_nchw(a: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) with C in 1, 3, 4 → (N, C, H, W); anything else is an error."""
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim == 4 and a.shape[1] not in (1, 3, 4) and a.shape[-1] in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)                               # NHWC → NCHW
    if a.ndim != 4 or a.shape[1] not in (1, 3, 4):
        raise DiffmemError(f"{name}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C) with 1, 3 or 4 "
                           f"channels, got shape {tuple(a.shape)}")
    if min(a.shape[0], a.shape[2], a.shape[3]) == 0:
        raise DiffmemError(f"{name}: no pixels (shape {tuple(a.shape)})")
    return a


def _convert_channels(x: np.ndarray, name: str, channels: int | None) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → ``channels`` (None: keep 1 or 3): alpha is composited over white,
    RGB → gray by :data:`LUMA`, gray → RGB by repetition."""
    if x.shape[1] == 4:                                           # RGBA over white
        alpha = (x[:, 3:] + 1.0) / 2.0                            # (N, 1, H, W) in [0, 1]
        x = x[:, :3] * alpha + (1.0 - alpha)
    target = x.shape[1] if channels is None else channels
    if target == x.shape[1]:
        return x
    if target == 1:
        return np.tensordot(np.asarray(LUMA, np.float32), x, axes=([0], [1]))[:, None].astype(np.float32)
    if target == 3 and x.shape[1] == 1:
        return np.repeat(x, 3, 1)
    raise DiffmemError(f"{name}: {x.shape[1]}-channel images cannot become {channels}-channel model inputs")


def to_model_input(a: np.ndarray, name: str, size: int | None = None, channels: int | None = None,
                   input_range: tuple[float, float] | None = None) -> np.ndarray:
    """The one image pipeline every input path goes through (folders, manifests, arrays, references,
    training data, probes, Fashion-MNIST): images (N, H, W), (N, C, H, W) or (N, H, W, C) of any
    accepted dtype → float32 (N, channels, size, size) in [-1, 1].

    Steps: layout (:func:`to_nchw`); range by dtype (:func:`array_to_model_range`); channels
    (:func:`_convert_channels`); resampling by area averaging (:func:`resize_area`, the only
    resampler) when ``size`` differs; a final clip to [-1, 1]. Errors name ``name``."""
    x = array_to_model_range(to_nchw(np.asarray(a), name), name, input_range)
    x = _convert_channels(x, name, channels)
    if size is not None and x.shape[-2:] != (size, size):
        x = resize_area(torch.from_numpy(np.ascontiguousarray(x)), size).numpy()
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


def _decode(img: "Image.Image") -> np.ndarray:
    """A loaded PIL image → its pixels (1, C, H, W) in their own dtype: the mode fixes the range
    (8-bit → uint8; 16-bit ``I;16*`` and 32-bit ``I`` → uint16, clipped; ``F`` → float32, taken as
    [-1, 1] unless ``--input-range``); palette and LA images become RGBA, others RGB."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
    else:
        keep = {"1": "L", "L": "L", "RGB": "RGB", "RGBA": "RGBA", "P": "RGBA", "PA": "RGBA", "LA": "RGBA"}
        arr = np.asarray(img.convert(keep.get(img.mode, "RGB")), dtype=np.uint8)
    return (arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None])


def read_image(path: str | os.PathLike, size: int | None = None, channels: int = 1,
               input_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decode one image file through :func:`to_model_input` → float32 (channels, size, size) in [-1, 1].

    Gray, RGB, RGBA / LA / palette (alpha over white), 16-bit and float (mode F) images are accepted;
    ``input_range`` applies to float images only (the mode fixes the others). Raises
    :class:`DiffmemError` naming the file when it is missing, empty, truncated, not an image, or too large.
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
            arr = _decode(img)
    except DiffmemError:
        raise
    except Image.DecompressionBombError as exc:
        raise DiffmemError(f"{path}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DiffmemError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return to_model_input(arr, str(path), size, channels, input_range if arr.dtype.kind == "f" else None)[0]
