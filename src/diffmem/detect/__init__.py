"""Detection: the spikiness detector, the fusion detector, peer methods, layer selection and metrics."""

from diffmem.detect.detector import SpikinessDetector, image_keys, select_layer
from diffmem.detect.fusion import FusionDetector
from diffmem.detect.metrics import (auroc, bootstrap_ci, evaluate, fpr_threshold, rates_at, tpr_at_fpr,
                                    tpr_at_fpr_wen)

__all__ = ["FusionDetector", "SpikinessDetector", "auroc", "bootstrap_ci", "evaluate",
           "fpr_threshold", "image_keys", "rates_at", "select_layer", "tpr_at_fpr", "tpr_at_fpr_wen"]
