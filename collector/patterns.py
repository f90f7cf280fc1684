"""Planted process patterns for the simulated stations: pure numpy, seeded, deterministic.

A :class:`Pattern` describes a series of measurements: normal noise around
``nominal`` with standard deviation ``sigma``, plus, from part ``start`` on
(0-based), one planted special cause:

* ``in_control``: nothing planted,
* ``shift``: the mean moves by ``k`` σ,
* ``trend``: the mean drifts by ``slope`` σ per part,
* ``mixture``: parts alternate between two populations ``k`` σ apart
  (centred on ``nominal``),
* ``outliers``: with probability ``p`` a part is off by ``k`` σ (random sign).

:class:`PatternStream` yields the same series in chunks of any size: the
noise and the outlier draws come from separate generators spawned from the
seed, each drawing a fixed amount per part, so ``take(a)`` then ``take(b)``
equals ``take(a + b)``, and :func:`series` equals one ``take``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["KINDS", "Pattern", "PatternStream", "series"]

Kind = Literal["in_control", "shift", "trend", "mixture", "outliers"]
KINDS: tuple[Kind, ...] = ("in_control", "shift", "trend", "mixture", "outliers")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A process: noise around ``nominal`` and one planted pattern from part ``start`` on."""

    kind: Kind = "in_control"
    nominal: float = 0.0
    sigma: float = 1.0
    start: int = 20
    k: float = 2.0
    slope: float = 0.1
    p: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown pattern {self.kind!r} ({', '.join(KINDS)})")
        if not self.sigma > 0:
            raise ValueError("sigma must be positive")
        if self.start < 0:
            raise ValueError("start must be ≥ 0")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError("p must be within [0, 1]")


class PatternStream:
    """The series of a :class:`Pattern`, taken in chunks (see the module docstring)."""

    def __init__(self, pattern: Pattern, seed: int) -> None:
        self.pattern = pattern
        noise_seq, outlier_seq = np.random.SeedSequence(seed).spawn(2)
        self._noise = np.random.Generator(np.random.PCG64(noise_seq))
        self._outliers = np.random.Generator(np.random.PCG64(outlier_seq))
        self.index = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` values (float64)."""
        pat = self.pattern
        i = np.arange(self.index, self.index + n)
        self.index += n
        z = self._noise.standard_normal(n)
        # Two draws per part, part by part, so chunking does not reorder them.
        hit, sign = self._outliers.random((n, 2)).T
        planted = i >= pat.start
        offset = np.zeros(n)
        if pat.kind == "shift":
            offset = np.where(planted, pat.k, 0.0)
        elif pat.kind == "trend":
            offset = np.where(planted, pat.slope * (i - pat.start + 1), 0.0)
        elif pat.kind == "mixture":
            offset = np.where(planted, np.where(i % 2 == 0, 0.5, -0.5) * pat.k, 0.0)
        elif pat.kind == "outliers":
            outlier = planted & (hit < pat.p)
            offset = np.where(outlier, np.where(sign < 0.5, -pat.k, pat.k), 0.0)
        return pat.nominal + pat.sigma * (z + offset)

    def next(self) -> float:
        """The next single value."""
        return float(self.take(1)[0])


def series(pattern: Pattern, n: int, seed: int) -> np.ndarray:
    """The first ``n`` values of ``pattern`` with ``seed``."""
    return PatternStream(pattern, seed).take(n)
