"""The schemas of the files diffmem writes and reads: every shipped file validates, and a file of the
wrong shape is one error naming the file, the key and the problem."""

import json
from pathlib import Path

import pytest

from diffmem.data.records import ASSETS
from diffmem.errors import DiffmemError
from diffmem.schemas import (ClassifierFile, ComponentConfig, DetectorFile, MonitorFile, RecordFile, SchedulerConfig,
                             ZooFile, read_result, validate, write_result)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHIPPED = [*((p, RecordFile) for p in sorted(ASSETS.rglob("diffmem.json"))),
           (ASSETS / "bench" / "hybrid" / "detector" / "detector.json", DetectorFile),
           (ASSETS / "classifier" / "classifier.json", ClassifierFile),
           *((p, ComponentConfig) for p in sorted(ASSETS.rglob("config.json"))),
           *((p, SchedulerConfig) for p in sorted(ASSETS.rglob("scheduler_config.json"))),
           (DOCS / "zoo" / "zoo.json", ZooFile), (DOCS / "monitor_demo" / "monitor.json", MonitorFile)]


@pytest.mark.parametrize("path, schema", SHIPPED, ids=lambda v: str(v).split("src/diffmem/")[-1] if isinstance(v, Path) else "")
def test_every_shipped_file_validates_and_keeps_its_keys(path, schema):
    raw = json.loads(path.read_text())
    back = read_result(path, schema)
    assert set(raw) <= set(back)                                # nothing dropped (extra keys kept)
    assert all(back[k] == (pytest.approx(raw[k]) if isinstance(raw[k], float) else raw[k]) for k in raw)


@pytest.mark.parametrize("schema, data, key, problem", [
    (ComponentConfig, {"sample_size": "sixteen"}, "sample_size", "valid integer"),
    (ComponentConfig, {"sample_size": [16, 0]}, "sample_size.1", "greater than or equal to 1"),
    (ComponentConfig, {"layers_per_block": True}, "layers_per_block", "valid integer"),
    (SchedulerConfig, {"num_train_timesteps": "many"}, "num_train_timesteps", "valid integer"),
    (SchedulerConfig, {"num_train_timesteps": 0}, "num_train_timesteps", "greater than or equal to 2"),
    (SchedulerConfig, {"beta_end": float("nan")}, "beta_end", "finite number"),
    (RecordFile, {"data": "x.npy", "size": 16, "indices": [0, 1], "copies": [1]}, "(top)", "2 indices but 1 copy"),
    (RecordFile, {"data": "x.npy", "size": 16, "indices": [-1], "copies": [1]}, "indices.0", "greater than or equal"),
    (RecordFile, {"data": "x.npy", "size": 0, "indices": [0], "copies": [1]}, "size", "greater than or equal to 1"),
    (RecordFile, {"data": "x.npy", "size": 16, "indices": [0, 3], "copies": [1, 1], "captions": ["a"]}, "(top)",
     "1 captions, but indices reach 3"),
    (DetectorFile, {"kind": "FusionDetector", "params": {}, "t": 10, "features": ["residual"], "intercept": 0,
                    "threshold": float("inf"), "fpr": 0.01}, "threshold", "finite number"),
    (DetectorFile, {"kind": "Other"}, "kind", "'FusionDetector'"),
    (MonitorFile, {"runs": {"r": {"alarm_step": 1.5, "baselines": {}, "checkpoints": []}}}, "runs.r.alarm_step",
     "valid integer"),
])
def test_a_wrong_shape_names_the_key_and_the_problem(schema, data, key, problem):
    with pytest.raises(DiffmemError) as exc:
        validate(data, schema, "f.json")
    msg = str(exc.value)
    assert msg.startswith("f.json: not a valid ") and f"(key {key}: " in msg and problem in msg, msg


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    """A NaN threshold becomes null in JSON; the writer catches it before the file exists."""
    good = json.loads((ASSETS / "bench" / "hybrid" / "detector" / "detector.json").read_text())
    write_result(tmp_path / "ok.json", good, DetectorFile)
    assert read_result(tmp_path / "ok.json", DetectorFile)["threshold"] == good["threshold"]
    with pytest.raises(DiffmemError, match=r"bad.json: would not be a valid detector.json \(key threshold: "):
        write_result(tmp_path / "bad.json", {**good, "threshold": float("nan")}, DetectorFile)
    assert not (tmp_path / "bad.json").exists()
