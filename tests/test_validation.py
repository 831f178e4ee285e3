"""Bad input never crashes and never lies: the input policy, labels, and a CLI fuzzer over every
command's options plus a corpus of malformed models, arrays, manifests and label files. Every case
must give exit status 2, exactly one stderr line starting ``diffmem: error:``, no traceback, and no
file written."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from diffmem.cli import main, parameters
from diffmem.commands import COMMANDS, resolve
from diffmem.data.images import array_to_model_range, read_image
from diffmem.detect.evaluation import read_labels
from diffmem.errors import DiffmemError
from diffmem.models.tiny import SAVERS
from diffmem.data.sources import iter_inputs
from tests.helpers import write_pngs


# -- the input policy ----------------------------------------------------------------------------
def test_arrays_are_read_by_dtype_never_by_values():
    u8 = np.array([[0, 255]], np.uint8)
    assert array_to_model_range(u8, "a").tolist() == [[-1.0, 1.0]]
    u16 = np.array([[0, 255, 65535]], np.uint16)
    assert np.allclose(array_to_model_range(u16, "a"), [[-1.0, 255 / 32767.5 - 1, 1.0]])
    f = np.array([[0.0, 255.0]], np.float32)
    with pytest.raises(DiffmemError, match="input_range="):
        array_to_model_range(f, "a")                              # 0…255 floats are not silently taken
    assert array_to_model_range(f, "a", (0, 255)).tolist() == [[-1.0, 1.0]]
    assert array_to_model_range(np.array([[-1.0005, 1.0]], np.float32), "a").min() == -1.0   # tolerance
    for bad in (np.zeros((2, 2), np.int32), np.zeros((2, 2), bool), np.zeros((2, 2), complex),
                np.zeros(2, dtype=[("a", "f4")])):
        with pytest.raises(DiffmemError, match=r"^a: "):
            array_to_model_range(bad, "a")


def test_sixteen_bit_pngs_are_scaled_by_mode(tmp_path):
    """A 16-bit pixel of 255 and one of 256 are both nearly black (255/65535), never white then black."""
    arr = np.array([[255, 256], [0, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    px = read_image(tmp_path / "x.png")[0]
    assert px[0, 0] < -0.99 and px[0, 1] < -0.99 and px[1, 0] == -1.0 and px[1, 1] == 1.0


def test_manifest_paths_may_not_leave_their_folder(tmp_path):
    write_pngs(tmp_path / "outside", 1, size=16)
    (tmp_path / "m").mkdir()
    man = tmp_path / "m" / "manifest.jsonl"
    man.write_text(json.dumps({"path": "../outside/000.png"}) + "\n")
    with pytest.raises(DiffmemError, match="allow_outside=True"):
        list(iter_inputs(man, 16, 1))
    assert len(list(iter_inputs(man, 16, 1, allow_outside=True))) == 1


def test_npz_labels_must_match_the_images(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3))
    with pytest.raises(DiffmemError, match="one label per image"):
        list(iter_inputs(tmp_path / "a.npz", 8, 1))


def test_labels_collapse_duplicates_and_refuse_conflicts(tmp_path):
    rows = [{"index": i, "label": "1.0" if i < 8 else "0.0"} for i in range(16)]
    good = tmp_path / "l.csv"
    pd.DataFrame(rows * 3).to_csv(good, index=False)                 # every row three times
    df = read_labels(good)
    assert len(df) == 16 and int(df["y"].sum()) == 8
    pd.DataFrame(rows + [{"index": 3, "label": 0}]).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DiffmemError, match=r"c.csv: index 3 has conflicting labels on rows 5, 18"):
        read_labels(tmp_path / "c.csv")


# -- the CLI fuzzer --------------------------------------------------------------------------------
def _bad_values(kind, opt) -> list[str]:
    """Values that every check must refuse for this option."""
    if opt.choices is not None and opt.list_of is None:
        return ["not-a-choice", ""]
    if opt.list_of is not None:
        item = opt.list_of
        bad = [",", "1,,2", ""]
        if item in (int, float):
            bad += ["x,1", "nan" if item is float else "1.5"]
            if opt.min is not None:
                bad.append(f"{opt.min - 1:g}")
        return bad
    if kind is int:
        bad = ["abc", "1.5", "", "1e3"]
        if opt.min is not None:
            bad += [str(int(opt.min) - 1), "-99999999999"]
        return bad
    if kind is float:
        bad = ["nan", "inf", "-inf", "1e999", "abc", ""]
        if opt.min is not None:
            bad.append(f"{opt.min - 1:g}")
        if opt.above is not None:
            bad.append(f"{opt.above:g}")
        if opt.max is not None:
            bad.append(f"{opt.max + 1:g}")
        return bad
    return [""]                                                       # strings: empty


CASES = []
for words in COMMANDS:
    for name, kind, opt, default in parameters(resolve(words)):
        if kind is bool or opt.positional or name == "out":
            continue
        for value in _bad_values(kind, opt):
            CASES.append((words, opt.flag or "--" + name.replace("_", "-"), value))


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """Valid positional arguments for every command (nothing below is expensive once options fail)."""
    root = tmp_path_factory.mktemp("fuzz")
    model = SAVERS["unet2d"](root / "model", seed=0)
    imgs = write_pngs(root / "imgs", 2, size=16)
    pd.DataFrame({"score": [0.1, 0.2], "label": [0, 1]}).to_parquet(root / "scores.parquet")
    return {"MODEL_DIR": str(model), "IMAGES": str(imgs), "SCORES": str(root / "scores.parquet"),
            "DIR": str(root), "root": root}


def _argv(words, valid, out, extra):
    argv = [*(w for w in words if w != "memorization"), *(["memorization"] if "memorization" in words else [])]
    fn = resolve(words)
    for name, kind, opt, default in parameters(fn):
        if opt.positional and default is not __import__("inspect").Parameter.empty:
            continue
        if opt.positional:
            argv.append(valid[opt.metavar])
    if "out" in {p[0] for p in parameters(fn)}:
        argv += ["--out", str(out)]
    return argv + extra


def _assert_refused(capsys, code, out, words: str = ""):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("diffmem: error:") and words in lines[0], (lines, words)
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(case=st.sampled_from(CASES))
def test_fuzz_every_option_with_bad_values(valid, capsys, case):
    words, flag, value = case
    out = valid["root"] / "never"
    code = main(_argv(words, valid, out, [flag, value]))
    _assert_refused(capsys, code, out, flag)                  # the error names the option


def test_fuzz_covers_every_command_with_options():
    covered = {w for w, _, _ in CASES}
    with_options = {w for w in COMMANDS if any(not (k is bool or o.positional or n == "out")
                                                for n, k, o, _ in parameters(resolve(w)))}
    assert covered == with_options and len(CASES) > 150


# -- the corpus of malformed inputs ----------------------------------------------------------------
def _corpus(root):
    """(name, argv) pairs, each refused before any work."""
    model = SAVERS["unet2d"](root / "model", seed=0)
    imgs = write_pngs(root / "imgs", 2, size=16)
    cases = []

    def broken(name, mutate):
        import shutil
        d = root / name
        shutil.copytree(model, d)
        mutate(d)
        cases.append((name, ["scan", str(d), str(imgs)]))
    broken("config_list", lambda d: (d / "unet" / "config.json").write_text("[]"))
    broken("config_latin1", lambda d: (d / "unet" / "config.json").write_bytes(b"\xff\xfe{}"))
    broken("index_list", lambda d: (d / "model_index.json").write_text("[]"))
    broken("unknown_family", lambda d: (d / "model_index.json").write_text('{"_class_name": "Nope"}'))

    def shapes(d):
        cfg = json.loads((d / "unet" / "config.json").read_text())
        cfg["block_out_channels"] = [c * 2 for c in cfg["block_out_channels"]]
        (d / "unet" / "config.json").write_text(json.dumps(cfg))
    broken("shapes_disagree", shapes)

    def pickled(d):
        w = d / "unet" / "diffusion_pytorch_model.safetensors"
        w.rename(w.with_suffix(".bin"))
    broken("pickle_weights", pickled)
    broken("missing_unet", lambda d: __import__("shutil").rmtree(d / "unet"))
    broken("bad_record", lambda d: (d / "diffmem.json").write_text('{"data": 1}'))

    def edit(part, **changes):
        def mutate(d):
            path = d / part
            cfg = json.loads(path.read_text())
            cfg.update(changes)
            path.write_text(json.dumps(cfg))
        return mutate
    broken("sample_size_text", edit("unet/config.json", sample_size="sixteen"))
    broken("channels_zero", edit("unet/config.json", in_channels=0))
    broken("scheduler_unknown", edit("scheduler/scheduler_config.json", _class_name="NoSuchScheduler"))
    broken("scheduler_not_a_scheduler", edit("scheduler/scheduler_config.json", _class_name="UNet2DModel"))
    broken("timesteps_text", edit("scheduler/scheduler_config.json", num_train_timesteps="many"))
    broken("timesteps_zero", edit("scheduler/scheduler_config.json", num_train_timesteps=0))
    broken("beta_nan", edit("scheduler/scheduler_config.json", beta_end=float("nan")))
    record = {"data": "fashion-mnist", "size": 16, "indices": [0, 1], "copies": [1, 1]}
    for name, bad in (("record_counts_disagree", {"copies": [1]}), ("record_zero_copies", {"copies": [0, 1]}),
                      ("record_captions_not_text", {"captions": [1, 2]}), ("record_size_text", {"size": "16"})):
        broken(name, lambda d, bad=bad: (d / "diffmem.json").write_text(json.dumps({**record, **bad})))
    (root / "det_list").mkdir()
    (root / "det_list" / "detector.json").write_text("[]")
    cases.append(("detector_json_list", ["scan", str(model), str(imgs), "--detector", str(root / "det_list")]))
    (root / "det_kind").mkdir()
    (root / "det_kind" / "detector.json").write_text(json.dumps({"kind": "SVM", "params": {}, "t": 10}))
    cases.append(("detector_wrong_kind", ["scan", str(model), str(imgs), "--detector", str(root / "det_kind")]))
    np.save(root / "floats255.npy", np.full((2, 16, 16), 200.0, np.float32))
    cases.append(("float_array_0_255", ["scan", str(model), str(root / "floats255.npy")]))
    np.save(root / "int32.npy", np.zeros((2, 16, 16), np.int32))
    cases.append(("int32_array", ["scan", str(model), str(root / "int32.npy"), "--on-error", "fail"]))
    np.savez(root / "badlabels.npz", images=np.zeros((3, 16, 16), np.uint8), labels=np.zeros((3, 2)))
    cases.append(("npz_label_shape", ["scan", str(model), str(root / "badlabels.npz")]))
    (root / "escape").mkdir()
    (root / "escape" / "m.jsonl").write_text(json.dumps({"path": "../imgs/000.png"}) + "\n")
    cases.append(("manifest_escape", ["scan", str(model), str(root / "escape" / "m.jsonl")]))
    (root / "bad.jsonl").write_text("{not json\n")
    cases.append(("manifest_json", ["scan", str(model), str(root / "bad.jsonl")]))
    pd.DataFrame({"score": [0.1, 0.2, 0.3], "index": [0, 1, 2], "error": None}).to_parquet(root / "s.parquet")
    pd.DataFrame({"index": [0, 0, 1, 2], "label": [1, 0, 1, 0]}).to_csv(root / "conflict.csv", index=False)
    cases.append(("labels_conflict", ["eval", str(root / "s.parquet"), "--labels", str(root / "conflict.csv")]))
    (root / "bad.parquet").write_bytes(b"not parquet")
    cases.append(("scores_corrupt", ["eval", str(root / "bad.parquet")]))
    pd.DataFrame({"score": [0.1, 0.2], "path": ["a.png", "b.png"], "label": [1, 0]}).to_parquet(root / "p.parquet")
    cases.append(("eval_text_column", ["eval", str(root / "p.parquet"), "--column", "path"]))
    pd.DataFrame({"score": [0.1, 0.2, 0.3], "sha256": ["x", "x", "y"], "label": [1, 0, 0]}).to_parquet(root / "c.parquet")
    cases.append(("eval_own_labels_conflict", ["eval", str(root / "c.parquet")]))
    pd.DataFrame({"score": [0.1, float("nan")], "index": [0, 1], "label": [1, 0]}).to_parquet(root / "n.parquet")
    cases.append(("eval_nan_scores", ["eval", str(root / "n.parquet")]))
    for name, shape in (("zero_size", (4, 0, 0)), ("five_channels", (3, 5, 16, 16)), ("no_images", (0, 16, 16))):
        np.save(root / f"{name}.npy", np.zeros(shape, np.uint8))
        cases.append((f"array_{name}", ["scan", str(model), str(root / f"{name}.npy")]))
        cases.append((f"audit_reference_{name}", ["audit", str(model), "--n", "2", "--reference", str(root / f"{name}.npy")]))
    cases.append(("scan_huge_batch", ["scan", str(model), str(root / "five_channels.npy"), "--batch-size",
                                      "1000000000000"]))
    (root / "mixed").mkdir()
    for i, side in enumerate((8, 12)):
        Image.fromarray(np.zeros((side, side), np.uint8)).save(root / "mixed" / f"{i}.png")
    cases.append(("theory_mixed_sizes", ["theory", "weights", "--data", str(root / "mixed"), "--n", "2"]))
    cases.append(("calibration_unknown", ["audit", str(model), "--n", "2", "--reference", str(imgs),
                                          "--calibration", "oracle"]))
    (root / "afile").write_text("x")
    cases.append(("out_is_a_file_below", ["theory", "phase", "--units", "4"]))
    cases.append(("unconditional_classes", ["sample", str(model), "--classes", "11"]))
    cases.append(("steer_without_record", ["steer", str(model), "--concept", str(imgs)]))
    cases.append(("audit_without_reference", ["audit", str(model), "--n", "2"]))
    cases.append(("sample_huge_n", ["sample", str(model), "--n", "1000000000000"]))
    cases.append(("monitor_never_runs", ["train", "--steps", "100", "--monitor"]))
    cases.append(("sd_with_pixel_data", ["train", "--family", "sd", "--data", str(imgs)]))
    cases.append(("pixel_with_sd_option", ["train", "--vae-steps", "10"]))
    narrow = SAVERS["unet2d"](root / "narrow", seed=0, widths=(8, 16))
    cases.append(("monitor_mixed_architectures", ["monitor", str(model), str(narrow)]))
    small = SAVERS["unet2d"](root / "small", seed=0, sample_size=8)
    cases.append(("monitor_mixed_sizes", ["monitor", str(model), str(small)]))
    cases.append(("audit_huge_n", ["audit", str(model), "--n", "1000000000000", "--reference", str(imgs)]))
    cases.append(("audit_bad_input_range", ["audit", str(model), "--images", str(root / "floats255.npy"),
                                            "--reference", str(imgs), "--input-range", "5,1"]))
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, _corpus(root)


def test_corpus_of_malformed_inputs(corpus, capsys):
    root, cases = corpus
    for name, argv in cases:
        out = root / f"out_{name}"
        if name == "out_is_a_file_below":
            out = root / "afile" / "below"
        full = [*argv, "--quiet", "--out", str(out)] if name != "out_is_a_file_below" else [*argv, "--out", str(out)]
        code = main(full)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("diffmem: error:"), (name, captured.err)
        assert "Traceback" not in captured.err and not out.exists(), name
        given = [a for a in argv if a not in ("--quiet", "--out")]                # not the out folder
        named = {Path(a).name for a in given if "/" in a} | {a for a in given if a.startswith("--")}
        named |= {"--out"} if name == "out_is_a_file_below" else set()
        assert any(n in lines[0] for n in named), (name, lines[0])        # it names the input or the option
        if name == "pickle_weights":
            assert "--allow-pickle" in lines[0]
        if name.startswith("monitor_mixed"):
            assert "not a checkpoint of the same model" in lines[0], lines[0]
        if name == "missing_unet":
            assert "unet" in lines[0] and "hub" not in lines[0].lower()
        if name == "float_array_0_255":
            assert "--input-range" in lines[0]


def test_a_failing_command_leaves_no_empty_parent_folders(tmp_path, capsys):
    model = SAVERS["unet2d"](tmp_path / "model", seed=0)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "missing.png"}) + "\n")
    out = tmp_path / "a" / "b" / "c"
    assert main(["scan", str(model), str(tmp_path / "bad.jsonl"), "--on-error", "fail", "--quiet",
                 "--out", str(out)]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    from diffmem.outputs import output_dir
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "x" / "y" / "z"):
            raise RuntimeError
    assert not (tmp_path / "x").exists()


def test_guidance_that_blows_up_writes_nothing(tmp_path, capsys):
    model = SAVERS["unet2d"](tmp_path / "model", seed=0)
    out = tmp_path / "samples"
    code = main(["sample", str(model), "--n", "2", "--steps", "3", "--guidance", "1e30", "--quiet",
                 "--out", str(out)])
    _assert_refused(capsys, code, out, "made the samples non-finite at step")


def test_guidance_blow_up_names_the_step(tmp_path):
    from diffmem.errors import DiffmemError
    from diffmem.models import load_adapter
    from diffmem.probe.sampling import Sampler, sample
    a = load_adapter(SAVERS["unet2d"](tmp_path / "model", seed=0))
    with pytest.raises(DiffmemError, match=r"guidance 1e\+30 made the samples non-finite at step [12] of 3"):
        sample(a, 2, [0, 1], how=Sampler(guidance=1e30, steps=3), quiet=True)
