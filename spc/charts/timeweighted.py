"""Time-weighted charts: EWMA with exact time-varying limits and tabular CUSUM with FIR.

Both plot subgroup means (or individual values). Their recursions are written
point by point, in the same floating-point order the streaming engine uses,
so that feeding a series in any split gives bit-identical results. A point
with no observation (n = 0) is skipped: the sums carry over it, t does not
advance, and every array holds NaN there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spc.series import ChartSeries, Estimate

__all__ = [
    "CusumCarry",
    "EwmaCarry",
    "cusum_series",
    "cusum_standardize",
    "ewma_factor",
    "ewma_limits",
    "ewma_saturation",
    "ewma_series",
]


@dataclass(frozen=True)
class EwmaCarry:
    """EWMA state between calls: the last smoothed value and the count t of plotted points."""

    z: float
    t: int


@dataclass(frozen=True)
class CusumCarry:
    """CUSUM state between calls: the upper (≥ 0) and lower (≤ 0) sums."""

    upper: float
    lower: float


def _standardize(dev: float, sd: float) -> float:
    # σ = 0 (constant data) is valid input: any deviation is infinitely far out.
    if sd > 0.0:
        return dev / sd
    return math.copysign(math.inf, dev) if dev != 0.0 else 0.0


def ewma_factor(lam: float, t: np.ndarray | int) -> np.ndarray:
    """√(λ/(2−λ)·(1−(1−λ)^(2t))): the EWMA's σ as a share of σ/√n at point t (t ≥ 1)."""
    t = np.asarray(t, dtype=float)
    return np.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2.0 * t)))


def ewma_limits(
    center, sigma, n, lam, L, t, factor=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ_t = σ/√n · ewma_factor(λ, t) and the limits centre ∓ L·σ_t of plotted point t ≥ 1.

    Scalars or arrays (per point or per characteristic); the batch series and
    the streaming engine both call this so their limits are the same numbers.
    ``factor`` is ``ewma_factor(lam, t)`` when the caller already has it.
    """
    if factor is None:
        factor = ewma_factor(lam, t)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = sigma / np.sqrt(n) * factor
    return sig, center - L * sig, center + L * sig


def ewma_saturation(lam) -> np.ndarray:
    """The t from which ewma_factor(λ, t) is exactly √(λ/(2−λ)) in floating point.

    From there (1−λ)^(2t) < 2⁻⁶⁰, far below half an ulp of 1, so 1 − (1−λ)^(2t)
    rounds to 1.0 exactly and the factor is √(λ/(2−λ)·1.0) bit for bit. The
    engine uses it to skip ``pow`` (slow once its result is subnormal).
    """
    with np.errstate(divide="ignore"):
        per_t = -np.log2(1.0 - np.asarray(lam, dtype=float))
    return np.floor(30.0 / per_t) + 1.0


def cusum_standardize(dev, sd) -> np.ndarray:
    """Vectorised :func:`_standardize`: dev/sd, or ±inf / 0 where sd ≤ 0 (or NaN), as the recursion does."""
    dev = np.asarray(dev, dtype=float)
    sd = np.asarray(sd, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = dev / sd
        odd = ~(sd > 0.0)
        if odd.any():
            alt = np.where(dev != 0.0, np.copysign(np.inf, dev), 0.0)
            z = np.where(odd, alt, z)
    return z


def ewma_series(
    means: np.ndarray,
    n: np.ndarray,
    est: Estimate,
    lam: float = 0.2,
    L: float = 3.0,
    carry: EwmaCarry | None = None,
) -> tuple[ChartSeries, EwmaCarry]:
    """EWMA of subgroup ``means`` (sizes ``n``) against ``est``; returns the series and the carry.

    z_0 = centre (``spc-semantics.md``, EWMA); z_t = λ·x̄_t + (1−λ)·z_{t−1};
    σ_t = σ/√n_t · ewma_factor(λ, t), t counting on across calls through ``carry``;
    limits centre ± L·σ_t. ``statistics`` are the means, ``extra["ewma"]`` the path.
    """
    means = np.asarray(means, dtype=float)
    n = np.asarray(n, dtype=float)
    m = len(means)
    z = est.center if carry is None else carry.z
    t = 0 if carry is None else carry.t
    path = np.full(m, np.nan)
    tt = np.zeros(m)
    one_minus = 1.0 - lam
    for i in range(m):
        if n[i] > 0 and not math.isnan(means[i]):
            z = lam * means[i] + one_minus * z
            t += 1
            path[i] = z
            tt[i] = t
    ok = tt > 0
    sig, lcl, ucl = ewma_limits(est.center, est.sigma, n, lam, L, np.maximum(tt, 1))
    sig = np.where(ok, sig, np.nan)
    series = ChartSeries(
        "ewma",
        np.where(ok, means, np.nan),
        np.where(ok, est.center, np.nan),
        np.where(ok, lcl, np.nan),
        np.where(ok, ucl, np.nan),
        sig,
        n,
        est,
        extra={"ewma": path},
    )
    return series, EwmaCarry(z=z, t=t)


def cusum_series(
    means: np.ndarray,
    n: np.ndarray,
    est: Estimate,
    k: float = 0.5,
    h: float = 5.0,
    head_start: float = 0.0,
    reset: bool = False,
    carry: CusumCarry | None = None,
) -> tuple[ChartSeries, CusumCarry]:
    """Tabular CUSUM of standardized means z = (x̄ − μ0)/(σ/√n); returns the series and the carry.

    C⁺ = max(0, C⁺ + z − k), C⁻ = min(0, C⁻ + z + k), starting at ±head_start
    (FIR). The sums, k, h and the limits are in σ units of the plotted
    statistic: the series' centre is 0, its limits ∓h and its σ 1. A signal is
    C⁺ > h or C⁻ < −h. ``reset`` (live engine only) restarts both sums at the
    head start after a signal; ``analyze`` never resets.
    """
    means = np.asarray(means, dtype=float)
    n = np.asarray(n, dtype=float)
    m = len(means)
    cp = head_start if carry is None else carry.upper
    cm = -head_start if carry is None else carry.lower
    up = np.full(m, np.nan)
    lo = np.full(m, np.nan)
    for i in range(m):
        if n[i] > 0 and not math.isnan(means[i]):
            zi = _standardize(means[i] - est.center, est.sigma / math.sqrt(n[i]))
            cp = max(0.0, cp + zi - k)
            cm = min(0.0, cm + zi + k)
            up[i] = cp
            lo[i] = cm
            if reset and (cp > h or cm < -h):
                cp, cm = head_start, -head_start
    ok = ~np.isnan(up)
    center = np.where(ok, 0.0, np.nan)
    series = ChartSeries(
        "cusum",
        np.where(ok, means, np.nan),
        center,
        np.where(ok, -h, np.nan),
        np.where(ok, h, np.nan),
        np.where(ok, 1.0, np.nan),
        n,
        est,
        extra={"cusum_upper": up, "cusum_lower": lo},
    )
    return series, CusumCarry(upper=cp, lower=cm)
