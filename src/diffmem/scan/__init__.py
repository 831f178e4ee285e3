"""Streaming, resumable scans of many images: one :class:`ScanConfig`, one :func:`run`, two engines."""

from diffmem.scan.local import ScanConfig, scan
from diffmem.scan.ray_engine import RayConfig
from diffmem.scan.run import Engine, run

__all__ = ["Engine", "RayConfig", "ScanConfig", "run", "scan"]
