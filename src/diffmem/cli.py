"""The ``diffmem`` command line: parse options, call one library function, print where results are.

Every command takes ``--seed`` and ``--quiet``; commands that write take ``--out DIR``.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--p", type=int, default=32, help="hidden units of both models")
    p.add_argument("--sigma", type=float, default=0.2, help="noise level σ")
    p.add_argument("--lam", type=float, default=1e-4, help="weight decay λ")
    p.add_argument("--steps", type=int, default=2000)
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
    return parser


def _call(args: argparse.Namespace):
    import importlib
    module, name = args.func.split(":")
    fn = getattr(importlib.import_module(module), name)
    kwargs = {k: getattr(args, k) for k in args.keys}
    if getattr(args, "out", None) is not None or "out" in fn.__code__.co_varnames:
        kwargs["out"] = getattr(args, "out", None)
    return fn(quiet=args.quiet, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        result = _call(args)
    except DiffmemError as exc:
        print(f"diffmem: error: {exc}", file=sys.stderr)
        return 2
    out = getattr(args, "out", None)
    if out:
        print(f"results written to {out}")
    elif result is not None:
        print(json.dumps(result, indent=2, default=float))
    return 0
