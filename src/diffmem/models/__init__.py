"""Loading models from local folders (family auto-detected) and tiny random models for tests."""

from diffmem.models.load import LoadOptions, detect_family, load_adapter, model_fingerprint, save_theory_model

__all__ = ["LoadOptions", "detect_family", "load_adapter", "model_fingerprint", "save_theory_model"]
