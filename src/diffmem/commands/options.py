"""Command options declared once, on the command function's own signature.

A command is a plain function whose parameters are annotated ``Annotated[T, Opt(...)]``; its
Python default is the CLI default (``cli.py`` builds the parser from the signature), so the two
can never disagree. ``Opt`` carries the help text and the checks every value passes at the
command boundary, before any work: finite numbers, bounds, choices, comma lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable


class OptionError(ValueError):
    """A value a user typed is invalid; the message names the flag."""


@dataclass(frozen=True)
class Opt:
    """CLI metadata of one parameter.

    ``help``: text shown by ``--help`` (the default is appended); ``positional``: an argument,
    not a ``--flag``; ``metavar``; ``choices``; ``min``/``max``: inclusive bounds of a number (or of
    each list item); ``above``: exclusive lower bound; ``list_of``: a comma-separated list of this
    type (the value passed on is a tuple); ``flag``: the flag's name when not ``--param-name``;
    ``many``: a positional taking zero or more values (passed on as a list).
    """

    help: str
    positional: bool = False
    metavar: str | None = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    list_of: type | None = None
    flag: str | None = None
    many: bool = False

    def convert(self, text: str, kind: type, name: str) -> Any:
        """Parse and check one typed value; :class:`OptionError` names ``name`` (the flag)."""
        if self.list_of is not None:
            parts = [p.strip() for p in str(text).split(",")]
            if not parts or any(p == "" for p in parts):
                raise OptionError(f"{name} {text!r}: expected a comma-separated list of {self.list_of.__name__} "
                                  f"values with no empty items")
            return tuple(self._scalar(p, self.list_of, name) for p in parts)
        return self._scalar(text, kind, name)

    def _scalar(self, text: str, kind: type, name: str) -> Any:
        if kind in (int, float):
            try:
                value = kind(text)
            except (TypeError, ValueError):
                raise OptionError(f"{name} {text!r}: expected {'an integer' if kind is int else 'a number'}") from None
            if kind is float and not math.isfinite(value):
                raise OptionError(f"{name} {text}: must be finite")
            if self.min is not None and value < self.min:
                raise OptionError(f"{name} {text}: must be >= {self.min:g}")
            if self.max is not None and value > self.max:
                raise OptionError(f"{name} {text}: must be <= {self.max:g}")
            if self.above is not None and value <= self.above:
                raise OptionError(f"{name} {text}: must be > {self.above:g}")
        else:
            value = str(text)
            if value == "":
                raise OptionError(f"{name}: must not be empty")
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{name} {text!r}: one of {', '.join(map(str, self.choices))}")
        return value


# -- options shared by many commands ----------------------------------------------------------
Model = Annotated[str, Opt("model folder (diffusers pipeline, single model, or theory model)", positional=True,
                           metavar="MODEL_DIR")]
Out = Annotated[str, Opt("output folder (created; nothing is written elsewhere)", metavar="DIR")]
Seed = Annotated[int, Opt("seed of every random draw (same seed, same numbers on CPU)")]
Quiet = Annotated[bool, Opt("no progress bars")]
Device = Annotated[str, Opt("device: auto, cpu, cuda, cuda:N or mps")]
DType = Annotated[str, Opt("model dtype (statistics are always float32)", choices=("float32", "float16", "bfloat16"))]
AllowPickle = Annotated[bool, Opt("allow non-safetensors weights (unpickling runs code: trusted files only)")]
BatchSize = Annotated[int, Opt("images per forward pass", min=1)]
Steps = Annotated[int, Opt("sampling steps", min=1)]
Guidance = Annotated[float, Opt("classifier-free guidance scale", min=0)]
Classes = Annotated[str | None, Opt("comma-separated class labels, cycled (class-conditional models)",
                                    list_of=int, min=0)]
InputRange = Annotated[tuple | None, Opt("LO,HI: array values that map to -1 and 1 (e.g. 0,255 or 0,1); by "
                                         "default uint8 is 0…255, uint16 0…65535, floats must lie in [-1, 1]",
                                         list_of=float)]
AllowOutside = Annotated[bool, Opt("let manifest paths leave the manifest's folder")]
Prompts = Annotated[str | None, Opt("a text file with one prompt per line, cycled (text-to-image models)",
                                    metavar="FILE")]


def listed(value, kind: type, flag: str) -> tuple | None:
    """A list option given from Python as a comma-separated string or a sequence → tuple (None stays None)."""
    from diffmem.errors import DiffmemError
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        try:
            return Opt("", list_of=kind).convert(value, kind, flag)
        except OptionError as exc:
            raise DiffmemError(str(exc)) from None
    return tuple(kind(v) for v in value)


def input_range(value) -> tuple[float, float] | None:
    """A checked ``--input-range`` (two finite numbers, LO < HI) or None."""
    from diffmem.errors import DiffmemError
    rng = listed(value, float, "--input-range")
    if rng is None:
        return None
    if len(rng) != 2 or not rng[0] < rng[1]:
        raise DiffmemError(f"--input-range {','.join(f'{v:g}' for v in rng)}: need two numbers LO,HI with LO < HI")
    return rng


def read_prompts(path: str | None, flag: str = "--prompts") -> list[str] | None:
    """The non-empty lines of a prompts file (``flag``), or None."""
    from diffmem.errors import DiffmemError
    if path is None:
        return None
    try:
        lines = [ln.strip() for ln in open(path, encoding="utf-8").read().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffmemError(f"{flag} {path}: unreadable ({type(exc).__name__})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DiffmemError(f"{flag} {path}: no prompts in the file")
    return lines


Command = Callable[..., Any]
