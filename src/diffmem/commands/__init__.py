"""The commands layer: what the CLI calls. Each command is one function whose annotated signature
declares its options (:mod:`diffmem.commands.options`); the library below never imports this package.

``COMMANDS`` maps the command words to ``(module:function, example)``.
"""

COMMANDS = {
    ("theory", "verify"): ("theory:verify", "diffmem theory verify --quick --seed 0 --out out/verify"),
    ("theory", "phase"): ("theory:phase", "diffmem theory phase --units 4,8,16 --out out/phase"),
    ("theory", "weights"): ("theory:weights", "diffmem theory weights --n 16 --out out/weights"),
    ("theory", "diffusion"): ("theory:diffusion", "diffmem theory diffusion --n 16 --out out/diffusion"),
    ("theory", "bench"): ("theory:bench", "diffmem theory bench"),
    ("layers",): ("probe:layers", "diffmem layers path/to/model"),
    ("scan",): ("probe:scan", "diffmem scan path/to/model samples/ --out out/scan"),
    ("eval",): ("evaluate:evaluate", "diffmem eval out/scan/scores.parquet --labels labels.csv --out out/eval"),
    ("train",): ("train:train", "diffmem train --distinct 2000 --dup 10x100,20x40 --steps 6000 --out models/hybrid"),
    ("finetune",): ("finetune:finetune", "diffmem finetune models/t2i --images small/manifest.jsonl --lora-rank 4 "
                                         "--steps 1000 --checkpoint-every 100 --monitor-every 100 --reference heldout/ "
                                         "--out out/finetune"),
    ("train-classifier",): ("train:classifier", "diffmem train-classifier --out src/diffmem/assets/classifier"),
    ("sample",): ("sample:sample", "diffmem sample models/hybrid --n 64 --guidance 1 --out out/samples"),
    ("bench", "memorization"): ("bench:bench", "diffmem bench --quick --seed 0 --out out/bench"),
    ("bench", "probe"): ("speed:bench_probe", "diffmem bench probe"),
    ("bench", "monitor"): ("monitor:bench_monitor", "diffmem bench monitor --steps 500 --every 500"),
    ("monitor",): ("monitor:monitor", "diffmem monitor models/run/checkpoints --ground-truth --n 500 --out out/monitor"),
    ("bench", "zoo"): ("bench:zoo", "diffmem bench zoo --seeds 0,1,2 --out out/zoo"),
    ("bench", "scan"): ("speed:bench_scan", "diffmem bench scan --n-images 512"),
    ("audit",): ("audit:audit", "diffmem audit path/to/model --n 1000 --reference heldout/ --fpr 0.01 --out out/audit"),
    ("steer",): ("steer:steer", "diffmem steer --concept Trouser --alphas 0,0.5,1,2 --out out/steer"),
    ("report",): ("report:report", "diffmem report demo_out"),
    ("demo",): ("demo:demo", "diffmem demo --out demo_out"),
}
DEFAULT_SUBCOMMAND = {"bench": "memorization"}       # `diffmem bench …` = `diffmem bench memorization …`


def resolve(words: tuple[str, ...]):
    """The command function for ``words``."""
    import importlib
    module, name = COMMANDS[words][0].split(":")
    return getattr(importlib.import_module(f"diffmem.commands.{module}"), name)
