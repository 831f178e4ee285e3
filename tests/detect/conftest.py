import pytest

from diffmem.models import load_adapter
from diffmem.models.tiny import SAVERS


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny random unconditional UNet2D (16×16 gray, linear schedule)."""
    return load_adapter(SAVERS["unet2d"](tmp_path_factory.mktemp("u") / "m", num_classes=None, seed=0))
