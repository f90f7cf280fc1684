"""Control-chart constants d2(n), d3(n), c4(n) at full double precision.

d2 and d3 are the mean and standard deviation of the range of n independent
standard normal variables, computed by numerical integration of the range
distribution; c4 is the bias factor of the sample standard deviation,
computed from the gamma function. Nothing here comes from a 3-decimal table
(``spc-semantics.md``, "Constants").
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy import special

__all__ = ["c4", "c4_array", "d2", "d2_array", "d3", "d3_array"]

_HALF = 9.0  # the normal tails beyond ±9 contribute < 1e-18
_NODES, _WEIGHTS = special.roots_legendre(200)


def _check_n(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"subgroup size must be a positive integer, got {n!r}")
    return int(n)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-9, 0] and [0, 9] (the integrands bend at 0)."""
    x = np.concatenate([(_NODES - 1.0) * _HALF / 2.0, (_NODES + 1.0) * _HALF / 2.0])
    w = np.concatenate([_WEIGHTS, _WEIGHTS]) * _HALF / 2.0
    return x, w


@cache
def d2(n: int) -> float:
    """Expected range of n standard normal observations (NaN for n = 1).

    d2(n) = ∫ [1 − Φ(x)ⁿ − (1 − Φ(x))ⁿ] dx, by 400-node Gauss-Legendre
    quadrature (agrees with adaptive quadrature to ~1e-14).
    """
    n = _check_n(n)
    if n == 1:
        return math.nan
    if n == 2:
        return 2.0 / math.sqrt(math.pi)
    x, w = _grid()
    return float(np.sum(w * (1.0 - special.ndtr(x) ** n - special.ndtr(-x) ** n)))


@cache
def d3(n: int) -> float:
    """Standard deviation of the range of n standard normal observations (NaN for n = 1).

    E[W²] = 2 ∫∫_{x<y} [1 − Φ(y)ⁿ − (1 − Φ(x))ⁿ + (Φ(y) − Φ(x))ⁿ] dx dy and
    d3 = √(E[W²] − d2²); tensor Gauss-Legendre quadrature over the triangle.
    """
    n = _check_n(n)
    if n == 1:
        return math.nan
    if n == 2:
        return math.sqrt(2.0 - 4.0 / math.pi)
    y, wy = _grid()
    half = (y + _HALF) / 2.0  # inner interval [-9, y] mapped from [-1, 1]
    x = half[:, None] * (_NODES[None, :] + 1.0) - _HALF
    wx = half[:, None] * _WEIGHTS[None, :]
    fy = special.ndtr(y)[:, None]
    g = 1.0 - fy**n - special.ndtr(-x) ** n + (fy - special.ndtr(x)) ** n
    ew2 = 2.0 * np.sum(wy * np.sum(g * wx, axis=1))
    return float(math.sqrt(ew2 - d2(n) ** 2))


@cache
def c4(n: int) -> float:
    """Bias factor of the sample standard deviation: E[S] = c4(n)·σ (NaN for n = 1).

    c4(n) = √(2/(n−1)) · Γ(n/2) / Γ((n−1)/2).
    """
    n = _check_n(n)
    if n == 1:
        return math.nan
    return float(
        math.sqrt(2.0 / (n - 1))
        * math.exp(special.gammaln(n / 2.0) - special.gammaln((n - 1) / 2.0))
    )


def _table(fn, n: np.ndarray) -> np.ndarray:
    n = np.asarray(n)
    out = np.full(n.shape, np.nan)
    for v in np.unique(n):
        if v >= 1:
            out[n == v] = fn(int(v))
    return out


def d2_array(n: np.ndarray) -> np.ndarray:
    """d2 for each entry of an integer array (NaN where n < 2)."""
    return _table(d2, n)


def d3_array(n: np.ndarray) -> np.ndarray:
    """d3 for each entry of an integer array (NaN where n < 2)."""
    return _table(d3, n)


def c4_array(n: np.ndarray) -> np.ndarray:
    """c4 for each entry of an integer array (NaN where n < 2)."""
    return _table(c4, n)
