"""``diffmem steer``: steer memorized and generalized samples toward a concept and measure how they move."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Annotated

import numpy as np
import torch

from diffmem.data.records import fashion_mnist_reference
from diffmem.data.records import HYBRID, copy_targets, reference_images, require_record
from diffmem.neighbours import label_samples
from diffmem.commands.options import AllowPickle, Device, DType, Guidance, Opt, Out, Quiet, Seed, Steps, listed
from diffmem.data import FASHION_MNIST_CLASSES, load_images
from diffmem.errors import DiffmemError, check
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir, progress
from diffmem.plotting import plt, save
from diffmem.probe.sampling import sample_images
from diffmem.steer.attributes import ATTRIBUTES, attribute_concept, attribute_percentile
from diffmem.steer.classifier import CLASSIFIER, class_probability, load_classifier
from diffmem.steer.concept import ConceptVector
from diffmem.steer.hooks import parse_window, steering
from diffmem.steer.metrics import steering_metrics
from diffmem.schemas import SteerFile, write_result

GROUPS = ("memorized", "generalized")
GRID_ROWS = 6          # samples per group shown in steer_grid.png


def parse_alphas(alphas) -> list[float]:
    """Strengths from 0, increasing, finite (a tuple from the CLI or a comma-separated string)."""
    try:
        values = [float(a) for a in (alphas.split(",") if isinstance(alphas, str) else alphas) if str(a).strip()]
    except ValueError:
        raise DiffmemError(f"--alphas {alphas!r}: expected comma-separated numbers") from None
    text = ",".join(f"{a:g}" for a in values)
    check(len(values) >= 2 and all(np.isfinite(values)), f"--alphas {text}: need at least two finite numbers")
    check(values == sorted(values) and values[0] == 0 and len(set(values)) == len(values),
          f"--alphas {text}: must start at 0 and increase")
    return values


def _fashion_class(spec: str) -> int | None:
    names = [c.lower() for c in FASHION_MNIST_CLASSES]
    if spec.lower() in names:
        return names.index(spec.lower())
    if spec.isdigit():
        k = int(spec)
        check(0 <= k < len(names), f"--concept {spec!r}: classes are 0–9 ({', '.join(FASHION_MNIST_CLASSES)})")
        return k
    return None


def resolve_concept(spec: str, adapter, n: int, flag: str, exclude: int | None = None
                    ) -> tuple[torch.Tensor, int | None]:
    """Images of a concept: a Fashion-MNIST class (name or index; its first n test images), ``rest``
    (n test images of every class but ``exclude``), or an image folder at the model's size."""
    k = None if spec.lower() == "rest" else _fashion_class(spec)
    if spec.lower() == "rest" or k is not None:
        check(adapter.image_channels == 1, f"{flag} {spec!r}: Fashion-MNIST classes suit 1-channel models; "
                                           f"pass an image folder")
        check(spec.lower() != "rest" or exclude is not None,
              f"{flag} rest: needs a class --concept; pass --negative none or a folder")
        x, y = fashion_mnist_reference(adapter.image_size, 10_000)
        keep = (y != exclude) if k is None else (y == k)
        return x[torch.from_numpy(keep)][:n], k
    if not os.path.isdir(spec):
        raise DiffmemError(f"{flag} {spec!r}: neither a class ({', '.join(FASHION_MNIST_CLASSES)}) nor a folder")
    return torch.from_numpy(load_images(spec, size=adapter.image_size, channels=adapter.image_channels, limit=n)), None


