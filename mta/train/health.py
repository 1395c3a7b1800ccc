"""Signs of a run's health for metrics.jsonl: memory peaks and loss spikes."""

import collections
import resource

import jax
import numpy as np


def peak_memory_mb() -> dict:
    """Peak device memory where the backend reports it (GPU/TPU), and the host's peak RSS."""
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


class LossSpikeDetector:
    """Flags a logged loss far above the recent ones: over mean + 6 std and 1.5x the mean of the
    last `window` logged losses (after at least `warmup` of them)."""

    def __init__(self, window: int = 20, warmup: int = 5):
        self.recent = collections.deque(maxlen=window)
        self.warmup = warmup

    def check(self, loss: float) -> str | None:
        """Returns a warning if `loss` is a spike (or not finite), else None; remembers it."""
        warning = None
        if not np.isfinite(loss):
            warning = f"loss is {loss}"
        elif len(self.recent) >= self.warmup:
            mean, std = float(np.mean(self.recent)), float(np.std(self.recent))
            if loss > mean + 6 * std and loss > 1.5 * mean:
                warning = f"loss spike: {loss:.4g} vs recent mean {mean:.4g} (std {std:.2g})"
        if np.isfinite(loss):
            self.recent.append(loss)
        return warning
