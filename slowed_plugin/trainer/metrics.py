"""SLowED's metrics: accumulated between log rows, reduced over processes, handed to the trainer's ``log``."""

from __future__ import annotations

import torch

from ..core.masking import MaskStats
from ..core.slow_tuning import ProjectionReport

# Metric names as they appear in the trainer's logs.
METRICS = (
    "slowed/masked_fraction",
    "slowed/entropy_threshold",
    "slowed/max_delta_norm",
    "slowed/layers_projected",
    "slowed/min_scale",
    "slowed/subspace_removed_max",
    "slowed/subspace_removed_mean",
)


class SLowEDMetrics:
    """Masking counts since the last log row, and the last projection's report."""

    def __init__(self, masking: bool) -> None:
        self.masking = masking
        # counts of candidates and dropped targets, sum and count of per-scope thresholds
        self._mask_sums = torch.zeros(4, dtype=torch.float64)
        self._projection: dict[str, float] = {}
        self.recorded = False  # whether a masked loss has run at all (the callback's first-step guard)

    def record_mask(self, stats: MaskStats | None) -> None:
        if stats is None:
            return
        self.recorded = True
        values = torch.stack([stats.candidates, stats.dropped, stats.threshold_sum, stats.threshold_count])
        self._mask_sums += values.detach().to("cpu", torch.float64)

    def record_projection(self, report: ProjectionReport) -> None:
        self._projection = {
            **self._projection,
            "slowed/max_delta_norm": report.max_norm,
            "slowed/layers_projected": float(report.num_projected),
            "slowed/min_scale": report.min_scale,
        }

    def record_subspace(self, report) -> None:
        """The safety subspace's projection: the largest and the mean share of a weight's change it removed."""
        self._projection.update(
            {
                "slowed/subspace_removed_max": report.max_removed,
                "slowed/subspace_removed_mean": report.mean_removed,
            }
        )

    def drain(self) -> dict[str, float]:
        """Metrics accumulated since the last call (reduced over processes), then reset."""
        metrics: dict[str, float] = {}
        if self.masking:
            sums = self._mask_sums.clone()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                sums = sums.to(_reduce_device())
                torch.distributed.all_reduce(sums)
                sums = sums.cpu()
            candidates, dropped, threshold_sum, threshold_count = sums.tolist()
            if candidates > 0:
                metrics["slowed/masked_fraction"] = dropped / candidates
            if threshold_count > 0:
                metrics["slowed/entropy_threshold"] = threshold_sum / threshold_count
            self._mask_sums.zero_()
        metrics.update(self._projection)
        self._projection = {}
        return metrics


def _reduce_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
