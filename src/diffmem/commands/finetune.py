"""``diffmem finetune``: fine-tune a Stable Diffusion-family model on a small captioned set (full UNet or
LoRA), with the memorization monitor and an optional stop at its alarm."""

from __future__ import annotations

from typing import Annotated

from diffmem.commands.options import InputRange, Opt, Out, Quiet, Seed, read_prompts
from diffmem.commands.options import input_range as parse_range
from diffmem.data.records import T2I
from diffmem.data.sources import read_inputs
from diffmem.errors import check
from diffmem.models import load_adapter
from diffmem.outputs import check_out
from diffmem.monitor.finetune import QUICK_DEMO, FinetuneDemo, FinetuneWatch, finetune_demo, monitored_finetune
from diffmem.train.finetune import Finetune

Base = Annotated[str | None, Opt("the Stable Diffusion-family model folder to start from (default: the shipped "
                                 "text-to-image model)", positional=True, metavar="BASE")]
Images = Annotated[str | None, Opt("the fine-tuning set: a .jsonl manifest with 'path' and 'prompt', or a folder / "
                            ".npy with --captions", metavar="DIR")]
Captions = Annotated[str | None, Opt("a file of captions, one a line, in the order of --images", metavar="FILE")]
Reference = Annotated[str | None, Opt("held-out images the model never trained on, for --monitor", metavar="DIR")]
LoraRank = Annotated[int, Opt("0: fine-tune the whole UNet; R > 0: a LoRA of rank R on its attention projections",
                              min=0, max=256)]
MonitorEvery = Annotated[int, Opt("run the memorization monitor every K steps (0: off) and keep DIR/monitor.json",
                                  min=0)]


def finetune(out: Out, base: Base = None, images: Images = None, captions: Captions = None, reference: Reference = None,
             lora_rank: LoraRank = 0, steps: Annotated[int, Opt("optimizer steps", min=1, max=10**6)] = 1000,
             batch_size: Annotated[int, Opt("training batch", min=1, max=4096)] = 16,
             lr: Annotated[float, Opt("learning rate", above=0)] = 1e-4,
             checkpoint_every: Annotated[int, Opt("save DIR/checkpoints/step-K every K steps (0: none)", min=0)] = 0,
             monitor_every: MonitorEvery = 0,
             stop_on_alarm: Annotated[bool, Opt("stop at the monitor's first alarm; finetune.json names the last "
                                                "checkpoint before it as the one to keep")] = False,
             ground_truth: Annotated[int, Opt("with --monitor-every: also sample this many generations of the "
                                              "captions at every measurement and record the copy fraction",
                                              min=0, max=10000)] = 0,
             demo: Annotated[bool, Opt("the measured demonstration on BASE's held-out items: memorizing fine-tunes "
                                       "(full and LoRA) and a control, with the monitor and ground truth")] = False,
             quick: Annotated[bool, Opt("with --demo: tiny runs (seconds; for tests)")] = False,
             input_range: InputRange = None, seed: Seed = 0, quiet: Quiet = False) -> dict:
    """Fine-tune BASE on a captioned image set and write the model (or its LoRA weights), checkpoints that
    plain diffusers loads, ``finetune.json`` and, with ``--monitor-every``, ``monitor.json``."""
    check_out(out)
    base = base or str(T2I)
    if demo:
        check(images is None, "--demo fine-tunes on BASE's held-out items: give no --images")
        return finetune_demo(base, out, QUICK_DEMO if quick else FinetuneDemo(), seed, quiet)
    check(images is not None, "--images: give the fine-tuning set (or --demo)")
    cfg = Finetune(steps, batch_size, lr, lora_rank, checkpoint_every=checkpoint_every, seed=seed)
    check(monitor_every or not (stop_on_alarm or ground_truth), "--stop-on-alarm, --ground-truth: need the monitor "
                                                               "(--monitor-every K)")
    check(monitor_every == 0 or reference is not None, "--monitor-every: needs --reference held-out images")
    watch = FinetuneWatch(monitor_every, stop_on_alarm, ground_truth) if monitor_every else None
    adapter = load_adapter(base)
    size, channels, rng = adapter.image_size, adapter.image_channels, parse_range(input_range)
    x, _, prompts = read_inputs(images, size, channels, rng, what="images")
    caps = read_prompts(captions, "--captions") if captions is not None else prompts
    check(caps is not None and all(c is not None for c in caps) and len(caps) == len(x),
          f"--images {images}: {len(x)} images but {0 if caps is None else sum(c is not None for c in caps)} "
          f"captions; give a manifest with 'prompt' or --captions with one line per image")
    ref = read_inputs(reference, size, channels, rng, what="reference")[0] if reference is not None else None
    return monitored_finetune(base, x, list(caps), out, cfg, ref, watch, quiet)
