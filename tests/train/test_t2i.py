"""Stable Diffusion in miniature (diffmem.train.t2i): data, tokenizer, training, plain-diffusers loading."""

import json

import numpy as np
import pytest
import torch

from diffmem.train.t2i import COLOURS, T2IConfig, build_items, build_tokenizer, tint, train_t2i

TINY = T2IConfig(size=16, generic=24, dup="2x5,2x2", single=4, held_out=8, vae_steps=3, steps=4, batch_size=8,
                 text_width=16, max_tokens=10, unet_channels=(16, 32), check_every=2, check_generations=1,
                 check_steps=2)


def _fake(n: int, seed: int):
    g = np.random.default_rng(seed)
    return g.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32), g.integers(0, 10, n)


@pytest.fixture(scope="module")
def tiny_t2i(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "model"
    summary = train_t2i(out, TINY, seed=0, quiet=True, data=(_fake(60, 0), _fake(20, 1)))
    return out, summary


def test_items_kinds_copies_and_unique_captions():
    items = build_items(TINY, 0, _fake(60, 0), _fake(20, 1))
    kind, copies, caps = np.array(items["kind"]), np.array(items["copies"]), np.array(items["caption"])
    assert (kind == "generic").sum() == 24 and (kind == "held_out").sum() == 8
    assert sorted(copies[kind == "dup"].tolist()) == [2, 2, 5, 5]
    assert (copies[kind == "held_out"] == 0).all() and (copies[kind == "single"] == 1).all()
    unique = caps[np.isin(kind, ["dup", "single"])]
    assert len(set(unique)) == len(unique)                      # one caption per memorizable item
    assert not set(unique) & set(caps[kind == "generic"])
    assert all(c.startswith("a ") for c in caps[kind == "generic"])
    assert items["images"].dtype == np.uint8 and items["images"].shape == (40, 3, 16, 16)


def test_tint_scales_ink_by_colour():
    gray = np.array([[[[1.0, -1.0]]]], dtype=np.float32)       # one full-ink and one empty pixel
    out = tint(gray, ["red"])
    assert out[0, :, 0, 0].tolist() == [round(255 * v) for v in COLOURS["red"]]
    assert out[0, :, 0, 1].tolist() == [0, 0, 0]


def test_tokenizer_makes_every_word_one_token():
    caps = ["a red dress", "kodari mesun a blue boot", "zuvetalo a green top"]
    tok = build_tokenizer(caps, 10)
    for c in caps:
        ids = tok(c).input_ids
        assert ids[0] == 0 and ids[-1] == 1 and len(ids) == len(c.split()) + 2
        assert tok.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in c.split()]


def test_record_lists_captions_copies_and_held_out(tiny_t2i):
    out, summary = tiny_t2i
    rec = json.loads((out / "diffmem.json").read_text())
    data = np.load(out / "data.npy")
    assert data.shape == (40, 3, 16, 16)
    assert len(rec["captions"]) == len(data) == len(rec["kinds"])
    assert set(rec["held_out"]).isdisjoint(rec["indices"]) and len(rec["held_out"]) == 8
    assert sum(rec["copies"]) == 24 + 10 + 4 + 4
    steps = [h["step"] for h in rec["copy_share_history"]]
    assert steps == [2, 4] and rec["copy_share_final"]["generations"] == 4 and {"dup_x5", "dup_x2", "single", "generic"} <= set(rec["copy_share_history"][0])
    assert summary["parameters"]["unet"] > 0 and rec["text_encoder"].startswith("frozen")


def test_plain_diffusers_loads_and_samples(tiny_t2i):
    """No diffmem code in the loop: StableDiffusionPipeline.from_pretrained and a prompt."""
    from diffusers import StableDiffusionPipeline
    out, _ = tiny_t2i
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    caps = json.loads((out / "diffmem.json").read_text())["captions"]
    run = lambda prompts: pipe(prompts, num_inference_steps=3, guidance_scale=7.5, output_type="np",  # noqa: E731
                               generator=torch.Generator().manual_seed(0)).images
    img = run([caps[0], caps[-1]])
    assert img.shape == (2, 16, 16, 3) and np.isfinite(img).all()
    assert np.array_equal(run([caps[0], caps[-1]]), img)        # the seed fixes the samples …
    assert np.abs(run([caps[-1], caps[-1]])[0] - img[0]).max() > 1e-3   # … and the prompt conditions them
    assert not pipe.scheduler.config.clip_sample                 # latents are not clipped to [-1, 1]


def test_loads_as_adapter_with_record(tiny_t2i):
    from diffmem.models import load_adapter
    out, _ = tiny_t2i
    a = load_adapter(out)
    assert a.family == "stable_diffusion" and a.image_size == 16 and a.image_channels == 3
    assert a.record.captions is not None and len(a.record.captions) == 40
    assert a.record.data == str(out / "data.npy")


def test_train_is_deterministic(tmp_path):
    data = (_fake(60, 0), _fake(20, 1))
    cfg = T2IConfig(**{**TINY.__dict__, "check_every": 0})
    a = train_t2i(tmp_path / "a", cfg, seed=3, quiet=True, data=data)
    b = train_t2i(tmp_path / "b", cfg, seed=3, quiet=True, data=data)
    assert a["final_loss"] == b["final_loss"] and a["vae_mse"] == b["vae_mse"]
    from safetensors.torch import load_file
    wa = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
