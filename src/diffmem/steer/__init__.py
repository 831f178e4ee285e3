"""Training-free steering: concept vectors added to chosen activations during sampling."""

from diffmem.steer.concept import ConceptVector
from diffmem.steer.hooks import parse_window, steering

__all__ = ["ConceptVector", "parse_window", "steering"]
