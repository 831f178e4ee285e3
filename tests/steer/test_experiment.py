import contextlib
import json

import numpy as np
import pytest
import torch

from diffmem.errors import DiffmemError
from diffmem.models import load_adapter
from diffmem.models.tiny import SAVERS
from diffmem.probe.sampling import Sampler, sample
from diffmem.steer import ConceptVector, parse_window, steering
from diffmem.commands.steer import parse_alphas
from diffmem.steer.experiment import SteerConfig
from tests.conftest import needs_fmnist


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return load_adapter(SAVERS["unet2d"](tmp_path_factory.mktemp("u") / "m", num_classes=10))


def test_concept_vector_is_the_mean_of_pooled_activations(unet, tmp_path):
    from diffmem.detect.detector import image_keys
    from diffmem.probe.represent import capture_layers, generators
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1, torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    layers = ["up_blocks.0.resnets.0", "mid_block"]
    cv = ConceptVector(unet, layers=layers, t=10, batch_size=4).fit(pos, cond=3)
    acts = capture_layers(unet, pos, layers, 10, generators(0, image_keys(pos)), cond=unet.condition([3] * 6),
                          early_exit=False)
    for name in layers:
        assert torch.allclose(cv.vectors_[name], acts[name].mean(dim=(0, 2, 3)), atol=1e-5)
    diff = ConceptVector(unet, layers=layers, mode="mean_diff").fit(pos, neg)
    m_neg = ConceptVector(unet, layers=layers).fit(neg).vectors_
    m_pos = ConceptVector(unet, layers=layers).fit(pos).vectors_
    assert torch.allclose(diff.vectors_["mid_block"], m_pos["mid_block"] - m_neg["mid_block"], atol=1e-5)
    loaded = ConceptVector.load(cv.save(tmp_path / "cv"))
    assert loaded.layers == layers and all(torch.equal(loaded.vectors_[k], cv.vectors_[k]) for k in layers)
    with pytest.raises(DiffmemError, match="needs negatives"):
        ConceptVector(unet, layers=layers, mode="mean_diff").fit(pos)


def _output(unet, module, x, cond, vectors=None, alpha=0.0):
    """``module``'s output when the denoiser runs once on x, with ``vectors`` steered at ``alpha`` if given."""
    got = []
    ctx = steering(unet, vectors, alpha, (0, 1)) if vectors else contextlib.nullcontext()
    with ctx:                                             # registered after steering's hook: sees its result
        handle = module.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
        try:
            unet.denoise(x, 500, cond)
        finally:
            handle.remove()
    return got[0]


