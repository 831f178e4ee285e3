"""Add a·v to chosen layer outputs during sampling, inside a step window, optionally on the
conditional half of a classifier-free-guidance batch only. Hooks live only inside the context."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from diffmem.errors import DiffmemError, check
from diffmem.probe.adapters import Adapter


def parse_window(text: str, total: int) -> tuple[int, int]:
    """Step window [start, end) of a ``total``-step schedule from ``start:end`` or ``lastN-K``
    (the last N steps before the final K), e.g. ``18:38`` or ``last20-2`` (= 18:38 of 40)."""
    try:
        if text.startswith("last"):
            n, _, k = text[4:].partition("-")
            n, k = int(n), int(k or 0)
            start, end = total - k - n, total - k
        else:
            a, sep, b = text.partition(":")
            if not sep:
                raise ValueError
            start, end = int(a or 0), int(b) if b else total
    except ValueError:
        raise DiffmemError(f"window={text!r}: expected START:END or lastN[-K]") from None
    check(0 <= start < end <= total, f"window={text!r}: window [{start}, {end}) lies outside the "
                                     f"{total}-step schedule")
    return start, end


class StepCounter:
    """Counts denoiser calls with a forward pre-hook: call k is sampling step k."""

    def __init__(self):
        self.step = -1

    def __call__(self, _module, _args):
        self.step += 1


@contextlib.contextmanager
def steering(adapter: Adapter, vectors: dict[str, torch.Tensor], alpha: float, window: tuple[int, int],
             cfg_batch: bool = False, cond_only: bool = True) -> Iterator[StepCounter]:
    """Within the block, output h of each layer in ``vectors`` becomes h + α·v (v (C,) broadcast over
    space or tokens, or v of h's whole size per sample, as a ``flatten``-pooled concept vector is, added
    position by position) on steps window[0] ≤ k < window[1].

    With ``cfg_batch`` (the sampler stacks unconditional and conditional inputs in one call) and
    ``cond_only``, only the conditional half is changed, located by ``adapter.cfg_order``.
    """
    modules = dict(adapter.denoiser.named_modules())
    for name in vectors:
        check(name in modules, f"layer {name!r}: no such module")
    counter = StepCounter()
    start, end = window

    def make(name: str, v: torch.Tensor):
        def hook(_module, _inputs, output):
            if not (start <= counter.step < end) or alpha == 0:
                return None
            h = output[0] if isinstance(output, tuple) else output
            channels = h.shape[1] if h.ndim == 4 else h.shape[-1]
            if v.numel() == h[0].numel() and h.ndim > 2:       # a whole activation (flatten pool): per position
                shape = (1, *h.shape[1:])
            elif v.numel() == channels:                         # one value per channel, broadcast
                shape = (1, -1) + (1,) * (h.ndim - 2) if h.ndim == 4 else (1,) * (h.ndim - 1) + (-1,)
            else:
                raise DiffmemError(f"layer {name!r}: a vector of {v.numel()} values fits neither its {channels} "
                                   f"channels nor its output {tuple(h.shape[1:])}")
            delta = (alpha * v.to(h)).view(shape)
            if cfg_batch and cond_only:
                half = h.shape[0] // 2
                mask = torch.zeros(h.shape[0], *([1] * (h.ndim - 1)), dtype=h.dtype, device=h.device)
                if adapter.cfg_order == "uncond_cond":
                    mask[half:] = 1
                else:
                    mask[:half] = 1
                delta = delta * mask
            h = h + delta
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    handles = [adapter.denoiser.register_forward_pre_hook(counter)]
    try:
        for name, v in vectors.items():
            handles.append(modules[name].register_forward_hook(make(name, v)))
        yield counter
    finally:
        for h in handles:
            h.remove()
