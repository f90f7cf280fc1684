"""Result objects shared by every chart: one plotted series with its per-point limits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChartSeries", "Estimate"]


@dataclass(frozen=True)
class Estimate:
    """The Phase I (or given) estimate a chart's limits come from.

    ``method`` is one of the ``sigma_method`` names of ``contracts/analyze.md``
    or ``known``; ``center`` and ``sigma`` are the process centre and σ̂ (for
    attribute charts: p̄, c̄ or ū and σ is NaN).
    """

    center: float
    sigma: float
    method: str


@dataclass(frozen=True)
class ChartSeries:
    """One plotted series (``x``, ``mr``, ``xbar``, ``r``, ``p`` …) and its per-point limits.

    Every array has one entry per plotted point, Phase I then Phase II. A
    value that does not exist (a missing point, an undefined limit) is NaN.
    ``sigma`` is the standard deviation of the plotted statistic at that point
    (the zone width), unclipped; ``lcl``/``ucl`` are the real, possibly clipped
    limits. ``extra`` holds chart-specific arrays (``ewma``, ``cusum_upper``,
    ``cusum_lower``). ``dispersion`` marks R, S and MR charts, which get only
    rule 1 by default.
    """

    name: str
    statistics: np.ndarray
    center: np.ndarray
    lcl: np.ndarray
    ucl: np.ndarray
    sigma: np.ndarray
    n: np.ndarray
    estimate: Estimate
    dispersion: bool = False
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.statistics.shape[0])
