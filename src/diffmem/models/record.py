"""The training record a model folder may carry (``diffmem.json``, written by ``diffmem train``):
which images it was trained on and how often, so samples can be labelled exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from diffmem.errors import DiffmemError
from diffmem.outputs import read_json


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
        rec = cls.from_dict(read_json(path), str(path))
        local = Path(folder) / rec.data
        if rec.data != "fashion-mnist" and not Path(rec.data).is_absolute() and local.exists():
            rec = dataclasses.replace(rec, data=str(local))
        return rec

    @classmethod
    def from_dict(cls, raw, what: str = "diffmem.json") -> "ModelRecord":
        """A record from the JSON object ``diffmem train`` writes (:class:`~diffmem.schemas.RecordFile`);
        a malformed one is an error naming ``what``."""
        from diffmem.schemas import RecordFile, validate
        raw = validate(raw, RecordFile, what)
        own = ("data", "size", "indices", "copies", "null_class", "captions")
        return cls(raw["data"], raw["size"], tuple(raw["indices"]), tuple(raw["copies"]), raw["null_class"],
                   None if raw["captions"] is None else tuple(raw["captions"]),
                   {k: v for k, v in raw.items() if k not in own})
