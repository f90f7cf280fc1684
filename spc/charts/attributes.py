"""Attribute control charts: p, np, c, u and Laney p′ / u′.

Each chart is split the same way as the variables charts: an ``estimate_*``
step (Phase I counts → :class:`Estimate`, honouring an optional ``exclude``
mask), a ``*_series`` step (counts + a given estimate → :class:`ChartSeries`)
and a ``*_chart`` convenience that estimates on Phase I (unless a standard is
given) and returns one series over Phase I then Phase II points, so Phase II
is judged against the frozen Phase I estimate only.

Semantics (``spc-semantics.md``, "Charts and estimates"; ``contracts/analyze.md``):

* p̄ = ΣD/Σn and ū = ΣC/Σn over the used Phase I points, never the mean of
  the ratios; c̄ is the mean count per point (sizes play no part).
* Limits use each point's own n_i (stair-step limits when n varies).
* LCLs are clipped at 0; the p chart's UCL at 1, the np chart's at n_i.
  ``sigma`` is the σ of the plotted statistic, unclipped (the zone width).
* ``Estimate.sigma`` is NaN for p, np, c and u (the chart's σ follows from the
  centre); for Laney p′/u′ it is σ_z.
* All-zero counts are valid: p̄ = 0 (or c̄ = ū = 0) gives σ = 0 and limits
  that collapse onto the centre line; p̄ = 1 likewise.

Errors name the offending entry: ``data[3]``, ``sizes[2]``, ``phase2.sizes[0]``,
``exclude``, ``known.center``, ``nsigmas``, ``estimate.center``.
"""

from __future__ import annotations

import math

import numpy as np

from spc.checks import finite_numbers, positive, use_mask
from spc.constants import d2
from spc.errors import SpcInputError
from spc.series import ChartSeries, Estimate

__all__ = [
    "c_chart",
    "c_series",
    "estimate_c",
    "estimate_laney_p",
    "estimate_laney_u",
    "estimate_np",
    "estimate_p",
    "estimate_u",
    "laney_p_chart",
    "laney_p_series",
    "laney_u_chart",
    "laney_u_series",
    "np_chart",
    "np_series",
    "p_chart",
    "p_series",
    "u_chart",
    "u_series",
]


# --------------------------------------------------------------------------- validation


def _counts(counts, sizes, prefix: str = "", *, bounded: bool = False):
    """Validated counts (and sizes, when given): counts ≥ 0, sizes > 0, equal lengths.

    ``bounded`` (p, np): a count may not exceed its size.
    """
    c = finite_numbers(counts, f"{prefix}data")
    neg = np.flatnonzero(c < 0)
    if neg.size:
        i = neg[0]
        raise SpcInputError(f"{prefix}data[{i}]", f"a count cannot be negative, got {c[i]:g}")
    if sizes is None:
        return c, None
    n = finite_numbers(sizes, f"{prefix}sizes")
    if n.shape != c.shape:
        raise SpcInputError(f"{prefix}sizes", f"has {n.size} entries but {prefix}data has {c.size}")
    nonpos = np.flatnonzero(n <= 0)
    if nonpos.size:
        i = nonpos[0]
        raise SpcInputError(f"{prefix}sizes[{i}]", f"a size must be > 0, got {n[i]:g}")
    if bounded:
        over = np.flatnonzero(c > n)
        if over.size:
            i = over[0]
            raise SpcInputError(
                f"{prefix}data[{i}]", f"count {c[i]:g} exceeds its sample size {n[i]:g}"
            )
    return c, n


def _some(use: np.ndarray) -> np.ndarray:
    """``use`` itself, unless it selects nothing (every Phase I point excluded)."""
    if not use.any():
        raise SpcInputError("exclude", "excludes every Phase I point; nothing is left to estimate")
    return use


