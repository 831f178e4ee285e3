"""Detection: the spikiness detector, layer selection, metrics and baselines."""

from diffmem.detect.detector import SpikinessDetector, candidate_layers, image_keys, select_layer
from diffmem.detect.metrics import auroc, bootstrap_ci, evaluate, tpr_at_fpr, tpr_at_fpr_wen

__all__ = ["SpikinessDetector", "auroc", "bootstrap_ci", "candidate_layers", "evaluate", "image_keys",
           "select_layer", "tpr_at_fpr", "tpr_at_fpr_wen"]
