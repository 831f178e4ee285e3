"""Record module outputs by dotted name, with early exit once every requested output has fired.

Names are those of ``model.named_modules()``. A module called several times in one forward is
addressed as ``name@k`` (k-th call, 0-based) or plain ``name`` (its last call, as in the paper's
recipe for ``up_blocks.0.resnets.2.nonlinearity``). Hooks exist only inside the context manager
and are removed on every exit path, errors included.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from diffmem.errors import DiffmemError


LAST = -1      # call index meaning "the last call", when the module's calls per forward are unknown


class _EarlyExit(Exception):
    """Raised inside a hook to abandon the rest of the forward pass."""


@dataclass(frozen=True)
class LayerRef:
    """A parsed layer name: module name and which call (None = last)."""

    module: str
    call: int | None

    @property
    def key(self) -> str:
        return self.module if self.call is None else f"{self.module}@{self.call}"


def parse_layer(name: str, model: nn.Module) -> LayerRef:
    """Parse ``name`` or ``name@k``; unknown names fail with the closest valid names."""
    module, _, call = name.partition("@")
    modules = dict(model.named_modules())
    if module not in modules or module == "":
        close = difflib.get_close_matches(module, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise DiffmemError(f"layer {name!r}: no such module{hint} (see `diffmem layers MODEL_DIR`)")
    if call and not call.isdigit():
        raise DiffmemError(f"layer {name!r}: the call index after '@' must be a non-negative integer")
    return LayerRef(module, int(call) if call else None)


def _first_tensor(output) -> torch.Tensor:
    """A module's output, or the first tensor of a tuple/list/dataclass output."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
        else (getattr(output, "sample", None),)
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise DiffmemError(f"module output of type {type(output).__name__} holds no tensor")


class Capture:
    """``with Capture(model, names, call_counts) as cap: forward(...)`` then ``cap.activations``.

    ``call_counts`` maps module name → calls per forward (from :func:`count_calls`); it resolves
    plain names to their last call. Without counts for a module, a plain name still means its last
    call: every call overwrites the record, and that layer cannot end the forward early. With
    ``early_exit`` the forward is stopped (and the exception swallowed by this context manager) as
    soon as every requested output has been recorded.
    """

    def __init__(self, model: nn.Module, names: list[str], call_counts: dict[str, int] | None = None,
                 early_exit: bool = True):
        self.model = model
        self.refs = [parse_layer(n, model) for n in names]
        self.counts = call_counts or {}
        self.early_exit = early_exit
        self.activations: dict[str, torch.Tensor] = {}
        self.exited_early = False
        self._handles: list = []
        self._calls: dict[str, int] = {}
        self._want: dict[str, dict[int, str]] = {}
        self._open: set[str] = set()                   # plain names of modules with unknown call counts
        for ref in self.refs:
            if ref.call is None and ref.module not in self.counts:
                self._open.add(ref.key)
                self._want.setdefault(ref.module, {})[LAST] = ref.key
                continue
            n = self.counts.get(ref.module, 1)
            call = n - 1 if ref.call is None else ref.call
            if call >= n and ref.module in self.counts:
                raise DiffmemError(f"layer {ref.key!r}: the module is called {n} time(s) per forward")
            self._want.setdefault(ref.module, {})[call] = ref.key

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            for key in (self._want[name].get(k), self._want[name].get(LAST)):
                if key is not None:
                    self.activations[key] = _first_tensor(output).detach()
            if self.early_exit and not self._open and len(self.activations) == len(self.refs):
                raise _EarlyExit
        return hook

    def __enter__(self) -> "Capture":
        modules = dict(self.model.named_modules())
        try:
            for name in self._want:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        if exc_type is _EarlyExit:
            self.exited_early = True
            return True
        if exc_type is None:
            missing = [r.key for r in self.refs if r.key not in self.activations]
            if missing:
                raise DiffmemError(f"layer(s) {', '.join(missing)}: did not run in this forward pass")
        return False


def _run_with_hooks(model: nn.Module, forward, make_hook) -> None:
    """Run ``forward()`` with ``make_hook(name)`` as a forward hook on every named module, then remove them."""
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        forward()
    finally:
        for h in handles:
            h.remove()


def count_calls(model: nn.Module, forward) -> dict[str, int]:
    """Run ``forward()`` once with counting hooks on every named module; return calls per name."""
    counts: dict[str, int] = {}

    def make(name):
        def hook(*_):
            counts[name] = counts.get(name, 0) + 1
        return hook
    _run_with_hooks(model, forward, make)
    return counts


def output_shapes(model: nn.Module, forward) -> dict[str, list[tuple[int, ...]]]:
    """Output shape of every call of every named module during one ``forward()``."""
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def make(name):
        def hook(_m, _i, output):
            try:
                shapes.setdefault(name, []).append(tuple(_first_tensor(output).shape))
            except DiffmemError:
                shapes.setdefault(name, []).append(())
        return hook
    _run_with_hooks(model, forward, make)
    return shapes