def _center_value(value, path: str, upper: float | None) -> float:
    """A centre (p̄, c̄, ū) that must be finite, ≥ 0 and, for proportions, ≤ 1."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpcInputError(path, "must be a number") from exc
    if not math.isfinite(v) or v < 0 or (upper is not None and v > upper):
        span = "[0, 1]" if upper is not None else "[0, ∞)"
        raise SpcInputError(path, f"must be a finite number in {span}, got {value!r}")
    return v


def _k(k) -> float:
    return positive(k, "nsigmas")


def _sigma_z(est: Estimate) -> float:
    s = float(est.sigma)
    if not math.isfinite(s) or s < 0:
        raise SpcInputError(
            "estimate.sigma", f"Laney charts need a finite σ_z ≥ 0, got {est.sigma!r}"
        )
    return s


def _join(c1, n1, c2, n2, *, bounded: bool, sized: bool = True):
    """Phase I then Phase II counts (and sizes), Phase II validated under ``phase2.``."""
    if c2 is None:
        if sized and n2 is not None:
            raise SpcInputError("phase2.data", "is missing (phase2.sizes was given)")
        return c1, n1
    if sized and n2 is None:
        raise SpcInputError("phase2.sizes", "is required with phase2.data")
    c2, n2 = _counts(c2, n2 if sized else None, "phase2.", bounded=bounded)
    if not sized:
        return np.concatenate([c1, c2]), None
    return np.concatenate([c1, c2]), np.concatenate([n1, n2])


def _phases(counts, sizes, phase2_counts, phase2_sizes, *, bounded: bool):
    """Validated Phase I then Phase II counts and sizes, as the sized ``*_chart`` functions plot them."""
    c1, n1 = _counts(counts, sizes, bounded=bounded)
    return _join(c1, n1, phase2_counts, phase2_sizes, bounded=bounded)


def _series(name, stat, center, sigma, k, n, est, *, upper=None) -> ChartSeries:
    """Limits centre ± k·σ, LCL clipped at 0 and UCL at ``upper`` (scalar or per point)."""
    lcl = np.maximum(center - k * sigma, 0.0)
    ucl = center + k * sigma
    if upper is not None:
        ucl = np.minimum(ucl, upper)
    return ChartSeries(name, stat, center, lcl, ucl, sigma, n, est)


# --------------------------------------------------------------------------- p and np


def estimate_p(counts, sizes, *, exclude=None, known_center=None) -> Estimate:
    """Phase I estimate for a p chart: p̄ = ΣD_i/Σn_i over the non-excluded points.

    ``known_center`` (standard given) is taken as p̄ instead (method ``known``).
    ``Estimate.sigma`` is NaN: σ_i follows from p̄ and n_i.
    """
    c, n = _counts(counts, sizes, bounded=True)
    use = use_mask(c.size, exclude, require_some=False)
    if known_center is not None:
        return Estimate(_center_value(known_center, "known.center", 1.0), math.nan, "known")
    use = _some(use)
    return Estimate(float(c[use].sum() / n[use].sum()), math.nan, "pbar")


def estimate_np(counts, sizes, *, exclude=None, known_center=None) -> Estimate:
    """Phase I estimate for an np chart: the same p̄ = ΣD/Σn as the p chart (method ``pbar``)."""
    return estimate_p(counts, sizes, exclude=exclude, known_center=known_center)


def _pbar(est: Estimate) -> float:
    return _center_value(est.center, "estimate.center", 1.0)


def p_series(counts, sizes, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """p chart series: p_i = D_i/n_i, centre p̄, σ_i = √(p̄(1−p̄)/n_i), limits clipped to [0, 1]."""
    c, n = _counts(counts, sizes, bounded=True)
    k = _k(nsigmas)
    p = _pbar(estimate)
    sigma = np.sqrt(p * (1.0 - p) / n)
    return _series("p", c / n, np.full(c.size, p), sigma, k, n, estimate, upper=1.0)


def p_chart(
    counts,
    sizes,
    phase2_counts=None,
    phase2_sizes=None,
    *,
    known_center=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """p chart over Phase I then Phase II points; p̄ from Phase I (or ``known_center``)."""
    est = estimate_p(counts, sizes, exclude=exclude, known_center=known_center)
    c, n = _phases(counts, sizes, phase2_counts, phase2_sizes, bounded=True)
    return p_series(c, n, est, nsigmas)


def np_series(counts, sizes, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """np chart series: statistic D_i, centre n_i·p̄, σ_i = √(n_i p̄(1−p̄)), LCL ≥ 0, UCL ≤ n_i."""
    c, n = _counts(counts, sizes, bounded=True)
    k = _k(nsigmas)
    p = _pbar(estimate)
    sigma = np.sqrt(n * p * (1.0 - p))
    return _series("np", c.copy(), n * p, sigma, k, n, estimate, upper=n)


def np_chart(
    counts,
    sizes,
    phase2_counts=None,
    phase2_sizes=None,
    *,
    known_center=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """np chart over Phase I then Phase II points; p̄ from Phase I (or ``known_center``)."""
    est = estimate_np(counts, sizes, exclude=exclude, known_center=known_center)
    c, n = _phases(counts, sizes, phase2_counts, phase2_sizes, bounded=True)
    return np_series(c, n, est, nsigmas)


# --------------------------------------------------------------------------- c and u


def estimate_c(counts, *, exclude=None, known_center=None) -> Estimate:
    """Phase I estimate for a c chart: c̄ = mean count per non-excluded point (method ``cbar``).

    Sizes play no part (varying inspection areas need a u chart).
    """
    c, _ = _counts(counts, None)
    use = use_mask(c.size, exclude, require_some=False)
    if known_center is not None:
        return Estimate(_center_value(known_center, "known.center", None), math.nan, "known")
    use = _some(use)
    return Estimate(float(c[use].mean()), math.nan, "cbar")


def c_series(counts, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """c chart series: statistic C_i, centre c̄, σ = √c̄, LCL clipped at 0; ``n`` is 1 per point."""
    c, _ = _counts(counts, None)
    k = _k(nsigmas)
    cbar = _center_value(estimate.center, "estimate.center", None)
    ones = np.ones(c.size)
    return _series("c", c.copy(), cbar * ones, math.sqrt(cbar) * ones, k, ones, estimate)


def c_chart(
    counts,
    phase2_counts=None,
    *,
    known_center=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """c chart over Phase I then Phase II counts; c̄ from Phase I (or ``known_center``)."""
    est = estimate_c(counts, exclude=exclude, known_center=known_center)
    c1, _ = _counts(counts, None)
    c, _ = _join(c1, None, phase2_counts, None, bounded=False, sized=False)
    return c_series(c, est, nsigmas)


def estimate_u(counts, sizes, *, exclude=None, known_center=None) -> Estimate:
    """Phase I estimate for a u chart: ū = ΣC_i/Σn_i over the non-excluded points (method ``ubar``).

    n_i is the inspection area / number of units and may be non-integer.
    """
    c, n = _counts(counts, sizes)
    use = use_mask(c.size, exclude, require_some=False)
    if known_center is not None:
        return Estimate(_center_value(known_center, "known.center", None), math.nan, "known")
    use = _some(use)
    return Estimate(float(c[use].sum() / n[use].sum()), math.nan, "ubar")


def u_series(counts, sizes, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """u chart series: u_i = C_i/n_i, centre ū, σ_i = √(ū/n_i), LCL clipped at 0."""
    c, n = _counts(counts, sizes)
    k = _k(nsigmas)
    u = _center_value(estimate.center, "estimate.center", None)
    return _series("u", c / n, np.full(c.size, u), np.sqrt(u / n), k, n, estimate)


def u_chart(
    counts,
    sizes,
    phase2_counts=None,
    phase2_sizes=None,
    *,
    known_center=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """u chart over Phase I then Phase II points; ū from Phase I (or ``known_center``)."""
    est = estimate_u(counts, sizes, exclude=exclude, known_center=known_center)
    c, n = _phases(counts, sizes, phase2_counts, phase2_sizes, bounded=False)
    return u_series(c, n, est, nsigmas)


# --------------------------------------------------------------------------- Laney p′ and u′


def _laney_sigma_z(stat: np.ndarray, center: float, sig: np.ndarray, use: np.ndarray) -> float:
    """σ_z = mean|z_i − z_{i−1}| / d2(2) over adjacent pairs of used points.

    A moving range counts only when both of its points are used (adjacent
    positions i−1, i both non-excluded); it never bridges an excluded point,
    the same rule the I-MR estimate follows. Where σ_i = 0 (centre 0 or 1)
    a point on the centre has z = 0; a point off it has no finite z.
    """
    z = np.zeros(stat.size)
    pos = sig > 0
    z[pos] = (stat[pos] - center) / sig[pos]
    off = np.flatnonzero(use & ~pos & (stat != center))
    if off.size:
        raise SpcInputError(
            "known.center",
            f"centre {center:g} gives σ = 0 but point {off[0]} is off it; "
            "its Laney z-score is infinite",
        )
    pairs = use[1:] & use[:-1]
    if not pairs.any():
        raise SpcInputError(
            "data", "Laney σ_z needs at least two consecutive non-excluded Phase I points"
        )
    return float(np.mean(np.abs(np.diff(z))[pairs])) / d2(2)


def _known_sigma_z(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpcInputError("known.sigma", "must be a number") from exc
    if not math.isfinite(v) or v <= 0:
        raise SpcInputError("known.sigma", f"σ_z must be a finite number > 0, got {value!r}")
    return v


def estimate_laney_p(
    counts, sizes, *, exclude=None, known_center=None, known_sigma_z=None
) -> Estimate:
    """Phase I estimate for a Laney p′ chart: Estimate(center=p̄, sigma=σ_z, method="laney").

    p̄ = ΣD/Σn (or ``known_center``); z_i = (p_i − p̄)/σ_i with σ_i = √(p̄(1−p̄)/n_i);
    σ_z = mean|z_i − z_{i−1}|/d2(2) over adjacent pairs of non-excluded points
    (Laney 2002, with the exact d2(2) = 2/√π instead of 1.128). The method is
    ``known`` only when ``known_sigma_z`` is given; with only a known p̄ the
    σ_z is still estimated and the method stays ``laney``.
    """
    c, n = _counts(counts, sizes, bounded=True)
    use = use_mask(c.size, exclude, require_some=False)
    if known_center is not None:
        p = _center_value(known_center, "known.center", 1.0)
    else:
        use = _some(use)
        p = float(c[use].sum() / n[use].sum())
    if known_sigma_z is not None:
        return Estimate(p, _known_sigma_z(known_sigma_z), "known")
    sig = np.sqrt(p * (1.0 - p) / n)
    return Estimate(p, _laney_sigma_z(c / n, p, sig, use), "laney")


def laney_p_series(counts, sizes, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """Laney p′ series (named ``p``): p_i, centre p̄, σ = σ_i·σ_z, limits clipped to [0, 1]."""
    c, n = _counts(counts, sizes, bounded=True)
    k = _k(nsigmas)
    p = _pbar(estimate)
    sigma = np.sqrt(p * (1.0 - p) / n) * _sigma_z(estimate)
    return _series("p", c / n, np.full(c.size, p), sigma, k, n, estimate, upper=1.0)


def laney_p_chart(
    counts,
    sizes,
    phase2_counts=None,
    phase2_sizes=None,
    *,
    known_center=None,
    known_sigma_z=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """Laney p′ chart over Phase I then Phase II points; p̄ and σ_z from Phase I (or known)."""
    est = estimate_laney_p(
        counts, sizes, exclude=exclude, known_center=known_center, known_sigma_z=known_sigma_z
    )
    c, n = _phases(counts, sizes, phase2_counts, phase2_sizes, bounded=True)
    return laney_p_series(c, n, est, nsigmas)


def estimate_laney_u(
    counts, sizes, *, exclude=None, known_center=None, known_sigma_z=None
) -> Estimate:
    """Phase I estimate for a Laney u′ chart: Estimate(center=ū, sigma=σ_z, method="laney").

    As :func:`estimate_laney_p` with ū = ΣC/Σn and σ_i = √(ū/n_i).
    """
    c, n = _counts(counts, sizes)
    use = use_mask(c.size, exclude, require_some=False)
    if known_center is not None:
        u = _center_value(known_center, "known.center", None)
    else:
        use = _some(use)
        u = float(c[use].sum() / n[use].sum())
    if known_sigma_z is not None:
        return Estimate(u, _known_sigma_z(known_sigma_z), "known")
    return Estimate(u, _laney_sigma_z(c / n, u, np.sqrt(u / n), use), "laney")


def laney_u_series(counts, sizes, estimate: Estimate, nsigmas: float = 3.0) -> ChartSeries:
    """Laney u′ series (named ``u``): u_i, centre ū, σ = √(ū/n_i)·σ_z, LCL clipped at 0."""
    c, n = _counts(counts, sizes)
    k = _k(nsigmas)
    u = _center_value(estimate.center, "estimate.center", None)
    sigma = np.sqrt(u / n) * _sigma_z(estimate)
    return _series("u", c / n, np.full(c.size, u), sigma, k, n, estimate)


def laney_u_chart(
    counts,
    sizes,
    phase2_counts=None,
    phase2_sizes=None,
    *,
    known_center=None,
    known_sigma_z=None,
    nsigmas: float = 3.0,
    exclude=None,
) -> ChartSeries:
    """Laney u′ chart over Phase I then Phase II points; ū and σ_z from Phase I (or known)."""
    est = estimate_laney_u(
        counts, sizes, exclude=exclude, known_center=known_center, known_sigma_z=known_sigma_z
    )
    c, n = _phases(counts, sizes, phase2_counts, phase2_sizes, bounded=False)
    return laney_u_series(c, n, est, nsigmas)
