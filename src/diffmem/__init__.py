"""diffmem: tell whether a diffusion model memorizes or generalizes from its representations."""

from diffmem.errors import DiffmemError

__version__ = "0.1.0"
__all__ = ["DiffmemError", "__version__"]
