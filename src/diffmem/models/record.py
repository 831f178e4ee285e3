"""The training record a model folder may carry (``diffmem.json``, written by ``diffmem train``):
which images it was trained on and how often, so samples can be labelled exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from diffmem.errors import DiffmemError


@dataclass(frozen=True)
class ModelRecord:
    """``data`` (``"fashion-mnist"``, an image folder or a .npy/.npz array), ``size`` (pixels),
    ``indices`` (training images, positions in ``data``), ``copies`` (times each was seen per
    epoch), ``null_class`` (class-conditional models), ``settings`` (everything else recorded)."""

    data: str
    size: int
    indices: tuple[int, ...]
    copies: tuple[int, ...]
    null_class: int | None = None
    settings: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> "ModelRecord | None":
        """The record of a model folder, None when it has none; a malformed one is an error naming it."""
        path = Path(folder) / "diffmem.json"
        if not path.exists():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DiffmemError(f"{path}: not a valid training record ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelRecord":
        """A record from the JSON object ``diffmem train`` writes (KeyError/TypeError/ValueError if malformed)."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        indices = tuple(int(i) for i in raw["indices"])
        copies = tuple(int(c) for c in raw["copies"])
        if len(indices) != len(copies) or not indices:
            raise ValueError(f"{len(indices)} indices but {len(copies)} copy counts")
        null = raw.get("null_class")
        rec = cls(str(raw["data"]), int(raw["size"]), indices, copies, None if null is None else int(null),
                  {k: v for k, v in raw.items() if k not in ("data", "size", "indices", "copies", "null_class")})
        return rec
