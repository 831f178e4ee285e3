"""Helpers shared by several test modules."""

import numpy as np


def write_pngs(folder, n, size=20, seed=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        mode = ["L", "RGB", "RGBA"][i % 3]
        shape = (size, size) if mode == "L" else (size, size, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i:03d}.png")
    return folder


def uniform_images(n, seed, channels=1, size=16):
    """n images (n, channels, size, size) uniform in [-1, 1], from a fixed seed."""
    import torch
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
