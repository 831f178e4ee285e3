"""The probe: model adapters, layer capture with early exit, pooling and spikiness statistics."""

from diffmem.probe.adapters import (Adapter, CustomAdapter, DiTAdapter, StableDiffusionAdapter, TheoryAdapter,
                                    UNet2DAdapter)
from diffmem.probe.capture import Capture, count_calls, output_shapes, parse_layer
from diffmem.probe.pooling import POOLS, pool
from diffmem.probe.represent import capture_layers, generators, noise_seed, represent, spikiness

__all__ = [
    "Adapter", "Capture", "CustomAdapter", "DiTAdapter", "POOLS", "StableDiffusionAdapter", "TheoryAdapter",
    "UNet2DAdapter", "capture_layers", "count_calls", "generators", "noise_seed", "output_shapes",
    "parse_layer", "pool", "represent", "spikiness",
]
