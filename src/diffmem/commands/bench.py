"""``diffmem sample`` and ``diffmem bench``: sample a model, label exactly, compare every method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from diffmem.bench.harness import DETECTOR, ImageBench, image_bench
from diffmem.data.records import HYBRID, require_record
from diffmem.bench.prompts import PromptBench, prompt_bench
from diffmem.bench.zoo import ZOO, ZooBench, plot_zoo, zoo_bench, zoo_table
from diffmem.commands.options import (AllowPickle, BatchSize, Device, DType, Opt, Out, Prompts, Quiet, Seed, Steps,
                                      listed, read_prompts)
from diffmem.detect.evaluation import plot_kde, plot_roc
from diffmem.errors import check
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir
from diffmem.plotting import plot_top_with_nearest
from diffmem.schemas import BenchFile, TuningFile, ZooFile, write_result


def bench(out: Out, model: Annotated[str | None, Opt("model folder with a training record (default: the shipped "
                                                     "hybrid model)", metavar="DIR")] = None,
          quick: Annotated[bool, Opt("600 samples and one seed (the demo's setting)")] = False,
          n_samples: Annotated[int | None, Opt("samples per seed (default 1500, or 600 with --quick)", min=16)] = None,
          seeds: Annotated[str | None, Opt("comma-separated seeds, each drawing samples and split anew "
                                           "(default: SEED,SEED+1,SEED+2; SEED alone with --quick)",
                                           list_of=int)] = None,
          prompts: Prompts = None,
          guidance: Annotated[float | None, Opt("classifier-free guidance scale (default 1; 7.5 for text-to-image "
                                                "models, as the paper's SD benchmark)", min=0)] = None,
          generations: Annotated[int, Opt("text-to-image: generations per prompt (prompt strength = the share "
                                          "that copy)", min=1, max=64)] = 4,
          steps: Steps = 50,
          calib_frac: Annotated[float, Opt("calibration share of the samples", above=0, max=0.95)] = 0.5,
          fpr: Annotated[float, Opt("target false-positive rate of the fitted thresholds", above=0, max=0.5)] = 0.01,
          batch_size: BatchSize = 256, device: Device = "auto", dtype: DType = "float32",
          allow_pickle: AllowPickle = False, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """The memorization benchmark under the protocol of :mod:`diffmem.bench.protocol`, once per seed.

    Writes ``bench.json`` (figures as {mean, sd, per_seed}), ``bench.md``, ``tuning.json``,
    ``samples.parquet``, ``roc.png``, ``score_kde.png``, ``top_memorized.png`` (first seed) and
    ``detector/`` (the fusion detector fitted on the first seed's calibration split). A text-to-image
    model whose record has captions is benchmarked per prompt (:mod:`diffmem.bench.prompts`): also
    ``prompts.parquet``, ``prompts.txt`` and the ``prompt_methods`` of ``bench.json``.
    """
    check_out(out)
    seed_list = _seed_list(seeds, seed, quick)
    prompt_list = read_prompts(prompts)
    adapter = load_adapter(model or HYBRID, allow_pickle, device, dtype)
    require_record(adapter)
    if adapter.condition_kind == "prompt" and adapter.record.captions is not None:
        cfg = PromptBench(7.5 if guidance is None else guidance, steps, calib_frac, fpr, batch_size, k=generations)
        return write_prompt_bench(out, str(model), *prompt_bench(adapter, seed_list, cfg, prompt_list, quiet=quiet))
    cfg = ImageBench(1.0 if guidance is None else guidance, steps, calib_frac, fpr, batch_size,
                     n=n_samples or (600 if quick else 1500))
    result, runs, train = image_bench(adapter, seed_list, cfg, prompt_list, quiet)
    result["model"] = str(model) if model else "shipped hybrid"
    write_image_bench(out, result, runs, train)
    return result


def _seed_list(seeds, seed: int, quick: bool) -> list[int]:
    """``--seeds`` as a list (default SEED,SEED+1,SEED+2; SEED alone with ``--quick``), distinct."""
    given = listed(seeds, int, "--seeds")
    out = list(given) if given is not None else ([seed] if quick else [seed, seed + 1, seed + 2])
    check(len(set(out)) == len(out), f"--seeds {seeds}: need distinct seeds")
    return out


def write_image_bench(out, result: dict, runs: list[dict], train) -> None:
    """The image-level bench's files (first seed's figures); ``train``: the copy targets (M, C, H, W)."""
    first = runs[0]
    frame = pd.concat([r["frame"] for r in runs], ignore_index=True)
    with output_dir(out) as tmp:
        write_result(tmp / "bench.json", result, BenchFile)
        write_result(tmp / "tuning.json", {str(s): r["tuning"] for s, r in zip(result["seeds"], runs)}, TuningFile)
        (tmp / "bench.md").write_text(bench_table(result))
        frame.to_parquet(tmp / "samples.parquet", index=False)
        y0 = first["lab"]["memorized"][~first["calib"]].astype(int)
        plot_roc({k: (v, y0) for k, v in first["scores"].items()}, tmp / "roc.png",
                 f"report split, seed {result['seeds'][0]}")
        plot_kde(first["scores"][DETECTOR], y0, tmp / "score_kde.png", f"{DETECTOR} score (report split)")
        rep, lab = ~first["calib"], first["lab"]
        plot_top_with_nearest(first["x"][rep], first["scores"][DETECTOR], tmp / "top_memorized.png",
                              f"highest {DETECTOR} scores (report split)", train, lab["nearest"][rep], lab["ratio"][rep])
        first["detector"].save(tmp / "detector")


def write_prompt_bench(out, model: str, result: dict, runs, ps) -> dict:
    """The prompt-level bench's files (first seed's figures) with ``model`` named in ``bench.json``, which
    it returns; ``prompts.txt`` lists the prompts ``ps``, one a line, for ``diffmem audit --prompts``."""
    result = {**result, "model": model}
    first = runs[0]
    with output_dir(out) as tmp:
        (tmp / "prompts.txt").write_text("".join(p + "\n" for p in ps.prompts))
        write_result(tmp / "bench.json", result, BenchFile)
        write_result(tmp / "tuning.json", {str(s): r.tuning for s, r in zip(result["seeds"], runs)}, TuningFile)
        (tmp / "bench.md").write_text(bench_table(result) + "\n" + bench_table(
            {**result, "methods": result["prompt_methods"]}, "prompt level: strength >= 0.5 vs 0"))
        pd.concat([r.frame for r in runs], ignore_index=True).to_parquet(tmp / "samples.parquet", index=False)
        pd.concat([r.prompt_frame for r in runs], ignore_index=True).to_parquet(tmp / "prompts.parquet", index=False)
        rep = first.frame["split"].to_numpy() == "report"
        y0 = first.lab["memorized"][rep].astype(int)
        plot_roc({k: (v, y0) for k, v in first.scores.items()}, tmp / "roc.png",
                 f"report generations, seed {result['seeds'][0]}")
        plot_top_with_nearest(first.x, first.scores[DETECTOR], tmp / "top_memorized.png",
                              f"highest {DETECTOR} scores (report generations)", first.nearest_x,
                              np.arange(len(first.x)), first.lab["ratio"][rep])
        first.detector.save(tmp / "detector")
    return result


def bench_table(r: dict, level: str = "image level") -> str:
    """Markdown table of bench.json's methods (mean ± sd over seeds)."""
    from diffmem.report.html import bench_rows
    t = bench_rows(r)
    lines = [f"# Memorization benchmark, {level} (seeds {', '.join(map(str, r['seeds']))}; guidance {r['guidance']}; "
             f"split grouped by {r['split']['grouped_by'].replace('_', ' ')}, overlap {r['split']['overlap']})", "",
             "| " + " | ".join(t["head"]) + " |", "|" + "---|" * len(t["head"])]
    lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
    return "\n".join(lines) + "\n"




