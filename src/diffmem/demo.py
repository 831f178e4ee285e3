"""``diffmem demo``: the end-to-end demonstration that ``make demo`` runs."""

from __future__ import annotations

import os
from pathlib import Path

from diffmem.theory.run import run_verify


def run_demo(out: str | os.PathLike, seed: int = 0, quiet: bool = False) -> dict:
    """Theory quick-verify into ``out/theory``."""
    return {"theory": run_verify(Path(out) / "theory", seed=seed, quick=True, quiet=quiet)}
