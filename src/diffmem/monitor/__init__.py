"""Training-time memorization monitor: signals at checkpoints, alarm rules, ground truth, the demo."""

from diffmem.monitor.monitor import MemorizationMonitor, stable_rank

__all__ = ["MemorizationMonitor", "stable_rank"]
