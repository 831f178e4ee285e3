"""Resumable scans (SIGKILL at several points), the Ray engine, and a corpus of bad inputs."""

import json
from pathlib import Path
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from diffmem.errors import DiffmemError
from diffmem.models import load_adapter
from diffmem.models.tiny import SAVERS
from diffmem.scan import ScanConfig, scan
from diffmem.data.sources import iter_inputs
from tests.helpers import write_pngs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return SAVERS["unet2d"](tmp_path_factory.mktemp("m") / "unet", seed=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("imgs") / "imgs", 96)


def scan_cmd(model_dir, folder, out, *extra):
    return [sys.executable, "-m", "diffmem", "scan", str(model_dir), str(folder), "--out", str(out), "--quiet",
            "--batch-size", "8", "--part-size", "16", "--repeats", "6", "--seed", "3", *extra]


ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def clean_out(model_dir, folder, tmp_path_factory):
    """A finished scan (in a subprocess of one thread, like the killed ones)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    subprocess.run(scan_cmd(model_dir, folder, out), check=True, env=ENV, capture_output=True)
    return out


@pytest.fixture(scope="module")
def clean_table(clean_out):
    return pd.read_parquet(clean_out / "scores.parquet")


def finished_copy(clean_out, tmp_path):
    """A copy of the finished scan's folder, to be scanned into again."""
    import shutil
    return shutil.copytree(clean_out, tmp_path / "o")


