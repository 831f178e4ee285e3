"""``diffmem steer``: steer memorized and generalized samples toward a concept and measure how they move."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import torch

from diffmem.bench.data import fashion_mnist_reference
from diffmem.bench.labels import label_samples
from diffmem.bench.run import HYBRID, training_images
from diffmem.data.images import FASHION_MNIST_CLASSES, load_images
from diffmem.errors import DiffmemError, check
from diffmem.models import load_adapter
from diffmem.outputs import output_dir, progress, write_json
from diffmem.plotting import plt, save
from diffmem.probe.sampling import sample
from diffmem.steer.classifier import CLASSIFIER, class_probability, load_classifier
from diffmem.steer.concept import ConceptVector
from diffmem.steer.hooks import parse_window, steering

GROUPS = ("memorized", "generalized")


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise DiffmemError(f"--alphas {text!r}: expected comma-separated numbers") from None
    check(len(alphas) >= 2 and all(a == a for a in alphas), f"--alphas {text!r}: need at least two numbers")
    check(alphas == sorted(alphas) and alphas[0] == 0, f"--alphas {text!r}: must start at 0 and increase")
    return alphas


def resolve_concept(spec: str, adapter, n: int, exclude: int | None = None) -> tuple[torch.Tensor, int | None]:
    """Images of a concept: a Fashion-MNIST class (name or index; its first n test images), ``rest``
    (n test images of every class but ``exclude``), or a folder."""
    names = [c.lower() for c in FASHION_MNIST_CLASSES]
    if spec.lower() == "rest":
        x, y = fashion_mnist_reference(adapter.image_size, 10_000)
        return x[torch.from_numpy(y != exclude)][:n], None
    if spec.lower() in names or spec.isdigit():
        k = names.index(spec.lower()) if spec.lower() in names else int(spec)
        check(0 <= k < len(names), f"concept {spec!r}: unknown class (0–9 or one of {', '.join(FASHION_MNIST_CLASSES)})")
        x, y = fashion_mnist_reference(adapter.image_size, 10_000)
        return x[torch.from_numpy(y == k)][:n], k
    if not os.path.isdir(spec):
        raise DiffmemError(f"concept {spec!r}: neither a class ({', '.join(FASHION_MNIST_CLASSES)}) nor a folder")
    return torch.from_numpy(load_images(spec, size=adapter.image_size, channels=adapter.image_channels, limit=n)), None


def _metrics(images: list[torch.Tensor], alphas: list[float], probs: np.ndarray | None) -> dict:
    """images[a] (k, C, H, W) per alpha; probs (k, A) target probabilities or None."""
    base = images[0]
    change = [float((images[i] - base).flatten(1).norm(dim=1).mean() / a) for i, a in enumerate(alphas) if a > 0]
    out = {"n": len(base), "output_change_per_unit": float(np.mean(change)),
           "output_change_per_unit_by_alpha": change}
    steps = np.stack([(images[i + 1] - images[i]).flatten(1).norm(dim=1).numpy() for i in range(len(alphas) - 1)], 1)
    out["largest_pixel_step"] = float(steps.max(1).mean())
    # share of a sample's whole path (Σ of steps) taken in its single largest step: 1 = one jump
    out["pixel_jump_fraction"] = float((steps.max(1) / np.maximum(steps.sum(1), 1e-12)).mean())
    if probs is not None:
        d = np.diff(probs, axis=1)
        out.update({"attribute_curve": probs.mean(0).tolist(),
                    "attribute_gain": float((probs[:, -1] - probs[:, 0]).mean()),
                    "monotonicity": float((d >= 0).mean()),
                    "largest_attribute_jump": float(np.abs(d).max(1).mean())})
    return out


def run_steer(out: str | os.PathLike, model: str | os.PathLike | None = None, concept: str = "Trouser",
              negative: str | None = "rest", alphas: str = "0,0.25,0.5,0.75,1,1.25,1.5,2",
              samples: str = "memorized,generalized",
              n_per_group: int = 6, pool_size: int = 300, steps: int = 40, window: str = "0:20",
              guidance: float = 1.0, t: float = 10, n_concept: int = 50, seed: int = 0, quiet: bool = False) -> dict:
    """Fit a concept vector, steer memorized and generalized samples, write ``steer.json`` + ``steer_grid.png``.

    Defaults suit the shipped 16×16 model: mean(concept) − mean(other classes), steps 0–20 of 40
    (class shape is decided early there; the paper's SD recipe is ``negative=None, window="18:38"``).
    """
    groups = [g.strip() for g in samples.split(",") if g.strip()]
    check(groups and set(groups) <= set(GROUPS), f"--samples {samples!r}: a list of {', '.join(GROUPS)}")
    alpha_list = parse_alphas(alphas)
    adapter = load_adapter(model or HYBRID)
    win = parse_window(window, steps)
    pos, target = resolve_concept(concept, adapter, n_concept)
    check(len(pos) > 0, f"concept {concept!r}: no images")
    negative = None if negative in (None, "", "none") else negative
    neg = resolve_concept(negative, adapter, n_concept, exclude=target)[0] if negative else None
    cv = ConceptVector(adapter, t=t, mode="mean_diff" if negative else "mean", seed=seed).fit(
        pos, neg, cond=target if target is not None and adapter.null_class is not None else None)
    # candidates: samples of other classes, labelled exactly against the training set
    k = adapter.num_class_embeds - 1
    cls = [c for c in range(k) if c != target]
    cand_classes = [cls[j % len(cls)] for j in range(pool_size)]
    cand = sample(adapter, pool_size, cand_classes, guidance, steps, seed=seed, quiet=quiet)
    lab = label_samples(cand, *training_images(adapter))
    chosen = {g: np.flatnonzero(lab["memorized"] == (g == "memorized"))[:n_per_group] for g in groups}
    classifier, cmeta = load_classifier(CLASSIFIER) if target is not None else (None, None)
    result = {"concept": concept, "target_class": target, "negative": negative, "alphas": alpha_list,
              "steps": steps, "window": list(win), "guidance": guidance, "t": t, "layers": cv.layers,
              "mode": cv.mode, "seed": seed, "model": str(adapter.path), "candidates": pool_size,
              "classifier_test_accuracy": None if cmeta is None else cmeta["test_accuracy"], "groups": {}}
    rows = []
    for g, idx in chosen.items():
        if len(idx) == 0:
            result["groups"][g] = {"n": 0}
            continue
        c = [cand_classes[i] for i in idx]
        plain = sample(adapter, len(idx), c, guidance, steps, seed=seed, indices=idx, quiet=True)
        imgs = []
        for a in progress(alpha_list, desc=f"steer {g}"):
            with steering(adapter, cv.vectors_, a, win, cfg_batch=guidance != 1.0):
                imgs.append(sample(adapter, len(idx), c, guidance, steps, seed=seed, indices=idx, quiet=True))
        probs = None if classifier is None else np.stack(
            [class_probability(classifier, im, target, cmeta["size"]) for im in imgs], 1)
        result["groups"][g] = {**_metrics(imgs, alpha_list, probs), "sample_indices": idx.tolist(),
                               "ratio": lab["ratio"][idx].tolist(),
                               "alpha0_equals_unsteered": bool(torch.equal(imgs[0], plain))}
        rows += [(g, i, [im[j] for im in imgs]) for j, i in enumerate(idx)]
    all_idx = np.concatenate([i for i in chosen.values()]) if rows else np.arange(min(8, pool_size))
    result["overhead_ratio"] = _overhead(adapter, cv.vectors_, alpha_list[-1], win, all_idx,
                                         [cand_classes[i] for i in all_idx], guidance, steps, seed)
    with output_dir(out) as tmp:
        write_json(tmp / "steer.json", result)
        if rows:
            _grid(rows, alpha_list, tmp / "steer_grid.png")
        cv.save(tmp / "concept")
    return result


def _overhead(adapter, vectors, alpha, win, idx, classes, guidance, steps, seed, reps: int = 5) -> float:
    """Median steered / median unsteered sampling time of the same samples, runs interleaved."""
    times = {"plain": [], "steered": []}
    for _ in range(reps):
        for kind in times:
            t0 = time.perf_counter()
            ctx = steering(adapter, vectors, alpha, win, cfg_batch=guidance != 1.0) if kind == "steered" \
                else contextlib.nullcontext()
            with ctx:
                sample(adapter, len(idx), classes, guidance, steps, seed=seed, indices=idx, quiet=True)
            times[kind].append(time.perf_counter() - t0)
    return float(np.median(times["steered"]) / np.median(times["plain"]))


def _grid(rows, alphas, path):
    fig, axes = plt.subplots(len(rows), len(alphas), figsize=(1.1 * len(alphas) + 1, 1.1 * len(rows) + 0.4),
                             squeeze=False)
    for r, (g, i, ims) in enumerate(rows):
        for c, im in enumerate(ims):
            ax = axes[r, c]
            ax.imshow(((im[0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"a={alphas[c]:g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{g[:3]} #{i}", fontsize=7)
    return save(fig, path)
