"""A small Fashion-MNIST CNN that measures the attribute (class probability) of steered samples."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffmem.data.images import resize_area
from diffmem.errors import DiffmemError, check
from diffmem.outputs import output_dir, progress
from diffmem.schemas import ClassifierFile, read_result, write_result

CLASSIFIER = Path(__file__).resolve().parent.parent / "assets" / "classifier"


class SmallCNN(nn.Module):
    """(B, 1, S, S) in [-1, 1] → logits (B, classes); about 0.1M parameters."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def train_classifier(out: str | os.PathLike, size: int = 16, epochs: int = 3, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, quiet: bool = False) -> dict:
    """Train on the Fashion-MNIST training split (area-resized to ``size``), report test accuracy,
    save ``model.safetensors`` + ``classifier.json``."""
    from safetensors.torch import save_file
    from diffmem.data.images import load_fashion_mnist
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    resize = lambda a: resize_area(torch.from_numpy(a), size)  # noqa: E731
    X, Y, XT, YT = resize(x), torch.from_numpy(y), resize(xt), torch.from_numpy(yt)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.time()
    for epoch in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in progress(range(0, len(X), batch_size), desc=f"classifier epoch {epoch + 1}/{epochs}",
                          disable=quiet):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float(torch.cat([model(XT[i:i + 1000]).argmax(1) for i in range(0, len(XT), 1000)]).eq(YT)
                    .float().mean())
    record = {"size": size, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
              "test_accuracy": acc, "train_seconds": time.time() - t0,
              "parameters": sum(p.numel() for p in model.parameters())}
    with output_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        write_result(tmp / "classifier.json", record, ClassifierFile)
    return record


def load_classifier(path: str | os.PathLike = CLASSIFIER) -> tuple[SmallCNN, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    meta = read_result(path / "classifier.json", ClassifierFile)
    try:
        model = SmallCNN()
        model.load_state_dict(load_file(path / "model.safetensors"))
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise DiffmemError(f"{path}: not a diffmem classifier ({exc})") from None
    return model.eval(), meta


@torch.no_grad()
def class_probabilities(model: SmallCNN, x: torch.Tensor, size: int) -> np.ndarray:
    """P(class | x) (N, 10) for images x (N, C, H, W) in [-1, 1], resized to the classifier's size; an RGB
    image of a tinted garment is read by its brightest channel (the garment's grey shape)."""
    check(x.shape[1] in (1, 3), f"classifier: expects 1- or 3-channel images, not {x.shape[1]}")
    x = resize_area(x.amax(1, keepdim=True) if x.shape[1] == 3 else x, size)
    return torch.softmax(model(x.float()), dim=1).double().numpy()


def class_probability(model: SmallCNN, x: torch.Tensor, target: int, size: int) -> np.ndarray:
    """P(target | x) (N,), as :func:`class_probabilities`."""
    return class_probabilities(model, x, size)[:, target]
