"""Training-free steering: concept vectors added to chosen activations during sampling."""

from diffmem.steer.concept import ConceptVector, default_layers
from diffmem.steer.hooks import parse_window, steering

__all__ = ["ConceptVector", "default_layers", "parse_window", "steering"]
