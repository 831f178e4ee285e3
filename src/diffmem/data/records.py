"""A model's training and held-out images from its training record (``diffmem.json``): Fashion-MNIST
from Debian's package or the shipped subset, or any image source.

``assets/fashion_mnist_subset.npz`` holds, at 28×28 uint8, every training image the shipped
checkpoints use (with their original indices in the 60,000-image training split) and the first
1,000 images of the test split (held-out references). Provenance: Zalando Research's
Fashion-MNIST, MIT licence, as packaged by Debian (``dataset-fashion-mnist``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffmem.data.images import FASHION_MNIST_DIR, load_fashion_mnist, to_model_input
from diffmem.errors import DiffmemError, check

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SUBSET = ASSETS / "fashion_mnist_subset.npz"
HYBRID = ASSETS / "bench" / "hybrid"        # the shipped hybrid model (the benchmark's and demo's default)
T2I = ASSETS / "bench" / "t2i"              # the shipped text-to-image model (finetune's default base)
N_REFERENCE = 1000


def fashion_mnist_train(indices, size: int) -> torch.Tensor:
    """Training-split images at ``indices`` as (N, 1, size, size) in [-1, 1] (:func:`to_model_input`)."""
    indices = np.asarray(indices, dtype=np.int64)
    if FASHION_MNIST_DIR.is_dir():
        x, _ = load_fashion_mnist("train")
        return torch.from_numpy(to_model_input(x[indices], "fashion-mnist", size))
    check(SUBSET.exists(), f"{FASHION_MNIST_DIR}: Fashion-MNIST not installed and no shipped subset")
    z = np.load(SUBSET)
    pos = {int(i): k for k, i in enumerate(z["train_indices"])}
    missing = [int(i) for i in indices if int(i) not in pos]
    if missing:
        raise DiffmemError(f"{SUBSET}: lacks {len(missing)} requested training images; install "
                           f"dataset-fashion-mnist")
    return torch.from_numpy(to_model_input(z["train_images"][[pos[int(i)] for i in indices]], str(SUBSET), size))


def fashion_mnist_reference(size: int, n: int = N_REFERENCE) -> tuple[torch.Tensor, np.ndarray]:
    """The first n test-split images (never trained on) as (n, 1, size, size) in [-1, 1], and labels."""
    if FASHION_MNIST_DIR.is_dir():
        x, y = load_fashion_mnist("test")
        return torch.from_numpy(to_model_input(x[:n], "fashion-mnist:test", size)), y[:n]
    check(SUBSET.exists(), f"{FASHION_MNIST_DIR}: Fashion-MNIST not installed and no shipped subset")
    z = np.load(SUBSET)
    return (torch.from_numpy(to_model_input(z["test_images"][:n], str(SUBSET), size)),
            z["test_labels"][:n].astype(np.int64))


def load_source(source: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (N, C, size, size) in [-1, 1] and class labels (N,) when the source has them."""
    if source in ("fashion-mnist", "fashion-mnist:train"):
        x, y = load_fashion_mnist("train")
        return to_model_input(x, source, size), y
    from diffmem.data.sources import load_images
    return load_images(source, size=size), None


def _source(record) -> tuple[np.ndarray, np.ndarray | None]:
    images, labels = load_source(record.data, record.size)
    check(max(record.indices) < len(images), f"{record.data}: the training record indexes past its {len(images)} images")
    return images, labels


def record_channels(record) -> int:
    """Image channels of a training record's data (1 for Fashion-MNIST)."""
    return 1 if record.data == "fashion-mnist" else _source(record)[0].shape[1]


def record_training_images(record) -> tuple[torch.Tensor, np.ndarray]:
    """The distinct training images (M, C, H, W) in [-1, 1] of a training record
    (:class:`~diffmem.models.record.ModelRecord`), and how often each was seen (M,)."""
    if record.data == "fashion-mnist":
        train = fashion_mnist_train(list(record.indices), record.size)
    else:
        train = torch.from_numpy(_source(record)[0][np.asarray(record.indices)])
    return train, np.asarray(record.copies)


def record_reference_images(record) -> tuple[torch.Tensor, np.ndarray | None]:
    """Held-out real images never trained on (N, C, H, W) in [-1, 1] and their classes (or None):
    Fashion-MNIST's first test images, else every image of the source the record does not use."""
    if record.data == "fashion-mnist":
        return fashion_mnist_reference(record.size)
    images, labels = _source(record)
    unused = np.setdiff1d(np.arange(len(images)), record.indices)
    check(len(unused) >= 4, f"{record.data}: no held-out images left for reference statistics")
    return torch.from_numpy(images[unused]), None if labels is None else labels[unused]


def record_reference_captions(record) -> list[str]:
    """The captions of :func:`record_reference_images` (same order) of a record with captions."""
    check(record.captions is not None, f"{record.data}: the training record has no captions")
    return [record.captions[i] for i in np.setdiff1d(np.arange(len(record.captions)), record.indices)]


