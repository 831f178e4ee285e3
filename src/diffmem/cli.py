"""The ``diffmem`` command line: parse options, call one library function, print where results are.

Every command takes ``--seed`` and ``--quiet``; commands that write take ``--out DIR``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Callable

from diffmem.errors import DiffmemError
from diffmem.outputs import set_quiet

Formatter = argparse.ArgumentDefaultsHelpFormatter


def _list(kind: type, name: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not a comma-separated list of "
                                             f"{kind.__name__} values") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{name}: empty list")
        return values
    return parse


def _common(p: argparse.ArgumentParser, out: bool = True, out_required: bool = True) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if out:
        p.add_argument("--out", required=out_required, metavar="DIR", help="output folder")


def _sub(subs, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=help, formatter_class=Formatter,
                           epilog=f"example: {example}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmem", formatter_class=Formatter,
                                     description="Tell whether a diffusion model memorizes or "
                                                 "generalizes from its internal representations.")
    from diffmem import __version__
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    subs = parser.add_subparsers(dest="command", required=True)

    theory = subs.add_parser("theory", help="the ReLU-DAE theory lab", formatter_class=Formatter)
    tsubs = theory.add_subparsers(dest="theory_command", required=True)

    p = _sub(tsubs, "verify", "train ReLU-DAEs in the memorization, generalization and hybrid regimes "
             "and compare them with the closed-form minimizers",
             "diffmem theory verify --quick --seed 0 --out out/verify")
    p.add_argument("--quick", action="store_true", help="fewer steps and noise draws (< 2 min on 2 cores)")
    p.add_argument("--seeds", type=int, default=3, help="models trained per regime")
    _common(p)
    p.set_defaults(func="diffmem.theory.run:run_verify", keys=("seed", "quick", "seeds"))

    p = _sub(tsubs, "phase", "phase diagram over samples per cluster and hidden units",
             "diffmem theory phase --units 4,8,16 --out out/phase")
    p.add_argument("--n-per-cluster", type=_list(int, "--n-per-cluster"), default=(1, 2, 4, 8, 16, 32, 64))
    p.add_argument("--units", type=_list(int, "--units"), default=(4, 8, 16, 32))
    p.add_argument("--sigmas", type=_list(float, "--sigmas"), default=(0.05,))
    p.add_argument("--lam", type=float, default=1e-3, help="weight decay λ")
    p.add_argument("--steps", type=int, default=1500)
    _common(p)
    p.set_defaults(func="diffmem.theory.run:run_phase",
                   keys=("n_per_cluster", "units", "sigmas", "lam", "steps", "seed"))

    p = _sub(tsubs, "weights", "weight columns and representations of a memorizing (n images) and a "
             "generalizing (n-large images) ReLU-DAE",
             "diffmem theory weights --data fashion-mnist --n 16 --out out/weights")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist', an image folder or a .npy array")
    p.add_argument("--n", type=int, default=16, help="images of the memorizing model")
    p.add_argument("--n-large", type=int, default=2000, help="images of the generalizing model")
    p.add_argument("--p", type=int, default=16, help="hidden units of both models")
    p.add_argument("--sigma", type=float, default=5.0, help="noise level σ (per pixel, images in [-1, 1])")
    p.add_argument("--lam", type=float, default=0.1, help="weight decay λ")
    p.add_argument("--steps", type=int, default=3000)
    _common(p)
    p.set_defaults(func="diffmem.theory.run:run_weights",
                   keys=("data", "n", "n_large", "p", "sigma", "lam", "steps", "seed"))

    p = _sub(tsubs, "diffusion", "train the time-conditioned ReLU diffusion model, sample, and find "
             "the nearest training image of each sample",
             "diffmem theory diffusion --n 16 --out out/diffusion")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist', an image folder or a .npy array")
    p.add_argument("--n", type=int, default=16, help="training images")
    p.add_argument("--p", type=int, default=64, help="hidden units")
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=50, help="Euler steps of the sampler")
    _common(p)
    p.set_defaults(func="diffmem.theory.run:run_diffusion",
                   keys=("data", "n", "p", "steps", "samples", "sample_steps", "seed"))

    p = _sub(tsubs, "bench", "speed of the vectorized grid against a loop over the same grid",
             "diffmem theory bench")
    p.add_argument("--steps", type=int, default=300)
    _common(p, out_required=False)
    p.set_defaults(func="diffmem.theory.run:run_bench", keys=("steps", "seed"))

    p = _sub(subs, "layers", "list every hookable layer of a model with its output shapes "
             "(one dummy forward)", "diffmem layers path/to/model")
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("--allow-pickle", action="store_true", help="allow non-safetensors weights (unpickling)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func="diffmem.probe.run:run_layers", keys=("model", "allow_pickle"), printer=_print_layers,
                   seed=0, quiet=True)

    p = _sub(subs, "scan", "score the spikiness of every image: noise slightly, run the denoiser once, "
             "hook a layer, pool, take the std", "diffmem scan path/to/model samples/ --out out/scan")
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("images", metavar="IMAGES", help="image folder, .npy/.npz array or .jsonl manifest")
    p.add_argument("--layer", default=None, help="dotted layer name, name@k for the k-th call "
                   "(default: the family's recipe; see `diffmem layers`)")
    p.add_argument("--t", type=float, default=None, help="timestep (default: 10, or σ=0.1 for theory models)")
    p.add_argument("--pool", default=None, help="spatial_max | spatial_mean | token_mean | token_max | flatten "
                   "(default: the family's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="noise draws averaged per image")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="a bad image: an error row (skip) or a fatal error (fail)")
    p.add_argument("--resume", action="store_true", help="continue a killed scan in the same --out")
    p.add_argument("--allow-pickle", action="store_true", help="allow non-safetensors weights (unpickling)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: a Ray Data pipeline (pip install 'diffmem[ray]')")
    p.add_argument("--workers", type=int, default=2, help="ray: model actors (one CPU thread each)")
    p.add_argument("--ray-address", default=None, help="ray: an existing cluster (default: start a local Ray)")
    p.add_argument("--part-size", type=int, default=256, help="inputs per committed Parquet part")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the local process or of each Ray worker (default: all / 1)")
    p.add_argument("--detector", default=None, metavar="DIR",
                   help="a detector saved by `diffmem bench` (its DIR/detector): score and flag with it")
    _common(p)
    p.set_defaults(func="diffmem.probe.run:run_scan",
                   keys=("model", "images", "layer", "t", "pool", "batch_size", "repeats", "seed", "on_error",
                         "resume", "allow_pickle", "engine", "workers", "ray_address", "part_size", "threads",
                         "detector"))

    p = _sub(subs, "eval", "AUROC and TPR at 1%% FPR (both conventions) with bootstrap CIs, ROC and "
             "score-density plots", "diffmem eval out/scan/scores.parquet --labels labels.csv --out out/eval")
    p.add_argument("scores", metavar="SCORES", help="scores.parquet (or .csv)")
    p.add_argument("--labels", default=None, help="CSV/JSONL with label and sha256|path|index "
                   "(default: the scores' own label column)")
    p.add_argument("--column", default="score", help="score column to evaluate")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    _common(p)
    p.set_defaults(func="diffmem.detect.evaluation:run_eval", keys=("scores", "labels", "column", "n_boot", "seed"))

    p = _sub(subs, "train", "train a class-conditional UNet2DModel on N distinct images plus duplicated ones",
             "diffmem train --distinct 2000 --dup 10x100,20x40 --steps 6000 --out models/hybrid")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an image folder / .npy array")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--distinct", type=int, default=2000, help="images seen once")
    p.add_argument("--dup", default="10x100,20x40", help="duplicated images: COUNTxCOPIES[,…]; '' for none")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--label-dropout", type=float, default=0.1, help="null-class rate (classifier-free guidance)")
    p.add_argument("--config", default="bench-s", help="UNet size: bench-s | bench-m | test-xs")
    _common(p)
    p.set_defaults(func="diffmem.bench.train:train_unet",
                   keys=("data", "size", "distinct", "dup", "steps", "batch_size", "lr", "label_dropout", "config",
                         "seed"))

    p = _sub(subs, "sample", "sample a model (DDIM/DDPM, classifier-free guidance) and label each sample "
             "against its training set", "diffmem sample models/hybrid --n 64 --guidance 1 --out out/samples")
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--classes", default=None, help="comma-separated classes, cycled (default: all classes)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--batch-size", type=int, default=128)
    _common(p)
    p.set_defaults(func="diffmem.bench.run:run_sample",
                   keys=("model", "n", "classes", "guidance", "steps", "sampler", "batch_size", "seed"))

    p = _sub(subs, "bench", "benchmarks: 'memorization' (default: spikiness against baselines on the shipped "
             "hybrid model), 'probe' (full forward vs early exit per family), 'scan' (images/s of the local "
             "engine and Ray with 1 and 2 workers)",
             "diffmem bench --quick --seed 0 --out out/bench")
    p.add_argument("what", nargs="?", choices=("memorization", "probe", "scan"), default="memorization")
    p.add_argument("--quick", action="store_true", help="memorization: 600 samples and one seed")
    p.add_argument("--seeds", default=None, help="memorization: comma-separated seeds, each drawing samples and "
                   "split anew (default: SEED,SEED+1,SEED+2; SEED alone with --quick)")
    p.add_argument("--calib-frac", type=float, default=0.5, help="memorization: calibration share of the samples")
    p.add_argument("--fpr", type=float, default=0.01, help="memorization: target false-positive rate")
    p.add_argument("--model", default=None, help="memorization: model folder (default: the shipped hybrid)")
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--reps", type=int, default=10, help="probe: timed repetitions")
    p.add_argument("--n-images", type=int, default=512, help="scan: images scanned per engine")
    _common(p, out_required=False)
    p.set_defaults(func=None, keys=())

    p = _sub(subs, "steer", "add a concept vector to chosen activations while sampling memorized and "
             "generalized samples, and measure how each moves",
             "diffmem steer --concept Trouser --alphas 0,0.5,1,2 --out out/steer")
    p.add_argument("model", metavar="MODEL_DIR", nargs="?", default=None, help="default: the shipped hybrid model")
    p.add_argument("--concept", default="Trouser", help="a Fashion-MNIST class (name or 0-9) or an image folder")
    p.add_argument("--negative", default="rest", help="class, folder or 'rest' (every other class): fit "
                   "mean(positives) - mean(negatives); 'none' for the paper's plain mean")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1,1.25,1.5,2", help="steering strengths, from 0, increasing")
    p.add_argument("--samples", default="memorized,generalized", help="groups to steer")
    p.add_argument("--n-per-group", type=int, default=6)
    p.add_argument("--pool-size", type=int, default=300, help="candidate samples labelled to find each group")
    p.add_argument("--steps", type=int, default=40, help="DDIM steps")
    p.add_argument("--window", default="0:20", help="steered steps START:END or lastN[-K] (paper: 18:38 of 40)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--t", type=float, default=10, help="timestep at which concept activations are read")
    _common(p)
    p.set_defaults(func="diffmem.steer.run:run_steer",
                   keys=("model", "concept", "negative", "alphas", "samples", "n_per_group", "pool_size", "steps",
                         "window", "guidance", "t", "seed"))

    p = _sub(subs, "train-classifier", "train the small Fashion-MNIST CNN that scores steering",
             "diffmem train-classifier --out src/diffmem/assets/classifier")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    _common(p)
    p.set_defaults(func="diffmem.steer.classifier:train_classifier", keys=("size", "epochs", "seed"))

    p = _sub(subs, "report", "one self-contained HTML page (figures embedded, no network) from any diffmem "
             "output folder", "diffmem report demo_out")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func="diffmem.report.html:run_report", keys=("directory",), seed=0)

    p = _sub(subs, "demo", "the end-to-end demo (what `make demo` runs)", "diffmem demo --out demo_out")
    _common(p)
    p.set_defaults(func="diffmem.demo:run_demo", keys=("seed",))
    return parser


def _print_layers(rows: list[dict], args) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shapes = " ".join("x".join(map(str, s)) for s in r["shapes"])
        mark = "  <- default" if r["default"] else ""
        print(f"{r['name']:<{width}}  calls={r['calls']}  {shapes}{mark}")


_BENCH = {"memorization": ("diffmem.bench.run:run_bench",
                            ("quick", "model", "n_samples", "seeds", "guidance", "calib_frac", "fpr", "batch_size",
                             "seed")),
          "probe": ("diffmem.probe.run:bench_probe", ("batch_size", "reps", "seed")),
          "scan": ("diffmem.probe.run:bench_scan", ("n_images", "batch_size", "model", "seed"))}


def _call(args: argparse.Namespace):
    import importlib
    if args.command == "bench":
        args.func, args.keys = _BENCH[args.what]
        if args.batch_size is None:
            args.batch_size = {"memorization": 256, "probe": 16, "scan": 32}[args.what]
        if args.what == "memorization" and args.out is None:
            raise DiffmemError("bench: --out DIR is required")
    module, name = args.func.split(":")
    fn = getattr(importlib.import_module(module), name)
    kwargs = {k: getattr(args, k) for k in args.keys}
    params = inspect.signature(fn).parameters          # follows decorators' __wrapped__
    if "out" in params:
        kwargs["out"] = getattr(args, "out", None)
    if "quiet" in params:
        kwargs["quiet"] = args.quiet
    return fn(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        result = _call(args)
    except DiffmemError as exc:
        print(f"diffmem: error: {exc}", file=sys.stderr)
        return 2
    out = getattr(args, "out", None)
    if getattr(args, "printer", None):
        args.printer(result, args)
    elif out:
        print(f"results written to {out}")
    elif result is not None:
        print(json.dumps(result, indent=2, default=float))
    return 0
