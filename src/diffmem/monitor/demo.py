"""``diffmem monitor --demo``: two training runs, one where copies appear and a control without
duplicates, each with the online monitor, checkpoints and ground truth, in one ``monitor.json``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from diffmem.train.pixel import PixelRun, train_unet
from diffmem.monitor.plots import plot_runs
from diffmem.errors import check
from diffmem.monitor.training import TrainingCallback, checkpoint_folders, ground_truth, run_summary
from diffmem.outputs import output_dir
from diffmem.schemas import MonitorFile, write_result

@dataclass(frozen=True)
class MonitorDemo:
    """The demonstration: every run of ``runs`` (name: its duplication, '' = none) trains ``base`` with its
    own ``dup``, the monitor on and checkpoints every ``every`` steps; ``n_ground_truth`` samples per
    checkpoint give its copy fraction."""

    base: PixelRun = PixelRun(distinct=2000, steps=4000, batch_size=64, config="bench-s", size=16)
    every: int = 250
    n_ground_truth: int = 500
    runs: tuple[tuple[str, str], ...] = (("duplicated", "10x100"), ("control", ""))

    def __post_init__(self):
        check(self.every <= self.base.steps, f"every={self.every}: more than the {self.base.steps} training steps")


DEMO = MonitorDemo()
QUICK = MonitorDemo(PixelRun(distinct=60, steps=40, batch_size=16, config="test-xs", size=8), every=20,
                    n_ground_truth=16)                                     # seconds; for tests


def run_demo(out: str | Path, demo: MonitorDemo = DEMO, seed: int = 0, quiet: bool = False) -> dict:
    """Train every run of the demo with the monitor on, measure its ground truth, and write
    ``out/monitor.json`` (``runs.NAME``: alarm/onset steps, baselines, checkpoints; ``settings``),
    ``out/monitor.png`` and ``out/runs/NAME/`` (the model and its checkpoints)."""
    base = replace(demo.base, seed=seed)
    result = {"settings": {"seed": seed, "distinct": base.distinct, "steps": base.steps, "every": demo.every,
                           "batch_size": base.batch_size, "config": base.config, "size": base.size,
                           "n_ground_truth": demo.n_ground_truth, "dup": dict(demo.runs)}, "runs": {}}
    with output_dir(out) as tmp:
        for name, dup in demo.runs:
            folder = tmp / "runs" / name
            cb = TrainingCallback(demo.every, seed=seed, quiet=quiet)
            train_unet(folder, replace(base, dup=dup), checkpoint_every=demo.every, callback=cb, quiet=quiet)
            truth = ground_truth(checkpoint_folders([folder / "checkpoints"]), demo.n_ground_truth, seed, quiet=quiet)
            result["runs"][name] = run_summary(cb.monitor, truth)
        write_result(tmp / "monitor.json", result, MonitorFile)
        plot_runs(result["runs"], tmp / "monitor.png")
    return result
