"""Pages that present an output folder: figures and tables from its JSON, never from models."""

from diffmem.report.html import build_report
from diffmem.report.index import write_index

__all__ = ["build_report", "write_index"]
