"""``diffmem report``: one self-contained HTML page from any diffmem output folder."""

from __future__ import annotations

from typing import Annotated

from diffmem.commands.options import Opt
from diffmem.report import build_report


def report(directory: Annotated[str, Opt("a diffmem output folder", positional=True, metavar="DIR")]) -> dict:
    """One self-contained HTML page (figures embedded, no network) from any diffmem output folder:
    ``DIR/report.html``."""
    return {"report": str(build_report(directory))}
