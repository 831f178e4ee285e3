"""Ray across two real nodes (`ray start` head + worker, separate processes on this machine): a
worker node SIGKILLed mid-scan, then the driver SIGKILLed and resumed; every table equals the
local engine's. Every process started here is stopped by its process group."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_args(ports, worker_range):
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    args = [a for name, p in zip(names, ports) for a in (name, str(p))]
    return args + ["--min-worker-port", str(worker_range[0]), "--max-worker-port", str(worker_range[1])]


def _wait_nodes(address, n, env, timeout=120):
    code = (f"import ray, time\nray.init(address={address!r}, logging_level='ERROR')\nt=time.time()\n"
            f"while sum(x['Alive'] for x in ray.nodes()) < {n} and time.time() - t < {timeout}: time.sleep(0.5)\n"
            f"print(sum(x['Alive'] for x in ray.nodes()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout + 60, env=env)
    assert r.stdout.strip().endswith(str(n)), r.stderr[-2000:]


def _scan(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "diffmem", "scan", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_parts(out, k, proc, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if len(list((out / "parts").glob("*.parquet"))) >= k:
            return
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    raise AssertionError("no parts committed")


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    from diffmem.models.tiny import save_tiny_unet2d
    root = tmp_path_factory.mktemp("cluster")
    model = save_tiny_unet2d(root / "unet64", num_classes=None, seed=0, sample_size=64, widths=(32, 64))
    images = root / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (320, 64, 64), dtype=np.uint8))
    from diffmem.commands.probe import scan
    scan(str(model), str(images), str(root / "local"), batch_size=8, part_size=8, threads=1, quiet=True)
    return model, images, pd.read_parquet(root / "local" / "scores.parquet")


@pytest.mark.skipif(not RAY.exists(), reason="Ray not installed (pip install 'diffmem[ray]')")
def test_two_node_scan_survives_a_killed_node_and_a_killed_driver(heavy, tmp_path):
    model, images, local = heavy
    port, *ports = _ports(14)
    address = f"127.0.0.1:{port}"
    # a token left in ~/.ray by another Ray would switch the cluster to token auth: say the mode explicitly
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    started, short = [], tempfile.mkdtemp(prefix="ray", dir="/tmp")    # Unix socket paths must stay short
    try:
        started.append(subprocess.Popen(
            [RAY, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--include-dashboard",
             "false", "--temp-dir", short,
             *_node_args(ports[:6], (23000, 23499))], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_nodes(address, 1, env)
        node = subprocess.Popen([RAY, "start", "--address", address, "--block", "--num-cpus", "1",
                                 *_node_args(ports[6:12], (23500, 23999))], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(node)
        _wait_nodes(address, 2, env)
        common = [model, images, "--engine", "ray", "--ray-address", address, "--workers", "2", "--threads", "1",
                  "--batch-size", "8", "--part-size", "8"]

        # 1. SIGKILL the worker node (raylet and its workers) mid-scan: Ray re-runs the lost tasks
        scan = _scan([*common, "--out", tmp_path / "a"], env=env)
        _wait_parts(tmp_path / "a", 2, scan)
        assert scan.poll() is None and node.poll() is None          # really mid-scan, node alive
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        assert scan.wait(timeout=600) == 0, scan.stderr.read()[-2000:]
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "scores.parquet"), local)

        # 2. SIGKILL the driver mid-scan, then --resume: the same table
        scan = _scan([*common, "--out", tmp_path / "b"], env=env)
        _wait_parts(tmp_path / "b", 2, scan)
        scan.kill()
        scan.wait()
        assert not (tmp_path / "b" / "scores.parquet").exists()
        n_parts = len(list((tmp_path / "b" / "parts").glob("*.parquet")))
        assert 0 < n_parts < len(local) // 8                        # killed unfinished
        resumed = _scan([*common, "--out", tmp_path / "b", "--resume"], env=env)
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "scores.parquet"), local)
    finally:
        for p in reversed(started):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(short, ignore_errors=True)
