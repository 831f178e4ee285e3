"""Streaming, resumable scans of many images."""

from diffmem.scan.local import scan

__all__ = ["scan"]
