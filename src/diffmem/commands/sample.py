"""``diffmem sample``: draw samples from a model, labelled exactly when it has a training record."""

from __future__ import annotations

import json
from typing import Annotated

from diffmem.commands.options import (AllowPickle, BatchSize, Classes, Device, DType, Guidance, Model, Opt, Out,
                                      Prompts, Quiet, Seed, Steps, listed, read_prompts)
from diffmem.data.records import copy_targets
from diffmem.models import load_adapter
from diffmem.neighbours import label_samples
from diffmem.outputs import check_out, output_dir, write_pngs
from diffmem.probe.sampling import Sampler, sample_images


def sample(model: Model, out: Out, n: Annotated[int, Opt("samples to draw", min=1)] = 64,
           classes: Classes = None, prompts: Prompts = None, guidance: Guidance = 1.0, steps: Steps = 50,
           sampler: Annotated[str, Opt("ddim (deterministic) or ddpm (ancestral)", choices=("ddim", "ddpm"))] = "ddim",
           batch_size: BatchSize = 128, device: Device = "auto", dtype: DType = "float32",
           allow_pickle: AllowPickle = False, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Sample a model (DDIM/DDPM, classifier-free guidance; decoded through the VAE for latent models)
    and label each sample against its training set when the model has a training record.

    Writes ``DIR/images/NNNNN.png`` (RGB or gray) and ``DIR/manifest.jsonl`` (path, class or prompt, and
    with a training record: nearest, d1, d2, ratio, memorized, nearest_duplicated, hard_negative, label)."""
    check_out(out)
    prompt_list = read_prompts(prompts)
    adapter = load_adapter(model, allow_pickle, device, dtype)
    conds = adapter.conditions(n, classes=listed(classes, int, "--classes"), prompts=prompt_list)
    train = copy_targets(adapter) if adapter.record is not None else None
    x = sample_images(adapter, n, conds, Sampler(guidance, steps, sampler, batch_size), seed, quiet)
    lab = label_samples(x, *train) if train is not None else None
    with output_dir(out) as tmp:
        rows = []
        for j, name in enumerate(write_pngs(x, tmp / "images")):
            row = {"path": f"images/{name}", "seed": seed, "guidance": guidance}
            if conds is not None:
                row["class" if adapter.condition_kind == "class" else "prompt"] = conds[j]
            if lab is not None:
                row.update({k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in lab.items()})
                row["label"] = int(lab["memorized"][j])
            rows.append(row)
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"n": n, "guidance": guidance, "steps": steps, "sampler": sampler,
               "image_shape": list(x.shape[1:])}
    if lab is not None:
        summary["n_memorized"] = int(lab["memorized"].sum())
    return summary
