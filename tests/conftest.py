import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


needs_fmnist = pytest.mark.skipif(
    not __import__("diffmem.data.images", fromlist=["x"]).FASHION_MNIST_DIR.is_dir(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; `make test` does this)")


@pytest.fixture(scope="session")
def tiny_bench_model(tmp_path_factory):
    """A 0.16M-parameter class-conditional UNet on 8×8 Fashion-MNIST: 40 images + 4 images × 40 copies,
    trained long enough (800 steps) that samples copy three of the duplicated images (so a grouped
    split has memorized groups on both sides)."""
    from diffmem.train.pixel import PixelRun, train_unet
    path = tmp_path_factory.mktemp("bench") / "model"
    train_unet(path, PixelRun(size=8, distinct=40, dup="4x40", steps=800, lr=3e-3, batch_size=32, config="test-xs",
                              seed=0), quiet=True)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Eight random 28×28 gray PNGs."""
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore:.*clip_sample.*")
