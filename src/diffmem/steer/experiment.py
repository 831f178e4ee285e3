"""The steering experiment (``diffmem steer``): fit a concept vector, steer memorized and generalized
samples along a strength sweep, and measure how each group moves.

Two designs, by how the model is conditioned:

* **class / unconditional models** (the shipped 16×16 hybrid): a candidate pool of samples, each
  labelled exactly (d1/d2 < 1/3); the groups are its copies and its non-copies. Concepts: an attribute
  (``ink``, ``brightness``), a Fashion-MNIST class, or an image folder.
* **prompt models** with a captioned training record (Stable Diffusion in miniature): one generation
  per prompt; ``memorized`` = the duplicated items' unique captions whose generation copies,
  ``generalized`` = template captions whose generation copies nothing; prompts that already name the
  concept are left out. A concept word (a colour such as ``red``, or a class such as ``trouser``)
  is read from the held-out images whose caption contains it, each with its own caption (the released
  recipe: mean of spatially mean-pooled up-block activations at t = 10); ``--negative auto`` subtracts
  the held-out images whose caption lacks it. A colour is scored as the percentile of its chroma
  statistic among held-out images, a class by the shipped classifier.

Per group (each with a 95% bootstrap CI over samples, :func:`~diffmem.steer.metrics.steering_metrics`):
attribute gain, monotonicity, jump fractions, ``alpha_half_gain``, the garment-mask IoU with the
unsteered sample per strength (an edit keeps the shape, a smear does not) and, with exact labels, the
share still copying per strength. ``resist`` compares the groups where the claim is made."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from diffmem.data import FASHION_MNIST_CLASSES, load_images
from diffmem.data.records import (copy_targets, fashion_mnist_reference, record_prompts, record_reference_captions,
                                  reference_images, require_record)
from diffmem.errors import DiffmemError, check
from diffmem.neighbours import label_samples
from diffmem.outputs import progress
from diffmem.probe.adapters import Adapter
from diffmem.probe.capture import parse_layer
from diffmem.probe.sampling import Sampler, sample_images
from diffmem.steer.attributes import (ATTRIBUTES, attribute_concept, attribute_percentile, garment_iou,
                                     validate_shape_measure)
from diffmem.steer.classifier import CLASSIFIER, class_probabilities, class_probability, load_classifier
from diffmem.steer.concept import ConceptVector
from diffmem.steer.hooks import parse_window, steering
from diffmem.steer.metrics import alpha_at_fraction, curve_at, steering_metrics
from diffmem.train.t2i import CLASS_WORDS, COLOURS

GROUPS = ("memorized", "generalized")
GRID_ROWS = 6          # samples per group shown in steer_grid.png
BREAK_IOU = 0.8        # an edit keeps the garment: mean mask IoU with the unsteered sample at least this
KEPT_CLASS = 0.9       # … or the classifier's class of the unsteered sample, for at least this share
VALIDATION_IMAGES = 300   # held-out images the shape measure is checked on (known edits and smears)
STEER_POOLS = ("spatial_mean", "token_mean", "flatten")   # concept pools: one value per channel, or per position


@dataclass(frozen=True)
class SteerConfig:
    """One steering experiment. ``concept``: an attribute, a class, a concept word of the captions or an
    image folder; ``negative``: ``auto``, ``none`` (the paper's plain mean), a class, a folder or ``rest``;
    ``alphas``: strengths from 0, increasing; ``groups``; ``n_per_group`` samples steered per group, found
    among ``pool_size`` candidates (class models); DDIM ``steps``, the steered ``window`` (START:END),
    ``guidance`` (prompt models steer the conditional half only); ``t``: the timestep concept activations
    are read at (None: the family's ``default_t``); ``prompt``: every candidate drawn with this prompt;
    ``n_concept`` concept (and negative) images; ``seed``; ``layers`` steered (None: the family's recipe,
    ``adapter.steering_layers()``); ``pool`` of the concept activations (None: the family's
    ``steering_pool``; ``flatten`` keeps every position, and the vector is added position by position)."""

    concept: str = "ink"
    negative: str = "auto"
    alphas: tuple[float, ...] = (0, 0.5, 1, 1.5, 2, 3)
    groups: tuple[str, ...] = GROUPS
    n_per_group: int = 30
    pool_size: int = 300
    steps: int = 40
    window: str = "20:40"
    guidance: float = 1.0
    t: float | None = None
    prompt: str | None = None
    n_concept: int = 200
    seed: int = 0
    layers: tuple[str, ...] | None = None
    pool: str | None = None

    def __post_init__(self):
        check(bool(self.groups) and set(self.groups) <= set(GROUPS),
              f"groups={','.join(self.groups)}: a list of {', '.join(GROUPS)}")
        a = list(self.alphas)
        text = ",".join(f"{v:g}" for v in a)
        check(len(a) >= 2 and all(np.isfinite(a)), f"alphas={text}: need at least two finite numbers")
        check(a == sorted(a) and a[0] == 0 and len(set(a)) == len(a), f"alphas={text}: must start at 0 and increase")
        check(self.pool in (None, *STEER_POOLS), f"pool={self.pool!r}: one of {', '.join(STEER_POOLS)}")


@dataclass
class Concept:
    """What the vector is fitted on and how a steered image is scored: positives and negatives (N, C, H, W)
    with their conditions (one per image, or None), ``score`` (images → (B,) in [0, 1]) and its ``measure``,
    the ``target`` class (or None), the ``attribute`` name (or None), the ``word`` prompts must not name,
    the resolved ``negative`` spec (None: the plain mean) and the scoring classifier's test accuracy."""

    positives: torch.Tensor
    negatives: torch.Tensor | None
    pos_cond: list | None
    neg_cond: list | None
    score: object
    measure: str | None
    target: int | None = None
    attribute: str | None = None
    word: str | None = None
    negative: str | None = None
    classifier_test_accuracy: float | None = None


@dataclass
class SteerResult:
    """``result`` (the ``steer.json`` object), ``rows`` (group, sample, images per strength) for the grid,
    the fitted ``concept`` vector."""

    result: dict
    rows: list
    concept: ConceptVector


# -- concepts --------------------------------------------------------------------------------------
def _fashion_class(spec: str) -> int | None:
    names = [c.lower() for c in FASHION_MNIST_CLASSES]
    if spec.lower() in names:
        return names.index(spec.lower())
    if spec.isdigit():
        k = int(spec)
        check(0 <= k < len(names), f"concept={spec!r}: classes are 0–9 ({', '.join(FASHION_MNIST_CLASSES)})")
        return k
    return None


def resolve_concept(spec: str, adapter: Adapter, n: int, what: str, exclude: int | None = None
                    ) -> tuple[torch.Tensor, int | None]:
    """Images of a concept: a Fashion-MNIST class (name or index; its first n test images), ``rest``
    (n test images of every class but ``exclude``), or an image folder at the model's size."""
    k = None if spec.lower() == "rest" else _fashion_class(spec)
    if spec.lower() == "rest" or k is not None:
        check(adapter.image_channels == 1, f"{what}={spec!r}: Fashion-MNIST classes suit 1-channel models; "
                                           f"pass an image folder")
        check(spec.lower() != "rest" or exclude is not None,
              f"{what}=rest: needs a class concept; pass negative='none' or a folder")
        x, y = fashion_mnist_reference(adapter.image_size, 10_000)
        keep = (y != exclude) if k is None else (y == k)
        return x[torch.from_numpy(keep)][:n], k
    if not os.path.isdir(spec):
        raise DiffmemError(f"{what}={spec!r}: neither a class ({', '.join(FASHION_MNIST_CLASSES)}) nor a folder")
    return torch.from_numpy(load_images(spec, size=adapter.image_size, channels=adapter.image_channels, limit=n)), None


def _held_out(adapter: Adapter) -> torch.Tensor:
    """Held-out images (N, C, H, W): Fashion-MNIST's 10,000 test images for models trained on it, else the
    model's held-out reference images."""
    if adapter.record.data == "fashion-mnist":
        return fashion_mnist_reference(adapter.image_size, 10_000)[0]
    return reference_images(adapter)[0]


def _class_scorer(target: int):
    classifier, meta = load_classifier(CLASSIFIER)
    return (lambda im: class_probability(classifier, im, target, meta["size"])), meta["test_accuracy"]


def pixel_concept(adapter: Adapter, cfg: SteerConfig) -> Concept:
    """A concept for class-conditional or unconditional models (attributes score on odd held-out images,
    their concept images are even ones)."""
    spec, negative = cfg.concept, None if cfg.negative in (None, "", "none") else cfg.negative
    check(negative != "swap", "negative=swap: swaps a word of the captions, so it needs a text-to-image model "
                              "with a captioned training record")
    attribute = spec.lower() if spec.lower() in ATTRIBUTES else None
    if attribute is not None:
        refs = _held_out(adapter)
        pos, neg = attribute_concept(attribute, refs[0::2], cfg.n_concept)
        check(negative in (None, "auto"), f"negative={negative}: an attribute's negatives are its lowest images "
                                          f"('auto') or none")
        measure_ref = refs[1::2]
        return Concept(pos, neg if negative else None, None, None,
                       lambda im: attribute_percentile(attribute, im, measure_ref),
                       f"percentile of the {ATTRIBUTES[attribute][1]} among {len(measure_ref):,} held-out images",
                       attribute=attribute, negative=negative)
    pos, target = resolve_concept(spec, adapter, cfg.n_concept, "concept")
    check(len(pos) > 0, f"concept={spec!r}: no images")
    negative = ("rest" if target is not None else None) if negative == "auto" else negative
    neg = resolve_concept(negative, adapter, cfg.n_concept, "negative", exclude=target)[0] if negative else None
    read = target if adapter.condition_kind == "class" and target is not None else None
    scorer, accuracy = _class_scorer(target) if target is not None else (None, None)
    return Concept(pos, neg, None if read is None else [read] * len(pos), None, scorer,
                   "classifier P(concept class)" if scorer is not None else None, target=target,
                   negative=negative, classifier_test_accuracy=accuracy)


def _has_word(caption: str, word: str) -> bool:
    return word.lower() in caption.lower().split()


def _swap_word(caption: str, word: str) -> str:
    """``caption`` with its word of ``word``'s vocabulary (the palette or the class words of the captions)
    replaced by ``word``: ``a blue top`` → ``a red top``; unchanged when it has none."""
    vocab = next((v for v in (set(COLOURS), set(CLASS_WORDS)) if word in v), set())
    return " ".join(word if w.lower() in vocab else w for w in caption.split())


def prompt_concept(adapter: Adapter, cfg: SteerConfig) -> Concept:
    """A concept word of the captions: the held-out images whose caption names it, each read with its own
    caption; negatives (``auto``): those whose caption does not. A colour is scored as the percentile of
    its chroma statistic among the held-out images, a Fashion-MNIST class by the shipped classifier."""
    require_record(adapter, "concept words are read from the captions of its held-out images")
    word = cfg.concept.lower()
    held = reference_images(adapter)[0]                              # (N, C, H, W), the record's held-out items
    caps = record_reference_captions(adapter.record)
    has = np.array([_has_word(c, word) for c in caps])
    negative = None if cfg.negative in (None, "", "none") else cfg.negative
    check(negative in (None, "auto", "swap"), f"negative={negative}: a concept word's negatives are the held-out "
                                              f"images whose caption lacks it ('auto'), the same images with the "
                                              f"word swapped in ('swap') or none")
    check(negative == "swap" or has.sum() >= 2, f"concept={cfg.concept!r}: fewer than 2 held-out captions name it")
    target = _fashion_class(word) if word in [c.lower() for c in FASHION_MNIST_CLASSES] or word.isdigit() else None
    if word in ATTRIBUTES:
        score = lambda im: attribute_percentile(word, im, held)  # noqa: E731
        measure, accuracy = f"percentile of the {ATTRIBUTES[word][1]} among {len(held):,} held-out images", None
    else:
        check(target is not None, f"concept={cfg.concept!r}: neither a colour ({', '.join(sorted(ATTRIBUTES))}) "
                                  f"nor a class ({', '.join(FASHION_MNIST_CLASSES)})")
        score, accuracy = _class_scorer(target)
        measure = "classifier P(concept class) of the garment's shape"
    if negative == "swap":                    # the text's own direction: one image, two captions
        pos = neg = np.array([i for i in np.flatnonzero(~has) if _swap_word(caps[i], word) != caps[i]],
                             dtype=int)[:cfg.n_concept]
        check(len(pos) >= 2, f"concept={cfg.concept!r}: negative=swap needs 2 held-out captions with a word of "
                             f"its vocabulary (colour or class) to swap it into")
        pos_caps = [_swap_word(caps[i], word) for i in pos]
    else:
        pos, neg = np.flatnonzero(has)[:cfg.n_concept], np.flatnonzero(~has)[:cfg.n_concept]
        pos_caps = [caps[i] for i in pos]
    return Concept(held[pos], held[neg] if negative else None, pos_caps, [caps[i] for i in neg] if negative else None,
                   score, measure, target=target, attribute=word if word in ATTRIBUTES else None, word=word,
                   negative=negative, classifier_test_accuracy=accuracy)


# -- candidates ------------------------------------------------------------------------------------
def pixel_candidates(adapter: Adapter, cfg: SteerConfig, concept: Concept, targets, quiet: bool):
    """(conditions of the pool, {group: indices}, copy labels of the pool)."""
    conds = adapter.conditions(cfg.pool_size, prompts=None if cfg.prompt is None else [cfg.prompt])
    if adapter.condition_kind == "class" and concept.target is not None:
        others = [c for c in range(adapter.num_classes) if c != concept.target] or [concept.target]
        conds = [others[j % len(others)] for j in range(cfg.pool_size)]
    cand = sample_images(adapter, cfg.pool_size, conds, Sampler(cfg.guidance, cfg.steps), cfg.seed, quiet)
    lab = label_samples(cand, *targets)
    chosen = {g: np.flatnonzero(lab["memorized"] == (g == "memorized"))[:cfg.n_per_group] for g in cfg.groups}
    return conds, chosen, lab


def prompt_candidates(adapter: Adapter, cfg: SteerConfig, concept: Concept, targets, quiet: bool):
    """One generation per prompt: the duplicated items' captions (kept when the generation copies) and the
    template captions (kept when it copies nothing), none naming the concept word."""
    ps = record_prompts(adapter.record, per_kind=4 * cfg.n_per_group)
    kinds = {"memorized": "dup", "generalized": "generic"}
    keep = [(p, k) for p, k in zip(ps.prompts, ps.kind) if k in kinds.values() and not _has_word(p, concept.word)]
    conds, kind = [p for p, _ in keep], np.array([k for _, k in keep])
    x = sample_images(adapter, len(conds), conds, Sampler(cfg.guidance, cfg.steps), cfg.seed, quiet)
    lab = label_samples(x, *targets)
    chosen = {g: np.flatnonzero((kind == kinds[g]) & (lab["memorized"] == (g == "memorized")))[:cfg.n_per_group]
              for g in cfg.groups}
    return conds, chosen, lab


# -- the experiment --------------------------------------------------------------------------------
def _overhead(plain, steered, reps: int = 5) -> float:
    """Median steered / median unsteered sampling time of the same samples, runs interleaved."""
    times = {"plain": [], "steered": []}
    for _ in range(reps):
        for kind, fn in (("plain", plain), ("steered", steered)):
            t0 = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - t0)
    return float(np.median(times["steered"]) / np.median(times["plain"]))


def _edit(imgs, alphas, scores, iou, kept, seed) -> dict:
    """The sweep up to the last strength where the edit is still an edit — at it and every strength before,
    the group's mean shape IoU ≥ :data:`BREAK_IOU` or its class kept ≥ :data:`KEPT_CLASS`: that strength,
    and the attribute gain and monotonicity up to it (with CIs)."""
    ok = iou.mean(0) >= BREAK_IOU                                                                   # (A,)
    if kept is not None:
        ok |= kept.mean(0) >= KEPT_CLASS
    k = len(alphas) - 1 if ok.all() else int(np.argmin(ok)) - 1
    out = {"alpha": float(alphas[max(k, 0)]), "rule": f"shape IoU >= {BREAK_IOU} or class kept >= {KEPT_CLASS}"}
    if k >= 1 and scores is not None:
        m = steering_metrics(imgs[:k + 1], alphas[:k + 1], scores[:, :k + 1], seed=seed)
        out.update({key: m[key] for key in ("attribute_gain", "attribute_gain_ci", "monotonicity", "monotonicity_ci")})
    return out


def _class_kept(imgs) -> np.ndarray | None:
    """(k, A): whether the shipped classifier's class of each steered sample is that of its unsteered one."""
    if imgs[0].shape[1] not in (1, 3):
        return None
    classifier, meta = load_classifier(CLASSIFIER)
    cls = np.stack([class_probabilities(classifier, im, meta["size"]).argmax(1) for im in imgs], 1)   # (k, A)
    return cls == cls[:, :1]


def _group_result(imgs, alphas, concept: Concept, idx, lab, targets, seed) -> dict:
    scores = None if concept.score is None else np.stack([concept.score(im) for im in imgs], 1)    # (k, A)
    out = steering_metrics(imgs, alphas, scores, seed=seed)
    iou = np.stack([garment_iou(im, imgs[0]) for im in imgs], 1)                                      # (k, A)
    out["shape_iou_curve"] = iou.mean(0).tolist()
    kept = _class_kept(imgs)
    out["class_kept_curve"] = None if kept is None else kept.mean(0).tolist()
    out["edit"] = _edit(imgs, alphas, scores, iou, kept, seed)
    copies = np.stack([label_samples(im, *targets)["memorized"] for im in imgs], 1)                  # (k, A)
    out["copy_curve"] = copies.mean(0).tolist()
    out["ratio"] = lab["ratio"][idx].tolist()
    if scores is not None:
        out["alpha_half_gain"] = alpha_at_fraction(alphas, out["attribute_curve"], 0.5)
    out["_scores"] = scores
    return out


def _resist(groups: dict, alphas: list[float], n_boot: int = 1000, seed: int = 0) -> dict | None:
    """The claim's test: the gain of memorized samples at α* (where generalized ones reach half their
    gain) against half of the generalized gain there, each with a bootstrap CI; ``resist`` when the
    memorized CI lies wholly below."""
    m, g = groups.get("memorized", {}), groups.get("generalized", {})
    if m.get("_scores") is None or g.get("_scores") is None or g.get("alpha_half_gain") is None:
        return None
    a_star = g["alpha_half_gain"]
    rng = np.random.default_rng(seed)

    def gain_at(s, boot=True):
        idx = rng.integers(0, len(s), (n_boot, len(s))) if boot else None
        curves = s[idx].mean(1) if boot else s.mean(0)[None]                                           # (B, A)
        return np.array([curve_at(alphas, c, a_star) - c[0] for c in curves])
    gm, gg = gain_at(m["_scores"]), 0.5 * gain_at(g["_scores"])
    ci = lambda v: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))]  # noqa: E731
    return {"alpha_star": a_star, "memorized_gain": float(gain_at(m["_scores"], False)[0]),
            "memorized_gain_ci": ci(gm), "half_generalized_gain": float(0.5 * gain_at(g["_scores"], False)[0]),
            "half_generalized_gain_ci": ci(gg), "resist": bool(ci(gm)[1] < ci(gg)[0])}


