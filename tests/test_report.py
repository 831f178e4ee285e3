"""The report: content, errors, and a real headless-Chromium load (skipped, with the reason, when
Chromium or its driver is not installed)."""

import json
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
    (root / "bench").mkdir()
    cands = [{"setting": {"layer": "mid_block", "t": 10}, "key": "layer=mid_block,t=10", "auroc": 0.9},
             {"setting": {"layer": "up_blocks.0", "t": 50}, "key": "layer=up_blocks.0,t=50", "auroc": 0.2}]
    (root / "bench" / "tuning.json").write_text(json.dumps({"0": {"spikiness": {"candidates": cands}}}))
    return root


def test_report_embeds_everything_and_references_nothing_outside(results):
    path = build_report(results)
    html = path.read_text()
    assert html.count("data:image/png;base64,") >= 4         # roc, kde, phase, per-layer bars
    assert "http://" not in html and "https://" not in html and "src=\"data:" in html
    assert "eval/metrics.json" in html and "theory/phase.json" in html and "per-layer AUROC" in html


def test_report_errors(tmp_path):
    with pytest.raises(DiffmemError, match="no diffmem results"):
        build_report(tmp_path)
    (tmp_path / "bench.json").write_text("{not json")
    with pytest.raises(DiffmemError, match="bench.json: not valid JSON"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="headless Chromium test skipped: chromium/chromedriver "
                    "not installed (apt-get install chromium chromium-driver; `make test` does this where apt exists)")
def test_report_in_headless_chromium(results, tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    path = build_report(results)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.get(path.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        n_images = driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert n_images >= 4
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