def steer(out: Out,
          model: Annotated[str | None, Opt("model folder with a training record (default: the shipped hybrid)",
                                           positional=True, metavar="MODEL_DIR")] = None,
          concept: Annotated[str, Opt("an attribute (brightness, ink), a Fashion-MNIST class (name or 0-9) or an "
                                      "image folder")] = "ink",
          negative: Annotated[str, Opt("'auto' (an attribute: its lowest images; a class: every other class), a "
                                       "class, a folder or 'rest': fit mean(positives) − mean(negatives); 'none' "
                                       "for the paper's plain mean")] = "auto",
          alphas: Annotated[tuple, Opt("steering strengths, from 0, increasing", list_of=float, min=0)] = (
              0, 0.5, 1, 1.5, 2, 3),
          samples: Annotated[tuple, Opt("groups to steer", list_of=str, choices=GROUPS)] = GROUPS,
          n_per_group: Annotated[int, Opt("samples steered per group", min=1)] = 30,
          pool_size: Annotated[int, Opt("candidate samples labelled to find each group", min=1)] = 300,
          steps: Steps = 40,
          window: Annotated[str, Opt("steered steps START:END or lastN[-K] (paper: 18:38 of 40)")] = "20:40",
          guidance: Guidance = 1.0,
          t: Annotated[float, Opt("timestep at which concept activations are read", min=0)] = 10,
          prompt: Annotated[str | None, Opt("text-to-image models: the prompt every sample is drawn with "
                                            "(steered on the conditional half of the guidance batch)")] = None,
          n_concept: Annotated[int, Opt("concept (and negative) images averaged", min=1)] = 200,
          device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
          seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Fit a concept vector, steer memorized and generalized samples, write ``steer.json`` +
    ``steer_grid.png`` + ``concept/``.

    Defaults are the setup measured to steer on the shipped 16×16 model: the ``ink`` attribute
    (garment area: mean of the 200 held-out images with the most pixels above mid-grey − the 200 with
    the fewest), the up-block recipe, the last 20 of 40 steps; an attribute is scored as the
    percentile of its statistic among the other held-out images. Class concepts are scored by the
    shipped CNN (the paper's SD recipe is ``--negative none --window 18:38``).
    """
    check_out(out)
    groups = list(listed(samples, str, "--samples"))
    check(bool(groups) and set(groups) <= set(GROUPS), f"--samples {','.join(groups)}: a list of {', '.join(GROUPS)}")
    alpha_list = parse_alphas(alphas)
    win = parse_window(window, steps)
    adapter = load_adapter(model or HYBRID, allow_pickle, device, dtype)
    require_record(adapter, "steering picks memorized and generalized samples by exact labels")
    attribute = concept.lower() if concept.lower() in ATTRIBUTES else None
    negative = None if negative in (None, "", "none") else negative
    if attribute is not None:
        refs = _references(adapter)
        pos, neg = attribute_concept(attribute, refs[0::2], n_concept)          # concept: even references
        measure_ref, target = refs[1::2], None                                  # scoring: odd references
        check(negative in (None, "auto"), f"--negative {negative}: an attribute's negatives are its lowest images "
                                          f"('auto') or none")
        neg = neg if negative else None
    else:
        pos, target = resolve_concept(concept, adapter, n_concept, "--concept")
        check(len(pos) > 0, f"--concept {concept!r}: no images")
        negative = ("rest" if target is not None else None) if negative == "auto" else negative
        neg = resolve_concept(negative, adapter, n_concept, "--negative", exclude=target)[0] if negative else None
    conds = adapter.conditions(pool_size, prompts=None if prompt is None else [prompt])
    if adapter.condition_kind == "class" and target is not None:
        others = [c for c in range(adapter.num_classes) if c != target] or [target]
        conds = [others[j % len(others)] for j in range(pool_size)]
    read_cond = target if adapter.condition_kind == "class" and target is not None else None
    cv = ConceptVector(adapter, t=t, mode="mean_diff" if neg is not None else "mean", seed=seed).fit(
        pos, neg, cond=read_cond)
    # candidates, labelled exactly against the training set
    cand = sample_images(adapter, pool_size, conds, guidance, steps, seed=seed, quiet=quiet)
    lab = label_samples(cand, *copy_targets(adapter))
    chosen = {g: np.flatnonzero(lab["memorized"] == (g == "memorized"))[:n_per_group] for g in groups}
    classifier, cmeta = load_classifier(CLASSIFIER) if target is not None else (None, None)
    measure = (f"percentile of the {ATTRIBUTES[attribute][1]} among {len(measure_ref):,} held-out images"
               if attribute else "classifier P(concept class)" if classifier is not None else None)
    result = {"concept": concept, "attribute": attribute, "measure": measure, "target_class": target,
              "negative": negative, "alphas": alpha_list,
              "steps": steps, "window": list(win), "guidance": guidance, "t": t, "layers": cv.layers,
              "mode": cv.mode, "prompt": prompt, "seed": seed, "model": str(model) if model else "shipped hybrid",
              "candidates": pool_size, "classifier_test_accuracy": None if cmeta is None else cmeta["test_accuracy"],
              "groups": {}}
    cfg = guidance != 1.0 and conds is not None
    rows = []

    def draw(idx, alpha=None):
        c = None if conds is None else [conds[i] for i in idx]
        ctx = steering(adapter, cv.vectors_, alpha, win, cfg_batch=cfg) if alpha is not None \
            else contextlib.nullcontext()
        with ctx:
            return sample_images(adapter, len(idx), c, guidance, steps, seed=seed, indices=idx, quiet=True)

    for g, idx in chosen.items():
        if len(idx) == 0:
            result["groups"][g] = {"n": 0}
            continue
        plain = draw(idx)
        imgs = [draw(idx, a) for a in progress(alpha_list, desc=f"steer {g}")]
        if attribute is not None:
            scores = np.stack([attribute_percentile(attribute, im, measure_ref) for im in imgs], 1)   # (k, A)
        else:
            scores = None if classifier is None else np.stack(
                [class_probability(classifier, im, target, cmeta["size"]) for im in imgs], 1)
        result["groups"][g] = {**steering_metrics(imgs, alpha_list, scores, seed=seed), "sample_indices": idx.tolist(),
                               "ratio": lab["ratio"][idx].tolist(),
                               "alpha0_equals_unsteered": bool(torch.equal(imgs[0], plain))}
        rows += [(g, i, [im[j] for im in imgs]) for j, i in enumerate(idx[:GRID_ROWS])]
    all_idx = np.concatenate(list(chosen.values())) if rows else np.arange(min(8, pool_size))
    result["overhead_ratio"] = _overhead(lambda: draw(all_idx), lambda: draw(all_idx, alpha_list[-1]))
    with output_dir(out) as tmp:
        write_result(tmp / "steer.json", result, SteerFile)
        if rows:
            _grid(rows, alpha_list, tmp / "steer_grid.png")
        cv.save(tmp / "concept")
    return result


def _references(adapter) -> torch.Tensor:
    """Held-out images (N, C, H, W) for attribute concepts: Fashion-MNIST's 10,000 test images for
    models trained on it, else the model's held-out reference images."""
    if adapter.record.data == "fashion-mnist":
        return fashion_mnist_reference(adapter.image_size, 10_000)[0]
    return reference_images(adapter)[0]


def _overhead(plain, steered, reps: int = 5) -> float:
    """Median steered / median unsteered sampling time of the same samples, runs interleaved."""
    times = {"plain": [], "steered": []}
    for _ in range(reps):
        for kind, fn in (("plain", plain), ("steered", steered)):
            t0 = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - t0)
    return float(np.median(times["steered"]) / np.median(times["plain"]))


def _grid(rows, alphas, path):
    fig, axes = plt.subplots(len(rows), len(alphas), figsize=(1.1 * len(alphas) + 1, 1.1 * len(rows) + 0.4),
                             squeeze=False)
    for r, (g, i, ims) in enumerate(rows):
        for c, im in enumerate(ims):
            ax = axes[r, c]
            pix = ((im + 1) / 2).clamp(0, 1)
            ax.imshow(pix[0].numpy() if pix.shape[0] == 1 else pix.permute(1, 2, 0).numpy(), cmap="gray",
                      vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"a={alphas[c]:g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{g[:3]} #{i}", fontsize=7)
    return save(fig, path)
