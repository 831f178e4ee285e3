"""The training record a model folder may carry (``diffmem.json``, written by ``diffmem train``):
which images it was trained on and how often, so samples can be labelled exactly."""

from __future__ import annotations

import dataclasses
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
    captions: tuple[str, ...] | None = None
    settings: dict = field(default_factory=dict)

    def caption_of(self, position: int) -> str:
        """The caption of image ``position`` of ``data`` (text-to-image records only)."""
        if self.captions is None:
            raise DiffmemError(f"{self.data}: the training record has no captions")
        return self.captions[position]

    @classmethod
    def read(cls, folder: str | Path) -> "ModelRecord | None":
        """The record of a model folder, None when it has none; a malformed one is an error naming it."""
        path = Path(folder) / "diffmem.json"
        if not path.exists():
            return None
        try:
            rec = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DiffmemError(f"{path}: not a valid training record ({type(exc).__name__}: {exc})") from None
        local = Path(folder) / rec.data
        if rec.data != "fashion-mnist" and not Path(rec.data).is_absolute() and local.exists():
            rec = dataclasses.replace(rec, data=str(local))
        return rec

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
        captions = raw.get("captions")
        if captions is not None and not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            raise ValueError("captions: not a list of strings")
        own = ("data", "size", "indices", "copies", "null_class", "captions")
        return cls(str(raw["data"]), int(raw["size"]), indices, copies, None if null is None else int(null),
                   None if captions is None else tuple(captions), {k: v for k, v in raw.items() if k not in own})
