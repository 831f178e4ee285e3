"""Pages that present an output folder: figures and tables from its JSON, never from models."""

from diffmem.report.index import write_index

__all__ = ["write_index"]