def scan_main(capfd, model_dir, folder, out, *extra):
    """The scan command in this process: (exit status, stderr lines)."""
    from diffmem.cli import main
    code = main(scan_cmd(model_dir, folder, out, *extra)[3:])
    return code, [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("kill_after_parts", [0, 3])
def test_killed_scan_resumes_to_the_clean_table(model_dir, folder, clean_table, tmp_path, kill_after_parts):
    out = tmp_path / "out"
    proc = subprocess.Popen(scan_cmd(model_dir, folder, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "parts").glob("part-*.parquet"))) >= kill_after_parts and (out / "parts").exists():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the scan was really cut short: killed, unfinished, so the resume below has work to do
    assert proc.returncode == -signal.SIGKILL and not (out / "scores.parquet").exists()
    done = len(list((out / "parts").glob("part-*.parquet"))) if (out / "parts").exists() else 0
    assert done < 6
    # a half-written part never counts: every committed part reads back whole
    for f in (out / "parts").glob("part-*.parquet") if done else []:
        assert len(pd.read_parquet(f)) == 16
    r = subprocess.run(scan_cmd(model_dir, folder, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = pd.read_parquet(out / "scores.parquet")
    pd.testing.assert_frame_equal(table, clean_table, check_exact=True)
    assert json.loads((out / "summary.json").read_text())["new_rows"] == 96 - 16 * done   # resumed, not redone
    assert table["index"].tolist() == list(range(96))


def test_restart_without_resume_is_refused(model_dir, folder, clean_out, tmp_path, capfd):
    out = finished_copy(clean_out, tmp_path)
    before = (out / "scores.parquet").read_bytes()
    code, err = scan_main(capfd, model_dir, folder, out)
    assert code == 2 and len(err) == 1 and "--resume" in err[0]
    code, err = scan_main(capfd, model_dir, folder, out, "--resume", "--t", "20")
    assert code == 2 and len(err) == 1 and "cannot resume: t differs" in err[0]
    assert (out / "scores.parquet").read_bytes() == before                  # the finished scan is untouched


def test_resume_fingerprints_refuse_another_model_or_input_source(model_dir, folder, clean_out, tmp_path, capfd):
    """A resumed scan must see the same model weights, the same input keys and the same batch size."""
    out = finished_copy(clean_out, tmp_path)
    other_model = SAVERS["unet2d"](tmp_path / "other", seed=1)            # same config, other weights
    fewer = write_pngs(tmp_path / "fewer", 95)
    for args, item in (([other_model, folder], "model_weights"), ([model_dir, fewer], "inputs"),
                       ([model_dir, folder, "--batch-size", "4"], "batch_size")):
        code, err = scan_main(capfd, *args[:2], out, "--resume", *args[2:])   # a repeated option: the last counts
        assert code == 2 and len(err) == 1 and f"cannot resume: {item} differs" in err[0], (item, err)


def test_ray_engine_equals_local_engine(model_dir, tmp_path):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'diffmem[ray]')")
    from diffmem.commands.probe import scan as run_scan
    folder = write_pngs(tmp_path / "imgs", 40)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    # one thread, like each Ray worker: kernels then reduce in the same order
    local = run_scan(model_dir, folder, tmp_path / "local", batch_size=8, part_size=16, seed=2, threads=1,
                     quiet=True)
    ray = run_scan(model_dir, folder, tmp_path / "ray", batch_size=8, part_size=16, seed=2, engine="ray",
                   workers=2, quiet=True)
    a, b = pd.read_parquet(tmp_path / "local" / "scores.parquet"), pd.read_parquet(tmp_path / "ray" / "scores.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert local["n_errors"] == ray["n_errors"] == 1 and ray["engine"] == "ray"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def fault_corpus(folder):
    """Files a real scan meets: the good ones and every kind of bad one."""
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / "good_gray.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(folder / "good_rgba.png")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(folder / "good_16bit.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P").save(folder / "good_palette.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(folder / "good.jpg")
    full = (folder / "good_gray.png").read_bytes()
    (folder / "bad_truncated.png").write_bytes(full[:len(full) // 2])
    (folder / "bad_empty.png").write_bytes(b"")
    (folder / "bad_text.png").write_text("this is not an image")
    (folder / "bad_random.webp").write_bytes(rng.bytes(300))
    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    (folder / "bad_huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
                                          _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    (folder / "dir.png").mkdir()
    return folder


def test_fault_corpus_never_crashes_a_scan(model_dir, tmp_path):
    folder = fault_corpus(tmp_path / "corpus")
    s = scan(load_adapter(model_dir), folder, tmp_path / "out", quiet=True)
    df = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    good = df[df.path.str.contains("/good")]
    bad = df[df.path.str.contains("/bad_")]
    assert len(good) == 5 and good["error"].isna().all() and np.isfinite(good["score"]).all()
    assert len(bad) == 5 and bad["error"].notna().all() and bad["score"].isna().all()
    assert bad.set_index(bad.path.str.rsplit("/", n=1).str[-1])["error"]["bad_huge.png"].count("too large") == 1
    assert s["n_inputs"] == 10
    with pytest.raises(DiffmemError, match="bad_"):
        scan(load_adapter(model_dir), folder, tmp_path / "out2", ScanConfig(on_error="fail"), quiet=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a"]))
def test_image_loader_fuzz(tmp_path, data, prefix):
    from diffmem.data.images import read_image
    path = tmp_path / "fuzz.png"
    path.write_bytes(prefix + data)
    try:
        x = read_image(path, size=8, channels=1)
    except DiffmemError as exc:
        assert "fuzz.png" in str(exc)
    else:
        assert x.shape == (1, 8, 8) and np.isfinite(x).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
@example(text='{"path": "ok.png"}\n{"path": "bad.png"}')
def test_manifest_loader_fuzz(tmp_path, text):
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    man = tmp_path / "m.jsonl"
    man.write_text(text)
    try:
        items = list(iter_inputs(man, 8, 1))
    except DiffmemError as exc:
        assert "m.jsonl" in str(exc)                                 # the error names the manifest
        return
    for it in items:
        try:
            x, _ = it.loader()
        except DiffmemError as exc:
            assert Path(it.path).name in str(exc), (it.path, str(exc))    # the error names the item
        else:
            assert x.shape == (1, 8, 8) and np.isfinite(x).all()


def test_fatal_error_before_any_part_leaves_nothing(model_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(DiffmemError, match="a.png: empty file"):
        scan(load_adapter(model_dir), folder, tmp_path / "out", ScanConfig(on_error="fail"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_scan_and_python_api_give_the_same_score_for_the_same_image(model_dir, tmp_path):
    """One image identity: the key of the decoded model-input image seeds the noise in both paths."""
    import torch
    from diffmem.data import load_images
    from diffmem.detect import SpikinessDetector
    folder = write_pngs(tmp_path / "same", 6, size=16)
    adapter = load_adapter(model_dir)
    table = scan(adapter, folder, tmp_path / "out", ScanConfig(batch_size=4, seed=5), quiet=True)
    df = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    images = torch.from_numpy(load_images(folder, size=16, channels=1))
    api = SpikinessDetector(adapter, seed=5, batch_size=4).score(images)
    assert table["n_scored"] == 6
    np.testing.assert_allclose(df["score"].to_numpy(), api, rtol=1e-6)


def test_engine_throughput_reports_marginal_speed_and_equal_rows(model_dir, monkeypatch):
    from diffmem.scan import bench
    monkeypatch.setattr(bench, "ENGINES", {k: v for k, v in bench.ENGINES.items() if v.kind == "local"})
    res = bench.engine_throughput(model_dir, 16, 32, 128, batch_size=8, part_size=64, quiet=True)
    assert res["part_size"] == 8                                 # small runs still give every worker blocks
    assert {"local_1_thread", "local_2_threads"} <= set(res)       # speeds are printed, never asserted on
    assert res["rows_equal"] and res["bit_identical"] and res["max_abs_diff"] < 1e-4


def test_smoke_peak_rss_of_a_memmap_scan_is_measured(model_dir):
    from diffmem.scan.bench import peak_rss_mb
    assert 50 < peak_rss_mb(model_dir, 64, batch_size=16, part_size=32) < 10_000


def test_scan_refuses_a_detector_of_other_weights_unless_allowed(tmp_path, capsys):
    from diffmem.cli import main
    from diffmem.data.records import HYBRID
    other = str(HYBRID.parent / "memorize")
    imgs = write_pngs(tmp_path / "imgs", 4, size=16)
    argv = ["scan", other, str(imgs), "--detector", str(HYBRID / "detector"), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--allow-other-model" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv, "--allow-other-model", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "scores.parquet").is_file()
