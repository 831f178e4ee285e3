"""``monitor.png``: each signal over training steps, its alarm, and the ground-truth copy fraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffmem.plotting import save

PANELS = (("spikiness excess (ours)", lambda c: c["spikiness"]["excess"], "spikiness.tail"),
          ("loss gap (held-out − train)", lambda c: c["loss"]["gap"], "loss_gap.welch"),
          ("bottleneck stable rank", lambda c: c["stable_rank"]["mean"], "stable_rank.chart"))


def plot_runs(runs: dict[str, dict], path: str | Path) -> Path:
    """One row per run (``run_summary`` dicts), one column per signal plus the copy fraction: a red
    line at our alarm, orange at each baseline rule's alarm, black dashed at the ground-truth onset."""
    import matplotlib.pyplot as plt
    cols = len(PANELS) + 1
    fig, axes = plt.subplots(len(runs), cols, figsize=(3.4 * cols, 2.6 * len(runs)), squeeze=False)
    for row, (name, run) in zip(axes, runs.items()):
        cps = run["checkpoints"]
        steps = np.array([c["step"] for c in cps])
        alarms = {"spikiness.tail": run["alarm_step"], **run["baselines"]}
        for ax, (title, get, rule) in zip(row, PANELS):
            ax.plot(steps, [get(c) for c in cps], "o-", ms=3)
            ax.set_title(f"{name}: {title}", fontsize=9)
            if rule != "spikiness.tail" and alarms.get(rule) is not None:
                ax.axvline(alarms[rule], color="tab:orange", lw=1.5, ls="-.", label=f"{rule} alarm")
        ax = row[-1]
        frac = [c.get("copy_fraction") for c in cps]
        if any(f is not None for f in frac):
            ax.plot(steps, [np.nan if f is None else f for f in frac], "s-", ms=3, color="black")
            ax.axhline(0.02, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{name}: copy fraction (ground truth)", fontsize=9)
        for a in row:
            if run.get("onset_step") is not None:
                a.axvline(run["onset_step"], color="black", ls="--", lw=1, label="copies >= 2%")
            if run["alarm_step"] is not None:
                a.axvline(run["alarm_step"], color="red", lw=1.5, label="our alarm")
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=6)
            a.ticklabel_format(axis="y", useOffset=False)
            a.set_xlabel("training step", fontsize=8)
            a.tick_params(labelsize=7)
    fig.tight_layout()
    return save(fig, path)
