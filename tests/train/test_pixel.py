"""Pixel UNet training: the named configs (attention, sizes) and noise schedules load in plain diffusers."""

import json

import numpy as np
import pytest

from diffmem.errors import DiffmemError
from diffmem.train.pixel import UNET_CONFIGS, PixelRun, make_unet, train_unet


def test_attention_config_puts_one_attention_pair_at_the_lowest_resolution():
    unet = make_unet("bench-s-attn", 16, 1, 10, seed=0)
    assert unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert unet.config.up_block_types == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    plain = make_unet("bench-s", 16, 1, 10, seed=0)
    assert "Attn" not in "".join(plain.config.down_block_types + plain.config.up_block_types)
    assert set(UNET_CONFIGS) >= {"bench-s", "bench-s-attn", "bench-xs", "bench-m"}


def test_cosine_schedule_is_recorded_and_loads_in_plain_diffusers(tmp_path):
    from diffusers import DDPMPipeline
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (12, 8, 8), dtype=np.uint8))
    out = tmp_path / "m"
    train_unet(out, PixelRun(data=str(tmp_path / "x.npy"), size=8, distinct=8, dup="2x2", steps=2, batch_size=4,
                             config="test-xs", schedule="cosine", seed=0), quiet=True)
    pipe = DDPMPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert json.loads((out / "diffmem.json").read_text())["schedule"] == "cosine"
    with pytest.raises(DiffmemError, match="schedule="):
        PixelRun(data=str(tmp_path / "x.npy"), size=8, distinct=8, dup="", steps=1, schedule="sigmoid")
