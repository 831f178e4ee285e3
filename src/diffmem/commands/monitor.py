"""``diffmem monitor`` (offline, over saved checkpoints, or ``--demo``) and ``diffmem bench monitor``."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from diffmem.commands.options import AllowPickle, Device, DType, Opt, Out, Quiet, Seed
from diffmem.errors import check
from diffmem.data.records import T2I
from diffmem.monitor.bench import OVERHEAD_RUN, finetune_overhead, overhead
from diffmem.monitor.demo import DEMO, QUICK, run_demo
from diffmem.monitor.finetune import FinetuneDemo
from diffmem.monitor.plots import plot_runs
from diffmem.monitor.training import N_PROBE, N_REFERENCE, OfflineMonitor, monitor_checkpoints
from diffmem.outputs import check_out, output_dir, write_json
from diffmem.schemas import MonitorFile, write_result
from diffmem.train.finetune import Finetune


Checkpoints = Annotated[list, Opt("checkpoint folders, or folders of them (e.g. RUN/checkpoints)", positional=True,
                                 metavar="CKPT_DIR", many=True)]
GroundTruth = Annotated[bool, Opt("also sample every checkpoint and record its copy fraction (d1/d2 < 1/3 against "
                                  "the training set; slow)")]
Probe = Annotated[str | None, Opt("training images to probe (folder/.npy; default: drawn from the checkpoints' "
                                  "training record)", metavar="IMAGES")]
Reference = Annotated[str | None, Opt("held-out images (folder/.npy; default: from the training record)",
                                      metavar="IMAGES")]
Demo = Annotated[bool, Opt("train the duplicated and control demonstration runs (about 35 min on 2 cores) and "
                           "monitor them; no CKPT_DIR")]


def monitor(out: Out, checkpoints: Checkpoints = (), ground_truth: GroundTruth = False,
            n: Annotated[int, Opt("samples per checkpoint for --ground-truth", min=1)] = 500,
            probe: Probe = None, reference: Reference = None,
            n_probe: Annotated[int, Opt("training rows drawn for the probe set", min=8)] = N_PROBE,
            n_reference: Annotated[int, Opt("held-out reference images", min=8)] = N_REFERENCE,
            demo: Demo = False, quick: Annotated[bool, Opt("with --demo: tiny runs (seconds; for tests)")] = False,
            seed: Seed = 0, device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
            quiet: Quiet = False) -> dict:
    """Memorization signals of saved training checkpoints (spikiness of training images against
    held-out ones, loss gap, bottleneck stable rank) and their alarms: ``monitor.json`` + ``monitor.png``."""
    check_out(out)
    checkpoints = list(checkpoints or [])
    if demo:
        check(not checkpoints, "--demo trains its own runs: give no CKPT_DIR")
        return run_demo(out, QUICK if quick else DEMO, seed, quiet)
    check(bool(checkpoints), "CKPT_DIR: give at least one checkpoint folder (or --demo)")
    summary = monitor_checkpoints(checkpoints, OfflineMonitor(probe, reference, n_probe, n_reference, ground_truth,
                                                              n, seed), device, dtype, allow_pickle, quiet)
    with output_dir(out) as tmp:
        write_result(tmp / "monitor.json", {"runs": {"run": summary}}, MonitorFile)
        plot_runs({"run": summary}, tmp / "monitor.png")
    return summary


def bench_monitor(steps: Annotated[int, Opt("training steps per run", min=2)] = 500,
                  every: Annotated[int, Opt("monitor frequency in steps (the default of `train --monitor`)",
                                            min=1)] = 500,
                  batch_size: Annotated[int, Opt("training batch", min=1)] = 64,
                  pairs: Annotated[int, Opt("off/on run pairs, alternating order", min=1)] = 2,
                  finetune: Annotated[bool, Opt("time a fine-tune of the shipped text-to-image model on 20 of its "
                                                "held-out items instead (e.g. --steps 400 --every 100 "
                                                "--batch-size 16)")] = False,
                  lora_rank: Annotated[int, Opt("with --finetune: 0 the full UNet, R a LoRA of rank R",
                                                min=0, max=256)] = 0,
                  out: Annotated[str | None, Opt("write monitor_bench.json here", metavar="DIR")] = None,
                  seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Training time with the monitor off and on (same run, one process, alternating order) and whether
    the weights are bit-identical: ``monitor_bench.json``; a pixel training run, or with ``--finetune`` a
    fine-tune of the shipped text-to-image model."""
    check_out(out)
    check(finetune or not lora_rank, "lora_rank: only with finetune=True")
    if finetune:
        lr = FinetuneDemo.lora_lr if lora_rank else FinetuneDemo.lr              # the demonstration's rates
        res = finetune_overhead(T2I, Finetune(steps, batch_size, lr, lora_rank, seed=seed), every, pairs, quiet=quiet)
    else:
        res = overhead(replace(OVERHEAD_RUN, steps=steps, batch_size=batch_size, seed=seed), every, pairs, quiet)
    print(f"monitor overhead: {res['overhead_ratio']:.3f}x training time (goal <= 1.05); time inside the monitor "
          f"{100 * res['monitor_fraction']:.1f}% ({res['seconds_per_measurement']:.2f} s per measurement); "
          f"weights identical: {res['weights_identical']}")
    if out is not None:
        with output_dir(out) as tmp:
            write_json(tmp / "monitor_bench.json", res)
    return res
