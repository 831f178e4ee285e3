"""The CLI and the layering: one source for every default, one-line errors, imports one way."""

import ast
import inspect
import pathlib
import subprocess
import sys

import pytest

import diffmem
from diffmem.cli import build_parser, main, parameters
from diffmem.commands import COMMANDS, resolve

SRC = pathlib.Path(diffmem.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module → the diffmem modules it imports (static)."""
    graph = {}
    for f in SRC.rglob("*.py"):
        mod = "diffmem." + ".".join(f.relative_to(SRC).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffmem"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("diffmem"))
        graph[mod] = deps
    return graph


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_library_never_imports_commands_and_packages_import_one_way():
    graph = _imports()
    assert len(graph) > 40
    for mod, deps in graph.items():
        if _package(mod) not in ("commands", "cli", "__main__"):
            bad = {d for d in deps if _package(d) in ("commands", "cli")}
            assert not bad, f"{mod} (library) imports {bad}"
    # package-level graph: no cycle (diffmem.X ↔ diffmem.Y through any modules)
    edges = {}
    for mod, deps in graph.items():
        for d in deps:
            a, b = _package(mod), _package(d)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    seen, stack = {}, []

    def visit(n):
        seen[n] = "open"
        stack.append(n)
        for m in edges.get(n, ()):
            assert seen.get(m) != "open", f"import cycle: {' → '.join(stack[stack.index(m):] + [m])}"
            if m not in seen:
                visit(m)
        seen[n] = "done"
        stack.pop()
    for n in list(edges):
        if n not in seen:
            visit(n)


def _subparser(words):
    p = build_parser()
    for w in words:
        p = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices[w]
    return p


@pytest.mark.parametrize("words", list(COMMANDS))
def test_every_cli_default_is_the_library_default_and_every_parameter_is_reachable(words):
    fn, sub = resolve(words), _subparser(words)
    dests = {a.dest: a for a in sub._actions}
    for name, kind, opt, default in parameters(fn):
        assert name in dests, f"{words}: parameter {name} has no option"
        if default is not inspect.Parameter.empty:
            assert dests[name].default == default, f"{words}: --{name} default differs from the library's"
    text = " ".join(sub.format_help().split())
    for name, kind, opt, default in parameters(fn):
        if default is not inspect.Parameter.empty and not opt.positional:
            assert f"(default: {default})" in text or f"(default: {default!r})" in text, (words, name)
    if "seed" in {p[0] for p in parameters(fn)}:
        assert "--seed" in text
    assert "example:" in text


def test_parse_errors_are_one_line_with_exit_2(capsys):
    for argv, words in ((["scan"], "required: MODEL_DIR, IMAGES, --out"),
                        (["sample", "m", "--out", "o", "--n", "0"], "--n 0: must be >= 1"),
                        (["sample", "m", "--out", "o", "--guidance", "inf"], "--guidance inf: must be finite"),
                        (["theory", "phase", "--out", "o", "--sigmas", "nan"], "--sigmas nan: must be finite"),
                        (["steer", "--out", "o", "--alphas", "0,,1"], "--alphas '0,,1': expected a comma-separated"),
                        (["bench", "--out", "o", "--calib-frac", "1.5"], "--calib-frac 1.5: must be <= 0.95"),
                        (["nonsense"], "invalid choice: 'nonsense'"),
                        (["scan", "m", "i", "--out", "o", "--pool", "x"], "--pool 'x': one of spatial_max")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diffmem: error:") and words in err[0], (argv, err)


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    """The library says ``dup='10'`` to a Python caller; the command line says ``--dup '10'``."""
    from diffmem.cli import in_cli_words
    from diffmem.commands import resolve
    from diffmem.errors import DiffmemError
    from diffmem.train.dataset import Duplication
    with pytest.raises(DiffmemError, match=r"^dup='10': expected COUNTxCOPIES"):
        Duplication.parse("10")
    assert main(["train", "--dup", "10", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("diffmem: error: --dup '10': expected COUNTxCOPIES")
    audit = resolve(("audit",))
    assert in_cli_words("n_reference=3: too few; pass allow_other_model=True", audit) == (
        "--n-reference 3: too few; pass --allow-other-model")
    assert in_cli_words("reference: no record; key t=3, model=x", audit) == "--reference: no record; key t=3, model=x"


def test_help_and_version_exit_zero(capsys):
    assert main(["--help"]) == 0 and "diffmem" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0 and "diffmem bench" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffmem {diffmem.__version__}"


def test_out_is_checked_before_any_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["theory", "verify", "--out", str(f)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["theory", "verify", "--out", str(f / "below")]) == 2     # under a file: not a folder
    assert "not a writable folder" in capsys.readouterr().err


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "diffmem", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"diffmem {diffmem.__version__}"


def test_quiet_silences_progress_bars(tmp_path, capfd):
    """--quiet: nothing on stderr (file-descriptor level, so library output too); without it the
    sampler's progress bar shows."""
    from diffmem.models.tiny import SAVERS
    model = SAVERS["unet2d"](tmp_path / "m", num_classes=None, seed=0)
    base = ["sample", str(model), "--n", "2", "--steps", "2"]
    assert main(base + ["--quiet", "--out", str(tmp_path / "q")]) == 0
    assert capfd.readouterr().err == ""
    assert main(base + ["--out", str(tmp_path / "l")]) == 0
    assert "sample" in capfd.readouterr().err


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    from diffmem.models.tiny import SAVERS
    model = SAVERS["unet2d"](tmp_path / "m", num_classes=None, seed=0)
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert main(["sample", str(model), "--n", "2", "--steps", "2", "--seed", seed, "--quiet",
                     "--out", str(tmp_path / name)]) == 0
        runs[name] = (tmp_path / name / "images" / "00000.png").read_bytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


def _functions(root: pathlib.Path):
    """(relative path, ast function node) of every function defined in the .py files under ``root``."""
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f.relative_to(SRC), node


def test_commands_are_thin_and_library_functions_take_at_most_8_parameters():
    """The house rules of issue 24: no command function longer than 40 lines; no public library function
    (module level, no leading underscore) with more than 8 parameters, a config object counting as one."""
    long = [f"{p}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, n in _functions(SRC / "commands")
            if n.end_lineno - n.lineno + 1 > 40]
    assert not long, long
    wide = []
    for f in sorted(SRC.rglob("*.py")):
        if f.relative_to(SRC).parts[0] in ("commands", "cli.py"):
            continue
        for node in ast.parse(f.read_text()).body:                       # module-level functions only
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                if n > 8:
                    wide.append(f"{f.relative_to(SRC)}:{node.name} ({n})")
    assert not wide, wide