def zoo(out: Out, models: Annotated[str | None, Opt(f"comma-separated zoo models (default: all of "
                                                    f"{', '.join(ZOO)}) or model folders with a training record",
                                                    list_of=str)] = None,
        seeds: Annotated[str | None, Opt("comma-separated seeds (default SEED,SEED+1,SEED+2)", list_of=int)] = None,
        n: Annotated[int, Opt("samples per seed (pixel models)", min=16)] = ZooBench.n,
        fpr: Annotated[float, Opt("target false-positive rate", above=0, max=0.5)] = ZooBench.fpr,
        steps: Steps = ZooBench.steps, batch_size: BatchSize = ZooBench.batch_size,
        seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Every label-free score on every zoo model, with every threshold calibration, over seeds
    (:mod:`diffmem.bench.zoo`). Writes ``zoo.json``, ``zoo.md``, ``zoo_scores.parquet`` (every image's
    scores) and ``zoo_auroc.png``."""
    check_out(out)
    names = listed(models, str, "--models") or list(ZOO)
    folders = {m: ZOO.get(m, m) for m in names}
    for m, f in folders.items():
        check(Path(f).is_dir(), f"--models {m}: neither a zoo model ({', '.join(ZOO)}) nor a folder")
    result, frame = zoo_bench(folders, _seed_list(seeds, seed, False),
                              ZooBench(n=n, fpr=fpr, steps=steps, batch_size=batch_size), quiet)
    with output_dir(out) as tmp:
        write_result(tmp / "zoo.json", result, ZooFile)
        (tmp / "zoo.md").write_text(zoo_table(result))
        frame.to_parquet(tmp / "zoo_scores.parquet", index=False)
        plot_zoo(result, tmp / "zoo_auroc.png")
    return result