def require_record(adapter, why: str = "exact labels need the training set") -> None:
    """Fail before any work when the model has no training record (``diffmem.json``)."""
    check(adapter.record is not None, f"{adapter.path or 'model'}: no diffmem.json training record; {why}")


def _check_shape(adapter) -> None:
    rec = adapter.record
    check((adapter.image_channels, adapter.image_size) == (record_channels(rec), rec.size),
          f"{rec.data}: training images of shape ({record_channels(rec)}, {rec.size}, {rec.size}) do not match "
          f"the model's ({adapter.image_channels}, {adapter.image_size}, {adapter.image_size})")


def training_images(adapter) -> tuple[torch.Tensor, np.ndarray]:
    """The distinct training images (M, C, H, W) in [-1, 1] of a model with a training record, and
    how often each was seen (M,)."""
    require_record(adapter)
    _check_shape(adapter)
    return record_training_images(adapter.record)


def copy_targets(adapter) -> tuple[torch.Tensor, np.ndarray]:
    """What a copy of each training image looks like through the model — its round trip
    (:meth:`~diffmem.probe.adapters.Adapter.round_trip`; the images themselves for pixel families) —
    (M, C, H, W), and how often each was seen (M,): the reference of exact copy labels."""
    train, copies = training_images(adapter)
    return adapter.round_trip(train), copies


def reference_images(adapter) -> tuple[torch.Tensor, np.ndarray | None]:
    """Held-out real images the model never trained on (N, C, H, W) in [-1, 1], and their classes
    (None when the data set has none)."""
    require_record(adapter, "held-out reference images come from its training data")
    _check_shape(adapter)
    return record_reference_images(adapter.record)


def build_subset(records: list[dict], out: Path = SUBSET) -> Path:
    """Write the shipped subset for the training records (``diffmem.json``) of shipped models."""
    from diffmem.data.images import _read_idx  # raw uint8 pixels
    idx = sorted({int(i) for r in records for i in r["indices"]})
    train = _read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    test = _read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    test_labels = _read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    np.savez_compressed(out, train_indices=np.asarray(idx), train_images=train[idx], train_labels=labels[idx],
                        test_images=test[:N_REFERENCE], test_labels=test_labels[:N_REFERENCE])
    return out


PROMPT_KINDS = ("dup", "single", "generic", "reference")


@dataclass(frozen=True)
class PromptSet:
    """Prompts with, per prompt: ``kind`` (one of :data:`PROMPT_KINDS`), ``item`` (position in the
    record's data of the prompt's own image; −1 for generic captions) and ``copies`` (times that image
    was trained on; 0 for held-out and generic)."""

    prompts: tuple[str, ...]
    kind: tuple[str, ...]
    item: tuple[int, ...]
    copies: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def record_prompts(record, per_kind: int = 40, prompts: list[str] | None = None) -> PromptSet:
    """The benchmark's prompts from a training record with captions (kinds derived from captions and
    copies alone, so any record with captions works): all duplicated items' captions, and up to
    ``per_kind`` of each other kind, in record order. ``prompts``: a user's list instead, each
    classified by the record (a caption it does not know counts as ``reference``)."""
    check(record is not None and record.captions is not None,
          "prompt-level bench: the model's training record has no captions")
    caps = record.captions
    n_data = len(caps)
    trained = dict(zip(record.indices, record.copies))
    train_caps = [caps[i] for i in record.indices]
    uses = pd.Series(train_caps).value_counts().to_dict()
    entries: dict[str, list] = {k: [] for k in PROMPT_KINDS}
    for i in range(n_data):
        c = caps[i]
        if i in trained:
            kind = "generic" if uses[c] > 1 else ("dup" if trained[i] > 1 else "single")
        else:
            kind = "reference" if c not in uses else None
        if kind is not None:
            entries[kind].append((c, -1 if kind == "generic" else i, 0 if kind == "generic" else trained.get(i, 0)))
    seen: set[str] = set()
    generic = [e for e in entries["generic"] if not (e[0] in seen or seen.add(e[0]))]
    if prompts is not None:
        known = {e[0]: (k, e) for k in PROMPT_KINDS for e in (generic if k == "generic" else entries[k])}
        rows = [(known[p][0], known[p][1]) if p in known else ("reference", (p, -1, 0)) for p in prompts]
    else:
        dup = sorted(entries["dup"], key=lambda e: -e[2])
        rows = ([("dup", e) for e in dup] + [("single", e) for e in entries["single"][:per_kind]] +
                [("generic", e) for e in generic[:per_kind]] + [("reference", e) for e in entries["reference"][:per_kind]])
    check(len(rows) > 0, "prompt-level bench: no prompts")
    return PromptSet(tuple(e[0] for _, e in rows), tuple(k for k, _ in rows), tuple(int(e[1]) for _, e in rows),
                     tuple(int(e[2]) for _, e in rows))
