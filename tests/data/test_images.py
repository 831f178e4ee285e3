"""One image pipeline: every input format and entry point gives the same model inputs."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from diffmem.data import Source, load_images, to_model_input
from diffmem.data.images import read_image
from diffmem.errors import DiffmemError


def _formats(tmp_path, arr: np.ndarray) -> dict:
    """The same uint8 images (N, H, W) or (N, H, W, 3) as .npy, NCHW .npy, .npz, a PNG folder and a manifest."""
    folder = tmp_path / "png"
    folder.mkdir()
    lines = []
    for i, im in enumerate(arr):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
        lines.append(json.dumps({"path": f"png/{i:03d}.png", "label": i % 2}))
    np.save(tmp_path / "a.npy", arr)
    np.save(tmp_path / "nchw.npy", arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "a.npz", images=arr)
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    return {k: tmp_path / v for k, v in (("npy", "a.npy"), ("nchw", "nchw.npy"), ("npz", "a.npz"),
                                         ("folder", "png"), ("manifest", "m.jsonl"))}


@pytest.mark.parametrize("rgb", [False, True])
def test_array_png_folder_and_manifest_give_identical_model_inputs(tmp_path, rgb):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 28, 28, 3) if rgb else (5, 28, 28), dtype=np.uint8)
    paths = _formats(tmp_path, arr)
    for size, channels in [(16, 1), (28, 1), (16, 3), (40, 3)]:
        want = to_model_input(arr, "images", size, channels)                       # (5, channels, size, size)
        assert want.shape == (5, channels, size, size) and want.dtype == np.float32
        for kind, path in paths.items():
            whole = load_images(path, size=size, channels=channels)              # --reference, --train, --probe, …
            streamed = np.stack([it.loader()[0] for it in Source(path, size, channels).items()])  # scan, eval, audit
            assert np.array_equal(whole, want), (kind, size, channels)
            assert np.array_equal(streamed, want), (kind, size, channels)
    one = read_image(paths["folder"] / "002.png", size=16, channels=1)
    assert np.array_equal(one, to_model_input(arr[2:3], "x", 16, 1)[0])


def test_pipeline_steps_are_the_documented_ones():
    a = np.zeros((1, 4, 4), np.uint8)
    a[0, :2, :2] = 255                                                           # one white quadrant
    x = to_model_input(a, "a", 2, 1)
    assert np.allclose(x[0, 0], [[1, -1], [-1, -1]])                              # area averaging
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0] = 255                                                            # pure red
    gray = to_model_input(rgb, "rgb", None, 1)
    assert np.allclose(gray, 0.299 * 2 - 1, atol=1e-6)                           # luma weights
    rgba = np.zeros((1, 2, 2, 4), np.uint8)                                      # transparent black
    assert np.allclose(to_model_input(rgba, "rgba", None, 3), 1.0)               # over white


def test_fashion_mnist_loader_goes_through_the_same_pipeline(tmp_path):
    from diffmem.data.records import SUBSET, fashion_mnist_reference
    if not SUBSET.exists():
        pytest.fail(f"{SUBSET} is shipped with the package")
    pixels = np.load(SUBSET)["test_images"][:20]                                  # (20, 28, 28) uint8
    folder = tmp_path / "fm"
    folder.mkdir()
    for i, im in enumerate(pixels):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    ref, _ = fashion_mnist_reference(16, n=20)
    assert np.array_equal(ref.numpy(), load_images(folder, size=16, channels=1))


@pytest.mark.parametrize("shape, message", [((4, 0, 0), "no pixels"), ((0, 8, 8), "no pixels"),
                                            ((3, 5, 16, 16), "1, 3 or 4 channels"),
                                            ((3, 16, 16, 2), "1, 3 or 4 channels"), ((16,), "expected images")])
def test_shapes_outside_the_policy_are_refused_before_any_work(tmp_path, shape, message):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(DiffmemError, match=message):
        load_images(path, size=8, channels=1)
    if len(shape) >= 3 and shape[0] > 0:
        with pytest.raises(DiffmemError, match=message):
            Source(path, 8, 1)                                                    # at construction, not per row


def test_nhwc_arrays_are_read_as_images_everywhere(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", arr)
    x = load_images(tmp_path / "nhwc.npy")                                        # train --data keeps channels
    want = arr.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1               # a transpose, not a reshape
    assert x.shape == (3, 3, 12, 12) and np.allclose(np.asarray(x), want, atol=1e-6)


def test_mixed_sizes_need_a_size(tmp_path):
    for i, s in enumerate((8, 10)):
        Image.fromarray(np.zeros((s, s), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DiffmemError, match="different shapes"):
        load_images(tmp_path)
    assert load_images(tmp_path, size=8).shape == (2, 1, 8, 8)


def test_float_and_16_bit_image_files_follow_their_mode(tmp_path):
    f = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    assert np.allclose(read_image(tmp_path / "f.tiff"), f[None], atol=1e-6)       # floats are [-1, 1] …
    Image.fromarray((f + 1) / 2, mode="F").save(tmp_path / "unit.tiff")
    assert np.allclose(read_image(tmp_path / "unit.tiff", input_range=(0, 1)), f[None], atol=1e-6)  # … or say so
    Image.fromarray(np.full((8, 8), 2.0, np.float32), mode="F").save(tmp_path / "big.tiff")
    with pytest.raises(DiffmemError, match="outside"):
        read_image(tmp_path / "big.tiff")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "w16.png")
    assert np.allclose(read_image(tmp_path / "w16.png"), 1.0)


DTYPES = [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 6), min_size=1, max_size=5), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([1.0, 255.0, float("nan")]), size=st.sampled_from([None, 3, 8]),
       channels=st.sampled_from([None, 1, 3]))
def test_pipeline_fuzz_gives_a_model_input_or_one_diffmem_error(shape, dtype, scale, size, channels):
    """Any array: either float32 (N, C, S, S) in [-1, 1] with no NaN, or a DiffmemError — never another exception."""
    with np.errstate(invalid="ignore"):
        a = (np.random.default_rng(0).random(shape) * scale).astype(dtype)
    try:
        x = to_model_input(a, "fuzz", size, channels)
    except DiffmemError:
        return
    assert x.dtype == np.float32 and x.ndim == 4 and np.isfinite(x).all() and np.abs(x).max() <= 1
    assert x.shape[1] in ((1, 3) if channels is None else (channels,))
    assert size is None or x.shape[2:] == (size, size)
    if dtype == np.uint8 and size is None and a.ndim == 4 and a.shape[1] == x.shape[1] and a.shape[-1] > 4:
        assert np.allclose(x, a / 127.5 - 1, atol=1e-6)                           # NCHW bytes map linearly
