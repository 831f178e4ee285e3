import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from diffmem.cli import main
from diffmem.models.tiny import SAVERS
from tests.helpers import write_pngs


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return SAVERS["unet2d"](tmp_path_factory.mktemp("m") / "unet", seed=0)


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "diffmem", *map(str, args)], capture_output=True, text=True,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return p.returncode, p.stdout, p.stderr


def test_layers_lists_names_and_shapes(unet_dir, capsys):
    assert main(["layers", str(unet_dir)]) == 0
    out = capsys.readouterr().out
    assert "up_blocks.0.resnets.1 " in out and "<- default" in out and "calls=" in out
    assert main(["layers", str(unet_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "mid_block" and r["shapes"] == [[1, 32, 8, 8]] for r in rows)


def test_scan_then_eval(unet_dir, tmp_path):
    folder = write_pngs(tmp_path / "imgs", 24)
    assert main(["scan", str(unet_dir), str(folder), "--out", str(tmp_path / "scan"), "--quiet", "--seed", "1"]) == 0
    scores = pd.read_parquet(tmp_path / "scan" / "scores.parquet")
    labels = pd.DataFrame({"path": scores["path"], "label": np.arange(len(scores)) % 2})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    assert main(["eval", str(tmp_path / "scan" / "scores.parquet"), "--labels", str(tmp_path / "labels.csv"),
                 "--n-boot", "100", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score
    assert m["auroc"] == pytest.approx(roc_auc_score(labels["label"], scores["score"]))
    assert {"auroc_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_wen"} <= set(m)
    assert (tmp_path / "eval" / "roc.png").exists() and (tmp_path / "eval" / "score_kde.png").exists()


@pytest.mark.parametrize("case", ["missing", "family", "layer", "npyshape", "t", "empty_folder"])
def test_scan_bad_inputs(unet_dir, tmp_path, case, capfd):
    folder = write_pngs(tmp_path / "imgs", 2)
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer"}))
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), dtype=np.float32))
    (tmp_path / "none").mkdir()
    args = {"missing": [tmp_path / "nope", folder], "family": [weird, folder],
            "layer": [unet_dir, folder, "--layer", "up_blocks.7"], "npyshape": [unet_dir, tmp_path / "bad.npy"],
            "t": [unet_dir, folder, "--t", "5000"], "empty_folder": [unet_dir, tmp_path / "none"]}[case]
    code = main(["scan", *map(str, args), "--out", str(tmp_path / "out"), "--quiet"])
    err = capfd.readouterr().err                                # file-descriptor level: library output too
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("diffmem: error:"), err
    assert {"missing": "no such model folder", "family": "unknown model family", "layer": "no such module",
            "npyshape": "expected images", "t": "integer timestep", "empty_folder": "no image files"}[case] in lines[0]
    assert not (tmp_path / "out").exists()


def test_eval_corrupt_scores_file(tmp_path):
    bad = tmp_path / "scores.parquet"
    bad.write_bytes(b"PAR1 garbage")
    code, _, err = cli("eval", bad, "--out", tmp_path / "e")
    assert code == 2 and "not a readable scores table" in err and not (tmp_path / "e").exists()


def test_probe_benchmark_reports_every_family(tmp_path):
    from diffmem.commands.speed import bench_probe
    r = bench_probe(batch_size=2, reps=1, out=tmp_path / "b", quiet=True)
    assert set(r) == {"unet2d", "stable_diffusion", "dit"}
    layers = {"unet2d": "up_blocks.0.resnets.1", "stable_diffusion": "up_blocks.0.resnets.2.nonlinearity",
              "dit": "transformer_blocks.2"}                   # each tiny model's default layer
    for family, v in r.items():                # timings are reported, never asserted on
        assert v["ratio"] == v["seconds_early_exit"] / v["seconds_full_forward"] and v["batch_size"] == 2
        assert v["layer"] == layers[family]
    assert json.loads((tmp_path / "b" / "probe_bench.json").read_text()) == r