def run_steer(adapter: Adapter, cfg: SteerConfig = SteerConfig(), quiet: bool = False) -> SteerResult:
    """Fit the concept vector, pick the groups, steer each along ``cfg.alphas`` and measure it."""
    prompt_model = adapter.condition_kind == "prompt" and cfg.prompt is None
    win = parse_window(cfg.window, cfg.steps)
    alphas = [float(a) for a in cfg.alphas]
    require_record(adapter, "steering picks memorized and generalized samples by exact labels")
    for name in cfg.layers or ():
        check("@" not in name, f"layers={name!r}: steering hooks every call of a module; no '@k'")
        parse_layer(name, adapter.denoiser)
    concept = prompt_concept(adapter, cfg) if prompt_model else pixel_concept(adapter, cfg)
    cv = ConceptVector(adapter, cfg.layers, t=cfg.t, pool=cfg.pool, mode="mean_diff" if concept.negatives is not None else "mean",
                       seed=cfg.seed).fit(concept.positives, concept.negatives, cond=concept.pos_cond,
                                          negative_cond=concept.neg_cond)
    targets = copy_targets(adapter)                  # what a copy of each training image looks like, and its count
    conds, chosen, lab = (prompt_candidates if prompt_model else pixel_candidates)(adapter, cfg, concept, targets,
                                                                                   quiet)
    cfg_batch = cfg.guidance != 1.0 and conds is not None

    def draw(idx, alpha=None):
        c = None if conds is None else [conds[i] for i in idx]
        ctx = steering(adapter, cv.vectors_, alpha, win, cfg_batch=cfg_batch) if alpha is not None \
            else contextlib.nullcontext()
        with ctx:
            return sample_images(adapter, len(idx), c, Sampler(cfg.guidance, cfg.steps), cfg.seed, True, idx)

    groups, rows = {}, []
    for g, idx in chosen.items():
        if len(idx) == 0:
            groups[g] = {"n": 0}
            continue
        plain = draw(idx)
        imgs = [draw(idx, a) for a in progress(alphas, desc=f"steer {g}", disable=quiet)]
        groups[g] = {**_group_result(imgs, alphas, concept, idx, lab, targets, cfg.seed),
                     "sample_indices": idx.tolist(), "alpha0_equals_unsteered": bool(torch.equal(imgs[0], plain))}
        if conds is not None and prompt_model:
            groups[g]["prompts"] = [conds[i] for i in idx]
        rows += [(g, i, [im[j] for im in imgs]) for j, i in enumerate(idx[:GRID_ROWS])]
    resist = _resist(groups, alphas, seed=cfg.seed)
    gen = groups.get("generalized", {})
    broken = [a for a, v in zip(alphas, gen.get("shape_iou_curve", [])) if v < BREAK_IOU]
    for grp in groups.values():
        grp.pop("_scores", None)
    all_idx = np.concatenate([v for v in chosen.values() if len(v)]) if rows else np.arange(min(8, len(lab["ratio"])))
    result = {"concept": cfg.concept, "attribute": concept.attribute, "measure": concept.measure,
              "target_class": concept.target, "negative": concept.negative,
              "alphas": alphas, "steps": cfg.steps, "window": list(win), "guidance": cfg.guidance, "t": cv.t_,
              "layers": cv.layers_, "pool": cv.pool_, "mode": cv.mode, "prompt": cfg.prompt, "seed": cfg.seed,
              "design": "prompts" if prompt_model else "pool", "candidates": len(lab["ratio"]),
              "n_concept": len(concept.positives), "classifier_test_accuracy": concept.classifier_test_accuracy,
              "groups": groups, "resist": resist,
              "break_alpha": broken[0] if broken else None, "break_rule": f"generalized mean shape IoU < {BREAK_IOU}",
              "shape_measure_check": validate_shape_measure(_held_out(adapter)[:VALIDATION_IMAGES], BREAK_IOU, cfg.seed),
              "overhead_ratio": _overhead(lambda: draw(all_idx), lambda: draw(all_idx, alphas[-1]))}
    return SteerResult(result, rows, cv)
