"""Streaming, resumable scans of many images."""

from diffmem.scan.inputs import iter_inputs
from diffmem.scan.local import scan

__all__ = ["iter_inputs", "scan"]