def test_hook_adds_exactly_alpha_v_inside_the_window_only(unet):
    layer = "up_blocks.0.resnets.1"
    module = dict(unet.denoiser.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    v = torch.randn(module.conv2.out_channels, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = unet.condition([0, 1])
    try:
        # the recording hook runs before the steering hook: `seen` holds the unsteered outputs
        with steering(unet, {layer: v}, 0.7, (1, 3)) as counter:
            outs = [unet.denoise(x, 500, cond) for _ in range(4)]
        plain = [unet.denoise(x, 500, cond) for _ in range(4)]
    finally:
        handle.remove()
    assert counter.step == 3
    for k in range(4):
        same = torch.equal(outs[k], plain[k])
        assert same == (k not in (1, 2))
    # a hook registered after steering's sees the steered output: exactly h + 0.7 v
    steered = _output(unet, module, x, cond, {layer: v}, 0.7)
    assert torch.allclose(steered - seen[0], 0.7 * v.view(1, -1, 1, 1).expand_as(seen[0]), atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.denoiser.modules())


@pytest.mark.parametrize("order", ["uncond_cond", "cond_uncond"])
def test_cfg_half_selection(unet, order):
    layer = "mid_block"
    module = dict(unet.denoiser.named_modules())[layer]
    v = torch.ones(module.resnets[-1].conv2.out_channels)
    x = torch.zeros(4, 1, 16, 16)
    cond = torch.cat([unet.null_condition(2), unet.condition([1, 2])])
    got = {}
    old = unet.cfg_order
    unet.cfg_order = order
    try:
        with steering(unet, {layer: v}, 1.0, (0, 1), cfg_batch=True):
            h = module.register_forward_hook(lambda m, i, o: got.setdefault("h", o.detach().clone()))
            unet.denoise(x, 500, cond)
            h.remove()
        base = {}
        h = module.register_forward_hook(lambda m, i, o: base.setdefault("h", o.detach().clone()))
        unet.denoise(x, 500, cond)
        h.remove()
    finally:
        unet.cfg_order = old
    delta = (got["h"] - base["h"]).mean(dim=(1, 2, 3))
    expect = torch.tensor([0.0, 0.0, 1.0, 1.0]) if order == "uncond_cond" else torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert torch.allclose(delta, expect, atol=1e-6)


def test_alpha_zero_reproduces_unsteered_sampling_bit_for_bit(unet):
    cv = ConceptVector(unet, layers=["up_blocks.0.resnets.0"]).fit(torch.rand(3, 1, 16, 16) * 2 - 1)
    plain = sample(unet, 3, [1, 2, 3], how=Sampler(guidance=2.0, steps=6), seed=1, quiet=True)
    with steering(unet, cv.vectors_, 0.0, (0, 6), cfg_batch=True):
        zero = sample(unet, 3, [1, 2, 3], how=Sampler(guidance=2.0, steps=6), seed=1, quiet=True)
    with steering(unet, cv.vectors_, 5.0, (2, 5), cfg_batch=True):
        moved = sample(unet, 3, [1, 2, 3], how=Sampler(guidance=2.0, steps=6), seed=1, quiet=True)
    assert torch.equal(plain, zero) and not torch.equal(plain, moved)


def test_window_and_alpha_parsing():
    assert parse_window("18:38", 40) == (18, 38)
    assert parse_window("last20-2", 40) == (18, 38)
    assert parse_window("last5", 40) == (35, 40)
    for bad in ("30:50", "5:5", "abc", "last50"):
        with pytest.raises(DiffmemError, match="window="):
            parse_window(bad, 40)
    assert parse_alphas("0,0.2,0.4") == (0.0, 0.2, 0.4)
    with pytest.raises(DiffmemError, match="--alphas '0,a': expected comma-separated numbers"):
        parse_alphas("0,a")
    for bad in ((0.2, 0.4), (0, 0.5, 0.2), (0,), (0, float("inf"))):
        with pytest.raises(DiffmemError, match="alphas="):
            SteerConfig(alphas=bad)
    with pytest.raises(DiffmemError, match="groups="):
        SteerConfig(groups=("copies",))


@needs_fmnist
def test_steer_command_on_a_tiny_hybrid_model(tiny_bench_model, tmp_path):
    from diffmem.commands.steer import steer as run_steer
    import json
    r = run_steer(tmp_path / "s", model=tiny_bench_model, concept="Trouser", alphas="0,1,2", n_per_group=2,
                  pool_size=120, steps=10, window="4:9", n_concept=10, quiet=True)
    saved = json.loads((tmp_path / "s" / "steer.json").read_text())
    assert saved["target_class"] == 1 and saved["window"] == [4, 9] and saved["overhead_ratio"] > 0
    for g in ("memorized", "generalized"):
        grp = r["groups"][g]
        assert grp["n"] == 2 and grp["alpha0_equals_unsteered"] and len(grp["attribute_curve"]) == 3
        assert grp["output_change_per_unit"] > 0 and len(grp["shape_iou_curve"]) == 3
    assert (tmp_path / "s" / "steer_grid.png").exists() and (tmp_path / "s" / "concept" / "vectors.safetensors").exists()
    for bad, match in (({"concept": "Spaceship"}, "concept"), ({"alphas": "0,x"}, "--alphas"),
                       ({"window": "5:50"}, "window=")):
        with pytest.raises(DiffmemError, match=match):
            run_steer(tmp_path / "bad", model=tiny_bench_model, **{"alphas": "0,1", **bad}, quiet=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DiffmemError, match="no image files"):
        run_steer(tmp_path / "bad", model=tiny_bench_model, concept=str(empty), alphas="0,1", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_attribute_concepts_and_percentiles():
    from diffmem.steer.attributes import attribute_concept, attribute_percentile
    ref = torch.linspace(-1, 1, 101).view(-1, 1, 1, 1).expand(101, 1, 4, 4).contiguous()   # brightness 0…1
    pos, neg = attribute_concept("brightness", ref, 10)
    assert pos.mean() > 0.8 and neg.mean() < -0.8
    p = attribute_percentile("brightness", torch.stack([ref[0], ref[50], ref[100]]), ref)
    assert p[0] < 0.05 and abs(p[1] - 0.5) < 0.02 and p[2] == 1.0


def test_steering_metrics_have_bootstrap_cis_that_cover_the_mean():
    from diffmem.steer.metrics import steering_metrics
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn(12, 1, 4, 4, generator=g) * 0.1 + a for a in (0, 1, 2, 3)]
    scores = np.linspace(0, 0.6, 4)[None].repeat(12, 0) + np.random.default_rng(0).normal(0, 0.01, (12, 4))
    m = steering_metrics(imgs, [0, 1, 2, 3], scores)
    for k in ("attribute_gain", "monotonicity", "largest_attribute_jump", "pixel_jump_fraction",
              "output_change_per_unit"):
        lo, hi = m[f"{k}_ci"]
        assert lo <= m[k] <= hi, k
    assert abs(m["attribute_gain"] - 0.6) < 0.05 and m["pixel_jump_fraction"] < 0.5      # steady, not one jump


def test_steering_toward_ink_raises_it_on_the_shipped_model(tiny_bench_model, tmp_path):
    """The default attribute on the shipped hybrid, small: both groups gain ink (lower CI bounds 0.14 and 0.17
    measured at seed 0; the test asks for > 0)."""
    from diffmem.commands.steer import steer as run_steer
    r = run_steer(tmp_path / "s", alphas="0,1.5", n_per_group=6, pool_size=60, steps=20, window="10:20",
                  n_concept=100, quiet=True)
    assert r["attribute"] == "ink" and "percentile" in r["measure"] and r["target_class"] is None
    for grp in r["groups"].values():
        assert grp["n"] == 6 and grp["attribute_gain_ci"][0] > 0 and grp["attribute_curve"][1] > grp["attribute_curve"][0]
    with pytest.raises(DiffmemError, match="negative="):
        run_steer(tmp_path / "bad", model=tiny_bench_model, negative="Trouser", alphas="0,1", quiet=True)


def test_colour_statistic_garment_iou_and_half_gain_by_hand():
    from diffmem.steer.attributes import ATTRIBUTES, garment_iou
    from diffmem.steer.metrics import alpha_at_fraction, curve_at
    from diffmem.train.t2i import COLOURS
    garment = torch.zeros(1, 1, 8, 8)
    garment[..., 2:6, 2:6] = 1.0                                             # a 4×4 garment on black

    def tinted(name):
        return (garment * torch.tensor(COLOURS[name]).view(1, 3, 1, 1)) * 2 - 1     # [-1, 1]
    red = ATTRIBUTES["red"][0]
    assert red(tinted("red")).item() > 0.99                                  # its own colour: cosine 1
    assert red(tinted("red")) > red(tinted("orange")) > red(tinted("blue"))
    assert abs(red(tinted("white")).item()) < 1e-6                           # grey: no chroma
    with pytest.raises(DiffmemError, match="RGB"):
        red(torch.zeros(1, 1, 8, 8))
    moved = torch.roll(tinted("red"), 2, dims=3)                            # shifted by half its width
    assert garment_iou(tinted("red"), tinted("red"))[0] == 1.0
    assert garment_iou(moved, tinted("red"))[0] == pytest.approx(8 / 24)    # overlap 8 px, union 24 px
    for other in ("green", "blue", "cyan"):                                # recoloured or darkened: the same shape
        assert garment_iou(tinted(other), tinted("red"))[0] == 1.0
    assert garment_iou((tinted("red") + 1) * 0.35 - 1, tinted("red"))[0] == 1.0
    block = torch.full_like(tinted("red"), -1.0)
    block[..., 1:7, 1:7] = tinted("red")[..., 2:6, 2:6].mean((2, 3), keepdim=True)   # smeared into a block
    assert garment_iou(block, tinted("red"))[0] == pytest.approx(16 / 36)
    assert curve_at([0, 1, 2], [0.1, 0.3, 0.9], 1.5) == pytest.approx(0.6)
    assert alpha_at_fraction([0, 1, 2], [0.1, 0.3, 0.9], 0.5) == pytest.approx(4 / 3)  # gain 0.4 of 0.8: 1 + 0.2/0.6
    assert alpha_at_fraction([0, 1], [0.5, 0.4], 0.5) is None                          # no gain


def test_steering_a_text_to_image_model_by_prompt_groups_and_a_caption_word(tmp_path):
    """The prompt design end to end on a tiny trained text-to-image model: the concept is read from the
    held-out images whose caption names the colour, each with its own caption; no steered prompt names it."""
    from collections import Counter
    from diffmem.commands.steer import steer as run_steer
    from diffmem.train.t2i import T2IConfig, train_t2i
    g = np.random.default_rng(0)
    fake = lambda n: (g.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32), g.integers(0, 10, n))  # noqa: E731
    cfg = T2IConfig(size=16, generic=24, dup="4x3", single=2, held_out=40, vae_steps=3, steps=4, batch_size=8,
                    text_width=16, max_tokens=10, unet_channels=(16, 32), check_every=0)
    train_t2i(tmp_path / "m", cfg, seed=0, quiet=True, data=(fake(60), fake(60)))
    rec = json.loads((tmp_path / "m" / "diffmem.json").read_text())
    held = [rec["colours"][i] for i in rec["held_out"]]
    colour = next(c for c, _ in Counter(held).most_common() if c != "white")
    r = run_steer(tmp_path / "s", model=str(tmp_path / "m"), concept=colour, guidance=3.5, alphas="0,2",
                  n_per_group=3, n_concept=8, steps=6, window="2:6", quiet=True)
    assert r["design"] == "prompts" and r["attribute"] == colour and r["n_concept"] == min(8, held.count(colour))
    gen = r["groups"]["generalized"]
    assert gen["n"] == 3 and all(colour not in p.split() for p in gen["prompts"])
    assert gen["alpha0_equals_unsteered"] and gen["shape_iou_curve"][0] == 1.0 and len(gen["copy_curve"]) == 2
    assert gen["output_change_per_unit"] > 0                                # the vector moved the samples
    assert (tmp_path / "s" / "steer_grid.png").exists()
    kept_at_2 = gen["shape_iou_curve"][1] >= 0.8 or gen["class_kept_curve"][1] >= 0.9
    assert len(gen["class_kept_curve"]) == 2 and gen["edit"]["alpha"] == (2.0 if kept_at_2 else 0.0)
    assert r["shape_measure_check"]["channels rotated"] == {"kind": "edit", "mean_iou": 1.0, "share_kept": 1.0}
    # the text's own direction: held-out images lacking the word, read with it swapped in and with their own
    w = run_steer(tmp_path / "w", model=str(tmp_path / "m"), concept=colour, negative="swap", guidance=3.5,
                  alphas="0,2", n_per_group=3, n_concept=8, steps=6, window="2:6", pool="flatten", quiet=True)
    lacking = sum(c != colour for c in held)
    assert w["negative"] == "swap" and w["mode"] == "mean_diff" and w["n_concept"] == min(8, lacking)
    assert w["groups"]["generalized"]["output_change_per_unit"] > 0
    per_channel, per_position = (ConceptVector.load(tmp_path / d / "concept").vectors_ for d in ("s", "w"))
    for layer, v in per_position.items():           # one value per channel and position: C·H·W, H·W > 1
        assert v.numel() % per_channel[layer].numel() == 0 and v.numel() > per_channel[layer].numel()


def test_swap_word_replaces_the_word_of_the_concept_s_vocabulary_only():
    from diffmem.steer.experiment import _swap_word
    assert _swap_word("a blue top", "red") == "a red top"                  # a colour replaces the colour
    assert _swap_word("a blue top", "trouser") == "a blue trouser"         # a class word replaces the class
    assert _swap_word("a zorbel quix", "red") == "a zorbel quix"           # nothing of the palette: unchanged
    assert _swap_word("a blue top", "zorbel") == "a blue top"              # a word of no vocabulary


def test_a_whole_activation_vector_is_added_position_by_position(unet):
    """A ``flatten``-pooled concept vector (C·H·W,) is added to each sample at its own positions, not
    broadcast: h + α·v.view(C, H, W)."""
    layer = "up_blocks.0.resnets.1"
    module = dict(unet.denoiser.named_modules())[layer]
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = unet.condition([0, 1])
    h = _output(unet, module, x, cond)                                                 # (2, C, H, W)
    v = torch.randn(h[0].numel(), generator=torch.Generator().manual_seed(3))
    steered = _output(unet, module, x, cond, {layer: v}, 0.5)
    assert torch.allclose(steered - h, 0.5 * v.view(1, *h.shape[1:]).expand_as(h), atol=1e-6)


def test_the_edit_ends_at_the_last_strength_where_shape_or_class_is_kept():
    """By hand: the shape breaks at α = 2 (IoU 0.7) but the class is still kept (0.95), so the edit runs to
    α = 2 and breaks at 3; its gain and monotonicity are read on the curve up to α = 2 only."""
    from diffmem.steer.experiment import _edit
    alphas = [0.0, 1.0, 2.0, 3.0]
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(4, 1, 4, 4, generator=g) for _ in alphas]
    iou = np.array([[1, 0.9, 0.7, 0.5]] * 4)
    kept = np.array([[True, True, True, False]] * 3 + [[True, True, True, True]])      # 1, 1, 1, 0.25 → fails at 3
    scores = np.array([[0.1, 0.2, 0.5, 0.9], [0.1, 0.3, 0.2, 0.9], [0.2, 0.2, 0.4, 0.0], [0.0, 0.1, 0.3, 0.3]])
    e = _edit(imgs, alphas, scores, iou, kept, seed=0)
    assert e["alpha"] == 2.0
    assert e["attribute_gain"] == pytest.approx(np.mean(scores[:, 2] - scores[:, 0]))
    assert e["monotonicity"] == pytest.approx(np.mean([1, 0.5, 1, 1]))
    assert _edit(imgs, alphas, scores, iou, None, seed=0)["alpha"] == 1.0            # IoU alone: breaks at 2
    assert "attribute_gain" not in _edit(imgs, alphas, scores, np.array([[1, 0.5, 0.5, 0.5]] * 4), None, 0)


