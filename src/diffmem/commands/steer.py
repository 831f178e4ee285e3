"""``diffmem steer``: steer memorized and generalized samples toward a concept and measure how they move."""

from __future__ import annotations

from typing import Annotated


from diffmem.commands.options import AllowPickle, Device, DType, Guidance, Opt, Out, Quiet, Seed, Steps, listed
from diffmem.data.records import HYBRID
from diffmem.errors import DiffmemError
from diffmem.models import load_adapter
from diffmem.outputs import check_out, output_dir
from diffmem.plotting import plt, save
from diffmem.schemas import SteerFile, write_result
from diffmem.steer.experiment import GROUPS, STEER_POOLS, SteerConfig, SteerResult, run_steer

ModelDir = Annotated[str | None, Opt("model folder with a training record (default: the shipped hybrid)",
                                     positional=True, metavar="MODEL_DIR")]
Concept = Annotated[str, Opt("an attribute (brightness, ink; RGB models: a colour such as red), a Fashion-MNIST "
                             "class (name or 0-9), an image folder, or for text-to-image models a colour or class "
                             "word of the captions")]
Negative = Annotated[str, Opt("'auto' (an attribute: its lowest images; a class: every other class; a caption word: "
                              "held-out images whose caption lacks it), a class, a folder or 'rest': fit "
                              "mean(positives) − mean(negatives); 'swap' (caption words): the same held-out "
                              "images read with the concept word swapped into their caption minus with their "
                              "own; 'none' for the paper's plain mean")]
Alphas = Annotated[tuple, Opt("steering strengths, from 0, increasing", list_of=float, min=0)]
Window = Annotated[str, Opt("steered steps START:END or lastN[-K] (paper: 18:38 of 40)")]
Prompt = Annotated[str | None, Opt("text-to-image models: draw every candidate with this prompt (default: the "
                                   "record's duplicated and template captions, one generation each); steered on "
                                   "the conditional half of the guidance batch")]


def parse_alphas(alphas) -> tuple[float, ...]:
    """Strengths (a tuple from the CLI or a comma-separated string) as floats."""
    try:
        return tuple(float(a) for a in (alphas.split(",") if isinstance(alphas, str) else alphas) if str(a).strip())
    except ValueError:
        raise DiffmemError(f"--alphas {alphas!r}: expected comma-separated numbers") from None


def steer(out: Out, model: ModelDir = None, concept: Concept = "ink", negative: Negative = "auto",
          alphas: Alphas = (0, 0.5, 1, 1.5, 2, 3),
          samples: Annotated[tuple, Opt("groups to steer", list_of=str, choices=GROUPS)] = GROUPS,
          n_per_group: Annotated[int, Opt("samples steered per group", min=1)] = 30,
          pool_size: Annotated[int, Opt("candidate samples labelled to find each group", min=1)] = 300,
          steps: Steps = 40, window: Window = "20:40", guidance: Guidance = 1.0,
          t: Annotated[float | None, Opt("timestep at which concept activations are read (default: the "
                                         "family's, 10 for diffusers models)", min=0)] = None,
          prompt: Prompt = None,
          n_concept: Annotated[int, Opt("concept (and negative) images averaged", min=1)] = 200,
          layers: Annotated[tuple | None, Opt("comma-separated module names to steer (default: the family's "
                                              "recipe, e.g. up_blocks.0.resnets.0,up_blocks.0.resnets.1 for SD)",
                                              list_of=str)] = None,
          pool: Annotated[str | None, Opt("pooling of the concept activations (default: the family's: spatial "
                                          "mean for UNets, token mean for DiT); flatten: one value per channel and "
                                          "position, added position by position", choices=STEER_POOLS)] = None,
          device: Device = "auto", dtype: DType = "float32", allow_pickle: AllowPickle = False,
          seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Fit a concept vector, steer memorized and generalized samples, write ``steer.json`` +
    ``steer_grid.png`` + ``concept/`` (:mod:`diffmem.steer.experiment`).

    Defaults are the setup measured to steer on the shipped 16×16 model: the ``ink`` attribute, the
    up-block recipe, the last 20 of 40 steps. The paper's SD recipe on the text-to-image model is
    ``--concept red --guidance 3.5 --window 18:38 --negative none``."""
    check_out(out)
    cfg = SteerConfig(concept, negative, parse_alphas(alphas), tuple(listed(samples, str, "--samples")), n_per_group,
                      pool_size, steps, window, guidance, t, prompt, n_concept, seed,
                      listed(layers, str, "--layers") or None, pool)
    res = run_steer(load_adapter(model or HYBRID, allow_pickle, device, dtype), cfg, quiet)
    res.result["model"] = str(model) if model else "shipped hybrid"
    with output_dir(out) as tmp:
        write_result(tmp / "steer.json", res.result, SteerFile)
        if res.rows:
            plot_grid(res, tmp / "steer_grid.png")
        res.concept.save(tmp / "concept")
    return res.result


def plot_grid(res: SteerResult, path):
    """Each steered sample (rows) at every strength (columns)."""
    rows, alphas = res.rows, res.result["alphas"]
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
