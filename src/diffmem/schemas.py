"""Typed schemas of the JSON files diffmem writes and reads back, shared by writer and reader: a
file that does not match is one :class:`~diffmem.errors.DiffmemError` naming the file and the key.

Each model lists the keys a reader relies on; other keys are kept (``extra="allow"``) and
documented in ``docs/outputs.md``."""

from __future__ import annotations

import os
from typing import Optional, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, confloat, conint

from diffmem.errors import DiffmemError
from diffmem.outputs import read_json, write_json

Share = confloat(ge=0, le=1)
Count = conint(ge=0)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow")


class ConditionRow(_Schema):
    condition: object
    n: Count
    n_flagged: Count
    share_flagged: Share


class AuditFile(_Schema):
    """``audit.json`` (``diffmem audit``; read by ``diffmem report``)."""

    n: conint(ge=1)
    n_flagged: Count
    share_flagged: Share
    share_flagged_ci: tuple[Share, Share]
    threshold: float
    fpr_target: confloat(gt=0, lt=1)
    realized_fpr_reference: Share
    fpr_real_reference: Optional[Share] = None
    fpr_generated_non_copies: Optional[Share] = None
    n_reference: conint(ge=1)
    calibration: str
    verdict: str
    per_condition: list[ConditionRow]


S = TypeVar("S", bound=_Schema)


def _where(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"key {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"


def read_result(path: str | os.PathLike, schema: type[S]) -> dict:
    """The JSON file at ``path`` validated against ``schema`` (as a plain dict)."""
    try:
        return schema.model_validate(read_json(path)).model_dump(mode="json")
    except ValidationError as exc:
        raise DiffmemError(f"{path}: not a valid {schema.__doc__.split()[0]} ({_where(exc)})") from None


def write_result(path: str | os.PathLike, data: dict, schema: type[S]) -> None:
    """Validate ``data`` against ``schema`` and write it (a writer bug is caught before the file exists)."""
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        raise DiffmemError(f"{path}: would not be a valid {schema.__doc__.split()[0]} ({_where(exc)})") from None
    write_json(path, data)