def test_bad_steering_inputs_fail_with_one_line_naming_them(unet, tiny_bench_model, tmp_path):
    layer = "up_blocks.0.resnets.1"
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with pytest.raises(DiffmemError, match=f"layer '{layer}': a vector of 5 values fits neither"):
        with steering(unet, {layer: torch.ones(5)}, 1.0, (0, 1)):
            unet.denoise(x, 500, unet.condition([0]))
    assert not any(m._forward_hooks for m in unet.denoiser.modules())          # removed on the way out
    with pytest.raises(DiffmemError, match="pool='spatial_max'"):
        SteerConfig(pool="spatial_max")
    from diffmem.commands.steer import steer as run_steer
    with pytest.raises(DiffmemError, match="negative=swap: swaps a word of the captions"):
        run_steer(tmp_path / "s", model=tiny_bench_model, negative="swap", alphas="0,1", quiet=True)
    with pytest.raises(DiffmemError, match="layer 'up_blocks.9': no such module"):
        run_steer(tmp_path / "l", model=tiny_bench_model, layers="up_blocks.9", alphas="0,1", quiet=True)
    assert not (tmp_path / "s").exists() and not (tmp_path / "l").exists()


def test_the_shape_measure_keeps_known_edits_and_rejects_known_smears():
    """Checked before it judges a steered sample: darkening, desaturating and recolouring keep every
    silhouette; moving the garment or swapping it for another does not."""
    from diffmem.steer.attributes import validate_shape_measure
    g = torch.Generator().manual_seed(0)
    x = torch.full((24, 3, 16, 16), -1.0)
    for i in range(24):                                   # garments of random size and place, random colour
        h, w = torch.randint(5, 10, (2,), generator=g).tolist()
        top, left = torch.randint(1, 16 - h, (1,), generator=g).item(), torch.randint(1, 16 - w, (1,), generator=g).item()
        x[i, :, top:top + h, left:left + w] = torch.rand(3, 1, 1, generator=g) * 1.5 - 0.5
    check = validate_shape_measure(x, 0.8)
    assert {k for k, v in check.items() if v["kind"] == "edit"} == {"darker x0.7", "darker x0.5", "half desaturated",
                                                                   "channels rotated", "shaded 1 to 0.6 across"}
    for name, v in check.items():
        if v["kind"] == "edit":                           # shading is not invariant by construction: ≥ 0.8 still
            assert v["share_kept"] == 1.0 and v["mean_iou"] >= (0.8 if name.startswith("shaded") else 1.0), name
    assert check["shifted 4 px"]["share_kept"] < 0.2 and check["another garment"]["share_kept"] < 0.2
    assert check["bounding block"]["mean_iou"] > 0.99      # a rectangle is its own bounding block
