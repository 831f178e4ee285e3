"""The ``diffmem`` command line, built from the command functions' signatures (one place for every
option and default, :mod:`diffmem.commands.options`).

Every command takes ``--seed`` and ``--quiet`` where it draws randomness or shows progress;
commands that write take ``--out DIR``. Any bad input — argument parsing included — prints one line
``diffmem: error: …`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import typing

from diffmem.commands import COMMANDS, DEFAULT_SUBCOMMAND, resolve
from diffmem.commands.options import Opt, OptionError
from diffmem.errors import DiffmemError
from diffmem.outputs import set_quiet


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one ``diffmem: error:`` line and exit status 2 (no usage block)."""

    def error(self, message):
        where = self.prog.removeprefix("diffmem").strip()
        print(f"diffmem: error: {where + ': ' if where else ''}{message}", file=sys.stderr)
        sys.exit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def _base(annotation) -> tuple[type, Opt | None]:
    """(value type, Opt) of an ``Annotated[T | None, Opt]`` annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        opt = next((m for m in meta if isinstance(m, Opt)), None)
    else:
        base, opt = annotation, None
    args = [a for a in typing.get_args(base) if a is not type(None)]
    if args and typing.get_origin(base) in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        base = args[0]
    return base, opt


def parameters(fn) -> list[tuple[str, type, Opt, object]]:
    """(name, type, Opt, default) of every CLI parameter of a command; default is ``inspect._empty`` when required."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        base, opt = _base(hints[name])
        if opt is None:
            raise TypeError(f"{fn.__name__}: parameter {name!r} has no Opt annotation")
        out.append((name, base, opt, p.default))
    return out


def _converter(opt: Opt, kind: type, flag: str):
    def convert(text: str):
        try:
            return opt.convert(text, kind, flag)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = kind.__name__                   # argparse names the type in its messages
    return convert


def add_command(sub: argparse.ArgumentParser, fn) -> None:
    """Add one argument per parameter of ``fn`` to ``sub``."""
    for name, kind, opt, default in parameters(fn):
        flag = opt.flag or "--" + name.replace("_", "-")
        help_text = opt.help.replace("%", "%%")
        if opt.positional:
            kw = {"metavar": opt.metavar or name.upper(), "help": help_text}
            if opt.many:
                kw.update(nargs="*", default=() if default is inspect.Parameter.empty else default)
            elif default is not inspect.Parameter.empty:
                kw.update(nargs="?", default=default)
            sub.add_argument(name, type=_converter(opt, kind, opt.metavar or name), **kw)
        elif kind is bool:
            sub.add_argument(flag, dest=name, action="store_true", help=help_text)
        else:
            required = default is inspect.Parameter.empty
            sub.add_argument(flag, dest=name, type=_converter(opt, kind, flag), required=required,
                             default=argparse.SUPPRESS if required else default, metavar=opt.metavar,
                             help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`diffmem.commands.COMMANDS`."""
    from diffmem import __version__
    parser = _Parser(prog="diffmem", formatter_class=_Formatter,
                     description="Tell whether a diffusion model memorizes or generalizes from its internal "
                                 "representations.")
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    top = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (_, example) in COMMANDS.items():
        fn = resolve(words)
        summary = _plain((inspect.getdoc(fn) or "").split("\n\n")[0])
        if len(words) == 2:
            if words[0] not in groups:
                g = top.add_parser(words[0], help=f"{words[0]} commands", formatter_class=_Formatter)
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True, parser_class=_Parser)
            holder = groups[words[0]]
        else:
            holder = top
        sub = holder.add_parser(words[-1], help=summary, description=summary, formatter_class=_Formatter,
                                epilog=f"example: {example}")
        add_command(sub, fn)
        sub.set_defaults(words=words)
    return parser


def _plain(doc: str) -> str:
    """A docstring paragraph as plain help text (no reST markup)."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "").replace("\n", " ")
    return doc.replace("%", "%%")


def _print_layers(rows: list[dict], args) -> None:
    if args.json_output:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shapes = " ".join("x".join(map(str, s)) for s in r["shapes"])
        mark = "  <- default" if r["default"] else ""
        print(f"{r['name']:<{width}}  calls={r['calls']}  {shapes}{mark}")


def _argv(argv: list[str]) -> list[str]:
    """Insert a group's default subcommand (``diffmem bench --quick`` = ``diffmem bench memorization --quick``)."""
    if argv and argv[0] in DEFAULT_SUBCOMMAND:
        names = {w[1] for w in COMMANDS if w[0] == argv[0]}
        if len(argv) == 1 or (argv[1] not in names and argv[1] not in ("-h", "--help")):
            return [argv[0], DEFAULT_SUBCOMMAND[argv[0]], *argv[1:]]
    return argv


def in_cli_words(message: str, fn) -> str:
    """A library error in the command line's words. The library names parameters, never flags
    (``steps=0: must be >= 1``, ``pass allow_other_model=True``); for each option of the command ``fn``,
    ``name=True`` becomes its flag, ``name=VALUE`` its flag and the value (``--steps 0``), and a leading
    ``name:`` its flag."""
    flags = {name: opt.flag or "--" + name.replace("_", "-") for name, _, opt, _ in parameters(fn) if not opt.positional}

    def flag(m: re.Match) -> str:
        if m[1] not in flags:
            return m[0]
        return flags[m[1]] + ("" if m[2] else " ")
    message = re.sub(r"^([a-z][a-z0-9_]*):", lambda m: flags.get(m[1], m[1]) + ":", message)
    return re.sub(r"(?<![\w.=-])([a-z][a-z0-9_]*)=(True\b)?", flag, message)


def main(argv: list[str] | None = None) -> int:
    argv = _argv(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:                   # --help / --version (0) and parse errors (2)
        return int(exc.code or 0)
    fn = resolve(args.words)
    kwargs = {name: getattr(args, name) for name, *_ in parameters(fn)}
    set_quiet(bool(kwargs.get("quiet", False)))
    try:
        result = fn(**kwargs)
    except DiffmemError as exc:
        print(f"diffmem: error: {in_cli_words(str(exc), fn)}", file=sys.stderr)
        return 2
    if args.words == ("layers",):
        _print_layers(result, args)
    elif kwargs.get("out"):
        print(f"results written to {kwargs['out']}")
    elif result is not None:
        print(json.dumps(result, indent=2, default=float))
    return 0
