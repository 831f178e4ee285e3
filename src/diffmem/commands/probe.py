"""The probe's commands: ``diffmem layers`` and ``diffmem scan``."""

from __future__ import annotations

from typing import Annotated

from diffmem.commands.options import (AllowOutside, AllowPickle, Device, DType, InputRange, Model, Opt, Out, Quiet,
                                      Seed)
from diffmem.commands.options import input_range as parse_range
from diffmem.models import LoadOptions, load_adapter
from diffmem.outputs import check_out
from diffmem.probe.pooling import POOLS
from diffmem.scan import Engine, RayConfig, ScanConfig, run


def layers(model: Model, json_output: Annotated[bool, Opt("print JSON instead of a table", flag="--json")] = False,
           device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False) -> list[dict]:
    """List every hookable layer of a model with its calls per forward and output shapes (one dummy forward)."""
    adapter = load_adapter(model, allow_pickle, device, dtype)
    return [{"name": n, "calls": len(shapes), "shapes": [list(s) for s in shapes],
             "default": n == adapter.default_layer.split("@")[0]}
            for n, shapes in adapter.layers().items()]


def scan(model: Model, images: Annotated[str, Opt("image folder, .npy/.npz array or .jsonl manifest",
                                                  positional=True, metavar="IMAGES")],
         out: Out,
         layer: Annotated[str | None, Opt("dotted layer name, name@k for the k-th call (default: the family's "
                                          "recipe; see `diffmem layers`)")] = None,
         t: Annotated[float | None, Opt("timestep (default: 10, or σ=0.1 for theory models)", min=0)] = None,
         pool: Annotated[str | None, Opt("pooling (default: the family's)", choices=POOLS)] = None,
         batch_size: Annotated[int, Opt("images per forward pass", min=1)] = 32,
         repeats: Annotated[int, Opt("noise draws averaged per image", min=1, max=64)] = 1,
         detector: Annotated[str | None, Opt("a detector saved by `diffmem bench` (its DIR/detector): score and "
                                             "flag with it", metavar="DIR")] = None,
         on_error: Annotated[str, Opt("a bad image: an error row (skip) or a fatal error (fail)",
                                      choices=("skip", "fail"))] = "skip",
         resume: Annotated[bool, Opt("continue a killed scan in the same --out")] = False,
         engine: Annotated[str, Opt("local, or ray: a Ray Data pipeline (pip install 'diffmem[ray]')",
                                    choices=("local", "ray"))] = "local",
         workers: Annotated[int, Opt("ray: model actors (one CPU thread each)", min=1)] = 2,
         ray_address: Annotated[str | None, Opt("ray: an existing cluster (default: start a local Ray)")] = None,
         gpus_per_worker: Annotated[float, Opt("ray: GPUs reserved per model actor (0: CPU actors; > 0 runs "
                                               "each actor's model on cuda unless --device says otherwise)",
                                               min=0)] = 0.0,
         part_size: Annotated[int, Opt("inputs per committed Parquet part", min=1)] = 256,
         threads: Annotated[int | None, Opt("torch threads of the local process or of each Ray worker "
                                            "(default: all / 1)", min=1)] = None,
         allow_other_model: Annotated[bool, Opt("apply a --detector fitted on other model weights")] = False,
         input_range: InputRange = None, allow_outside: AllowOutside = False,
         device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
         seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Score the spikiness of every image (noise slightly, run the denoiser once, hook a layer, pool,
    take the std), or its memorization score and flag under a saved ``--detector``.

    ``threads``: torch threads of the local process, or of each Ray worker (default: all cores
    locally, 1 per worker). Kernels reduce in a thread-count-dependent order, so the two engines
    give bit-identical tables when their thread counts match."""
    check_out(out)
    cfg = ScanConfig(layer, t, pool, batch_size, repeats, seed, on_error, part_size, detector,
                     parse_range(input_range), allow_outside, allow_other_model)
    where = Engine(engine, threads, RayConfig(workers, threads or 1, ray_address, gpus_per_worker))
    return run(model, images, out, cfg, where, LoadOptions(allow_pickle, device, dtype), resume, quiet)
