"""The report: content, errors, and a real headless-Chromium load (skipped, with the reason, when
Chromium or its driver is not installed)."""

import json
import re
import shutil

import numpy as np
import pytest

from diffmem.cli import main
from diffmem.errors import DiffmemError
from diffmem.report import build_report

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder made by real commands: an evaluation, a tiny phase diagram, a tuning file."""
    import pandas as pd
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    pd.DataFrame({"score": np.r_[rng.normal(1, 1, 40), rng.normal(0, 1, 60)],
                  "label": np.r_[np.ones(40), np.zeros(60)].astype(int), "error": None}
                 ).to_parquet(root / "scores.parquet")
    assert main(["eval", str(root / "scores.parquet"), "--n-boot", "50", "--quiet", "--out", str(root / "eval")]) == 0
    assert main(["theory", "phase", "--n-per-cluster", "1,4", "--units", "4", "--steps", "20", "--quiet",
                 "--out", str(root / "theory")]) == 0
    # a real audit of a tiny model on given images, with references and a training set
    from diffmem.models.tiny import SAVERS
    from tests.helpers import write_pngs
    model = SAVERS["unet2d"](root.parent / "tiny_model", num_classes=None, seed=0)
    write_pngs(root.parent / "audit_images", 12, size=16)
    write_pngs(root.parent / "audit_reference", 20, size=16, seed=1)
    assert main(["audit", str(model), "--images", str(root.parent / "audit_images"), "--reference",
                 str(root.parent / "audit_reference"), "--train", str(root.parent / "audit_images"), "--quiet",
                 "--n-boot", "50", "--out", str(root / "audit")]) == 0
    assert main(["monitor", str(model), "--probe", str(root.parent / "audit_images"), "--reference",
                 str(root.parent / "audit_reference"), "--quiet", "--out", str(root / "monitor")]) == 0
    (root / "bench").mkdir()
    cands = [{"setting": {"layer": "mid_block", "t": 10}, "key": "layer=mid_block,t=10", "auroc": 0.9},
             {"setting": {"layer": "up_blocks.0", "t": 50}, "key": "layer=up_blocks.0,t=50", "auroc": 0.2}]
    (root / "bench" / "tuning.json").write_text(json.dumps({"0": {"spikiness": {"chosen": cands[0]["setting"],
                                                                                  "candidates": cands}}}))
    return root


def test_report_embeds_everything_and_references_nothing_outside(results):
    path = build_report(results)
    html = path.read_text()
    assert html.count("data:image/png;base64,") >= 6         # audit ×2, roc, kde, phase, per-layer bars
    assert "http://" not in html and "https://" not in html and "src=\"data:" in html
    assert "per-layer AUROC" in html and "Flags per class or prompt" in html
    assert "Training monitor" in html and "When each alarm fired" in html     # monitor.png and its table
    audit = json.loads((results / "audit" / "audit.json").read_text())
    assert html.index(audit["verdict"].split(" (")[0]) < html.index("<h2")   # the verdict comes first
    assert str(results) not in html and str(results.parent) not in html       # no absolute paths
    assert "n_report." not in html and "share_flagged" not in html             # no raw JSON keys
    assert html.count("<figcaption>") == html.count("<img") and "Look for" in html
    assert len(html.encode()) <= 2_000_000
    assert audit["images"] == str(results.parent / "audit_images")            # paths as the user gave them
    assert 0 <= audit["realized_fpr_reference"] <= 1 and audit["n"] == 12 and audit["n_reference"] == 10  # half: the other half fits the Gaussian denoiser


def test_report_errors(tmp_path):
    with pytest.raises(DiffmemError, match="no diffmem results"):
        build_report(tmp_path)
    (tmp_path / "bench.json").write_text("{not json")
    with pytest.raises(DiffmemError, match="bench.json: not valid JSON"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


_MS = {"mean": 0.5, "sd": 0.1}


@pytest.mark.parametrize("name, content, key", [
    ("bench.json", {"seeds": [0], "methods": {}}, "split"),
    ("bench.json", {"seeds": [0], "split": {"overlap": 0}, "methods": {"m": {"auroc": _MS}}}, "methods.m.tpr_at_1pct_fpr"),
    ("bench.json", {"seeds": [0], "split": {}, "methods": {}}, "(top)"),
    ("audit.json", {"n": 3, "n_flagged": 1, "verdict": "x"}, "share_flagged"),
    ("tuning.json", {}, "(top)"), ("tuning.json", [], "(top)"), ("tuning.json", {"0": {"m": {}}}, "0.m.chosen"),
    ("verify.json", {"regimes": {"memorization": {"rel_err": "small"}}}, "regimes.memorization.rel_err"),
    ("monitor.json", [], "(top)"), ("monitor.json", {"runs": {"r": {"baselines": {}}}}, "runs.r.alarm_step"),
    ("monitor.json", {"runs": {"r": {"alarm_step": -5, "baselines": {}, "checkpoints": []}}}, "runs.r.alarm_step"),
    ("steer.json", {"groups": 3}, "concept"),
    ("steer.json", {"concept": "ink", "groups": {"memorized": {"n": -1}}}, "groups.memorized.n")])
def test_results_of_the_wrong_shape_are_one_error_naming_the_file(tmp_path, name, content, key):
    (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "x.png").write_bytes(b"")                   # something to report besides the bad file
    with pytest.raises(DiffmemError, match=f"{name}: not a valid {name} \\(key {re.escape(key)}: "):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2 and not (tmp_path / "report.html").exists()


def _chrome(tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _verdict_on_first_screen(driver) -> str:
    box = driver.execute_script("const r = document.getElementById('verdict').getBoundingClientRect();"
                                "return [r.top, r.bottom, window.innerHeight];")
    assert 0 <= box[0] < box[1] <= box[2], box
    return driver.find_element("id", "verdict").text


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="headless Chromium test skipped: chromium/chromedriver "
                    "not installed (apt-get install chromium chromium-driver; `make test` does this where apt exists)")
def test_audit_writes_its_own_page_with_the_verdict_first(results, tmp_path):
    page = results / "audit" / "report.html"
    assert page.exists()                                   # written by `diffmem audit` itself
    driver = _chrome(tmp_path)
    try:
        driver.get(page.as_uri())
        assert "look memorized" in _verdict_on_first_screen(driver)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="headless Chromium test skipped: chromium/chromedriver "
                    "not installed (apt-get install chromium chromium-driver; `make test` does this where apt exists)")
def test_report_in_headless_chromium(results, tmp_path):
    path = build_report(results)
    driver = _chrome(tmp_path)
    try:
        driver.get(path.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        n_images = driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert n_images >= 6
        assert "look memorized" in _verdict_on_first_screen(driver)      # the verdict on the first screen
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        urls = []
        for entry in driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent" and msg["params"].get("documentURL") == path.as_uri():
                urls.append(msg["params"]["request"]["url"])
        assert path.as_uri() in urls                       # the page's own load was seen …
        leaving = [u for u in urls if not u.startswith(("file:", "data:"))]
        assert not leaving, leaving                        # … and nothing it asked for left the file
        shot = tmp_path / "shot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert px.std() > 10 and (px < 128).mean() > 0.005     # not a blank page
