"""The offline memorization benchmark: train with controlled duplication, sample, label, evaluate."""
