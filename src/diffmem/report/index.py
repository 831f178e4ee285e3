"""An index page linking every figure and table of an output folder (relative links)."""

from __future__ import annotations

import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from diffmem.errors import DiffmemError
from diffmem.outputs import read_json
from diffmem.report.html import results_root


def _flat(obj, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalar leaves of a JSON object as (dotted key, text), skipping long lists."""
    rows = []
    if isinstance(obj, dict) and depth < 4:
        for k, v in obj.items():
            rows += _flat(v, f"{prefix}{k}.", depth + 1)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        text = f"{obj:.4g}" if isinstance(obj, float) else str(obj)
        rows.append((prefix.rstrip("."), text))
    elif isinstance(obj, list) and len(obj) <= 4 and all(isinstance(v, (int, float)) for v in obj):
        rows.append((prefix.rstrip("."), ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in obj)))
    return rows


def write_index(root: str | os.PathLike, title: str = "diffmem results") -> Path:
    """Write ``root/index.html``: one section per sub-folder with its PNGs, markdown tables and JSON
    (sample ``images/`` folders are not listed image by image)."""
    root = results_root(root)
    sections = []
    folders = [p for p in root.rglob("*") if p.is_dir()
               and not any(part.startswith(".") or part == "images" for part in p.relative_to(root).parts)]
    for folder in [root, *sorted(folders)]:
        figures = sorted(folder.glob("*.png"))
        tables = sorted(folder.glob("*.md"))
        metrics = []
        for f in sorted(folder.glob("*.json")):
            metrics.append((f.relative_to(root).as_posix(), _flat(read_json(f))[:60]))
        if figures or tables or metrics:
            sections.append({"name": folder.relative_to(root).as_posix() or ".",
                             "figures": [p.relative_to(root).as_posix() for p in figures],
                             "tables": [(p.relative_to(root).as_posix(), p.read_text()) for p in tables],
                             "metrics": metrics})
    if not sections:
        raise DiffmemError(f"{root}: no results (no .png, .md or .json files)")
    env = Environment(loader=PackageLoader("diffmem.report", "templates"), autoescape=select_autoescape())
    html = env.get_template("index.html.j2").render(title=title, sections=sections)
    path = root / "index.html"
    path.write_text(html)
    return path
