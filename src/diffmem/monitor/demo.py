"""``diffmem monitor --demo``: two training runs, one where copies appear and a control without
duplicates, each with the online monitor, checkpoints and ground truth, in one ``monitor.json``."""

from __future__ import annotations

from pathlib import Path

from diffmem.train.pixel import PixelRun, train_unet
from diffmem.monitor.plots import plot_runs
from diffmem.errors import check
from diffmem.monitor.training import TrainingCallback, checkpoint_folders, ground_truth, run_summary
from diffmem.outputs import output_dir
from diffmem.schemas import MonitorFile, write_result

# name: training duplication ('' = none); everything else is shared (DEMO_SETTINGS)
DEMO_RUNS = {"duplicated": "10x100", "control": ""}
DEMO_SETTINGS = {"distinct": 2000, "steps": 4000, "every": 250, "batch_size": 64, "config": "bench-s", "size": 16,
                 "n_ground_truth": 500}
TEST_SETTINGS = {"distinct": 60, "steps": 40, "every": 20, "batch_size": 16, "config": "test-xs", "size": 8,
                 "n_ground_truth": 16}


def run_demo(out: str | Path, seed: int = 0, distinct: int = 2000, steps: int = 4000, every: int = 250,
             batch_size: int = 64, config: str = "bench-s", size: int = 16, n_ground_truth: int = 500,
             runs: dict[str, str] | None = None, quiet: bool = False) -> dict:
    """Train every run of ``runs`` (default :data:`DEMO_RUNS`) with the monitor on and checkpoints
    every ``every`` steps, sample ``n_ground_truth`` images per checkpoint for the copy fraction,
    and write ``out/monitor.json`` (``runs.NAME``: alarm/onset steps, baselines, checkpoints),
    ``out/monitor.png`` and ``out/runs/NAME/`` (the model and its checkpoints)."""
    runs = DEMO_RUNS if runs is None else runs
    check(every <= steps, f"every={every}: more than the {steps} training steps")
    result = {"settings": {"seed": seed, "distinct": distinct, "steps": steps, "every": every,
                           "batch_size": batch_size, "config": config, "size": size,
                           "n_ground_truth": n_ground_truth, "dup": runs}, "runs": {}}
    with output_dir(out) as tmp:
        for name, dup in runs.items():
            folder = tmp / "runs" / name
            cb = TrainingCallback(every, seed=seed, quiet=quiet)
            train_unet(folder, PixelRun(size=size, distinct=distinct, dup=dup, steps=steps, batch_size=batch_size,
                                        config=config, seed=seed), checkpoint_every=every, callback=cb, quiet=quiet)
            truth = ground_truth(checkpoint_folders([folder / "checkpoints"]), n_ground_truth, seed, quiet=quiet)
            result["runs"][name] = run_summary(cb.monitor, truth)
        write_result(tmp / "monitor.json", result, MonitorFile)
        plot_runs(result["runs"], tmp / "monitor.png")
    return result
