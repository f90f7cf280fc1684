"""The naive baseline for ``bench_engine``: one Python object per characteristic.

Each characteristic keeps its recent points in deques and judges every new
point in a Python loop — the obvious way to write a live SPC engine. It
computes the same charts and rules as :mod:`spc.engine` for complete data
(no missing points, σ > 0), which the benchmark checks before timing.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import pairwise

from spc.constants import d2, d3
from spc.rules import BITS

__all__ = ["NaiveCusum", "NaiveEwma", "NaiveImr", "make_naive"]

_N = {code: 1 << bit for code, bit in BITS.items()}


class NaiveImr:
    """I-MR with Nelson rules N1–N8 on x and rule 1 on the moving range."""

    def __init__(self, center: float, sigma: float, nsigmas: float = 3.0) -> None:
        self.center = center
        self.sigma = sigma
        self.lcl = center - nsigmas * sigma
        self.ucl = center + nsigmas * sigma
        mr_center = d2(2) * sigma
        mr_sigma = d3(2) * sigma
        self.mr_ucl = mr_center + nsigmas * mr_sigma
        self.mr_lcl = max(0.0, mr_center - nsigmas * mr_sigma)
        self.xs: deque[float] = deque(maxlen=15)
        self.zs: deque[float] = deque(maxlen=15)

    def update(self, x: float) -> tuple[int, int]:
        """Judge one value; returns the (x chart, MR chart) violation masks."""
        mr_mask = 0
        if self.xs:
            mr = abs(x - self.xs[-1])
            if mr > self.mr_ucl or mr < self.mr_lcl:
                mr_mask = _N["N1"]
        z = (x - self.center) / self.sigma
        self.xs.append(x)
        self.zs.append(z)
        xs, zs = list(self.xs), list(self.zs)
        mask = 0
        if x > self.ucl or x < self.lcl:
            mask |= _N["N1"]
        if len(zs) >= 9 and (all(v > 0 for v in zs[-9:]) or all(v < 0 for v in zs[-9:])):
            mask |= _N["N2"]
        if len(xs) >= 6:
            d = [b - a for a, b in pairwise(xs[-6:])]
            if all(v > 0 for v in d) or all(v < 0 for v in d):
                mask |= _N["N3"]
        if len(xs) >= 14:
            d = [b - a for a, b in pairwise(xs[-14:])]
            if all(v != 0 for v in d) and all((a > 0) != (b > 0) for a, b in pairwise(d)):
                mask |= _N["N4"]
        for code, k, m, level in (("N5", 2, 3, 2.0), ("N6", 4, 5, 1.0)):
            w = zs[-m:]
            if (z > level and sum(v > level for v in w) >= k) or (
                z < -level and sum(v < -level for v in w) >= k
            ):
                mask |= _N[code]
        if len(zs) >= 15 and all(abs(v) <= 1.0 for v in zs):
            mask |= _N["N7"]
        if len(zs) >= 8:
            w = zs[-8:]
            if all(abs(v) > 1.0 for v in w) and any(v > 1 for v in w) and any(v < -1 for v in w):
                mask |= _N["N8"]
        return mask, mr_mask


class NaiveEwma:
    """EWMA of individual values with exact time-varying limits."""

    def __init__(self, center: float, sigma: float, lam: float = 0.2, L: float = 3.0) -> None:
        self.center, self.sigma, self.lam, self.L = center, sigma, lam, L
        self.z = center
        self.t = 0

    def update(self, x: float) -> int:
        """Judge one value; returns the EWMA bit when the EWMA is beyond its limits."""
        lam = self.lam
        self.z = lam * x + (1.0 - lam) * self.z
        self.t += 1
        width = (
            self.L * self.sigma * math.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * self.t)))
        )
        return _N["EWMA"] if abs(self.z - self.center) > width else 0


class NaiveCusum:
    """Tabular CUSUM of individual values."""

    def __init__(self, center: float, sigma: float, k: float = 0.5, h: float = 5.0) -> None:
        self.center, self.sigma, self.k, self.h = center, sigma, k, h
        self.up = 0.0
        self.lo = 0.0

    def update(self, x: float) -> int:
        """Judge one value; returns the CUSUM_UPPER / CUSUM_LOWER bits."""
        z = (x - self.center) / self.sigma
        self.up = max(0.0, self.up + z - self.k)
        self.lo = min(0.0, self.lo + z + self.k)
        mask = 0
        if self.up > self.h:
            mask |= _N["CUSUM_UPPER"]
        if self.lo < -self.h:
            mask |= _N["CUSUM_LOWER"]
        return mask


def make_naive(chart: str, center: float, sigma: float):
    """One naive characteristic of ``chart`` (imr, ewma or cusum) with default parameters."""
    if chart == "imr":
        return NaiveImr(center, sigma)
    if chart == "ewma":
        return NaiveEwma(center, sigma)
    if chart == "cusum":
        return NaiveCusum(center, sigma)
    raise ValueError(f"no naive {chart!r} characteristic")
