"""Variables charts: I-MR, X̄-R and X̄-S with variable subgroup size.

Each chart is split into an estimate step (Phase I data → :class:`Estimate`)
and a series step (points + a given estimate → :class:`ChartSeries`), so that
Phase II points are judged against a frozen estimate without Phase I data.
Subgroups are rows of a 2-D float array padded with NaN (NaN = missing
observation, n_i = count of non-NaN). Semantics: ``spc-semantics.md``
("Charts and estimates") and ``contracts/analyze.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spc.constants import c4, c4_array, d2, d2_array, d3, d3_array
from spc.errors import SpcInputError
from spc.series import ChartSeries, Estimate

__all__ = [
    "IMR_METHODS",
    "XBAR_METHODS",
    "Known",
    "SubgroupStats",
    "control_band",
    "estimate_imr",
    "estimate_xbar",
    "imr_chart",
    "imr_series",
    "moving_ranges",
    "range_limits",
    "sd_limits",
    "subgroup_stats",
    "xbar_chart",
    "xbar_limits",
    "xbar_series",
]

XBAR_METHODS = ("rbar", "sbar", "rbar-weighted", "sbar-weighted", "pooled")
IMR_METHODS = ("mr", "sd")


@dataclass(frozen=True)
class Known:
    """Standards given: either or both of the process centre and σ (None = estimate it)."""

    center: float | None = None
    sigma: float | None = None


@dataclass(frozen=True)
class SubgroupStats:
    """Per-subgroup size, mean, range and standard deviation (NaN where undefined)."""

    n: np.ndarray
    mean: np.ndarray
    range: np.ndarray
    sd: np.ndarray


def as_subgroups(data: np.ndarray) -> np.ndarray:
    """View individual values (1-D) as 1-element subgroups; pass 2-D through."""
    arr = np.asarray(data, dtype=float)
    return arr[:, None] if arr.ndim == 1 else arr


def subgroup_stats(data: np.ndarray) -> SubgroupStats:
    """n_i, x̄_i, R_i and S_i of each row (NaN-padded) of ``data``."""
    x = as_subgroups(data)
    ok = ~np.isnan(x)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(ok, x, 0.0).sum(axis=1)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        hi = np.where(ok, x, -np.inf).max(axis=1)
        lo = np.where(ok, x, np.inf).min(axis=1)
        rng = np.where(n >= 2, hi - lo, np.nan)
        dev = np.where(ok, x - mean[:, None], 0.0)
        sd = np.where(n >= 2, np.sqrt((dev * dev).sum(axis=1) / np.maximum(n - 1, 1)), np.nan)
    return SubgroupStats(n=n, mean=mean, range=rng, sd=sd)


def _use_mask(count: int, exclude: np.ndarray | None) -> np.ndarray:
    if exclude is None:
        return np.ones(count, dtype=bool)
    ex = np.asarray(exclude, dtype=bool)
    if ex.shape != (count,):
        raise SpcInputError(
            "exclude", f"needs one flag per Phase I point ({count}), got {ex.shape}"
        )
    return ~ex


def grand_mean(stats: SubgroupStats, use: np.ndarray) -> float:
    """n-weighted grand mean of all observations of the used subgroups."""
    n = np.where(use, stats.n, 0)
    total = float(np.sum(np.where(n > 0, stats.mean * n, 0.0)))
    count = int(n.sum())
    if count == 0:
        raise SpcInputError("data", "no observations to estimate the centre from")
    return total / count


def _sigma_xbar(stats: SubgroupStats, use: np.ndarray, method: str) -> float:
    sel = use & (stats.n >= 2)
    if not sel.any():
        raise SpcInputError("data", "needs at least one subgroup with two or more observations")
    n = stats.n[sel]
    if method == "rbar":
        return float(np.mean(stats.range[sel] / d2_array(n)))
    if method == "sbar":
        return float(np.mean(stats.sd[sel] / c4_array(n)))
    if method == "rbar-weighted":
        # MVLUE from ranges (Burr 1969): weights d2²/d3² make each R_i/d2 unbiased with
        # variance ∝ d3²/d2², so these weights minimise the variance of the combination.
        f = d2_array(n) ** 2 / d3_array(n) ** 2
        return float(np.sum(f * stats.range[sel] / d2_array(n)) / np.sum(f))
    if method == "sbar-weighted":
        c = c4_array(n)
        h = c**2 / (1.0 - c**2)
        return float(np.sum(h * stats.sd[sel] / c) / np.sum(h))
    if method == "pooled":
        dof = n - 1
        sp = math.sqrt(float(np.sum(dof * stats.sd[sel] ** 2)) / float(dof.sum()))
        return sp / c4(int(dof.sum()) + 1)
    raise SpcInputError("sigma_method", f"unknown method {method!r} for subgroup charts")


def estimate_xbar(
    data: np.ndarray,
    method: str = "rbar",
    known: Known | None = None,
    exclude: np.ndarray | None = None,
) -> Estimate:
    """Phase I estimate for an X̄-R / X̄-S pair: grand mean and σ̂ by ``method``."""
    known = known or Known()
    stats = subgroup_stats(data)
    use = _use_mask(len(stats.n), exclude)
    center = known.center if known.center is not None else grand_mean(stats, use)
    if known.sigma is not None:
        return Estimate(center=float(center), sigma=float(known.sigma), method="known")
    return Estimate(center=float(center), sigma=_sigma_xbar(stats, use, method), method=method)


def control_band(center, sig, k, lo: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(LCL, UCL) = centre ∓ k·σ, the LCL clipped at ``lo`` when given.

    Every argument may be a scalar or an array (per point or per
    characteristic); the batch series and the streaming engine both call this
    so their limits are the same floating-point numbers.
    """
    width = k * sig
    lcl = center - width
    if lo is not None:
        lcl = np.maximum(lcl, lo)
    return lcl, center + width


def xbar_limits(
    n: np.ndarray, center, sigma, nsigmas
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre, σ, LCL and UCL of X̄ points of sizes ``n`` (NaN where n = 0).

    σ_i = σ/√n_i; ``center``, ``sigma`` and ``nsigmas`` are scalars or arrays
    broadcast against ``n``.
    """
    n = np.asarray(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = np.where(n > 0, sigma / np.sqrt(n.astype(float)), np.nan)
    ctr = np.where(n > 0, center, np.nan)
    lcl, ucl = control_band(ctr, sig, nsigmas)
    return ctr, sig, lcl, ucl


def range_limits(d2n, d3n, sigma, nsigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre d2·σ, σ_R = d3·σ and limits (LCL ≥ 0) of an R (or MR) chart.

    ``d2n``/``d3n`` are d2(n_i), d3(n_i) (NaN for n_i < 2), scalars or arrays.
    """
    ctr = np.multiply(d2n, sigma)
    sig = np.multiply(d3n, sigma)
    lcl, ucl = control_band(ctr, sig, nsigmas, lo=0.0)
    return ctr, sig, lcl, ucl


def sd_limits(c4n, sigma, nsigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre c4·σ, σ_S = σ·√(1 − c4²) and limits (LCL ≥ 0) of an S chart (c4n = c4(n_i))."""
    ctr = np.multiply(c4n, sigma)
    sig = sigma * np.sqrt(1.0 - c4n * c4n)
    lcl, ucl = control_band(ctr, sig, nsigmas, lo=0.0)
    return ctr, sig, lcl, ucl


def xbar_series(
    data: np.ndarray, est: Estimate, nsigmas: float = 3.0, dispersion: str = "r"
) -> tuple[ChartSeries, ChartSeries]:
    """The X̄ series and its R or S companion (``dispersion`` = "r" or "s") for given subgroups.

    X̄ limits use each subgroup's own n_i; the R (S) centre is d2(n_i)·σ̂
    (c4(n_i)·σ̂) with σ from d3(n_i) (σ̂·√(1 − c4²)), LCL clipped at 0.
    A subgroup with n_i = 1 plots NaN on the R/S chart; n_i = 0 is a missing point.
    """
    stats = subgroup_stats(data)
    n = stats.n
    nf = n.astype(float)
    s = est.sigma
    center_x, sig_x, lcl_x, ucl_x = xbar_limits(n, est.center, s, nsigmas)
    xbar = ChartSeries("xbar", stats.mean, center_x, lcl_x, ucl_x, sig_x, nf, est)
    if dispersion == "r":
        center_d, sig_d, lcl_d, ucl_d = range_limits(d2_array(n), d3_array(n), s, nsigmas)
        stat_d = stats.range
    elif dispersion == "s":
        center_d, sig_d, lcl_d, ucl_d = sd_limits(c4_array(n), s, nsigmas)
        stat_d = stats.sd
    else:
        raise ValueError(f"dispersion must be 'r' or 's', not {dispersion!r}")
    disp = ChartSeries(dispersion, stat_d, center_d, lcl_d, ucl_d, sig_d, nf, est, dispersion=True)
    return xbar, disp


def xbar_chart(
    data: np.ndarray,
    phase2: np.ndarray | None = None,
    *,
    dispersion: str = "r",
    method: str | None = None,
    known: Known | None = None,
    nsigmas: float = 3.0,
    exclude: np.ndarray | None = None,
) -> tuple[ChartSeries, ChartSeries]:
    """X̄-R or X̄-S over Phase I then Phase II subgroups, limits from Phase I (or known)."""
    method = method or ("rbar" if dispersion == "r" else "sbar")
    est = estimate_xbar(data, method, known, exclude)
    return xbar_series(_stack(as_subgroups(data), phase2), est, nsigmas, dispersion)


def _stack(p1: np.ndarray, p2: np.ndarray | None) -> np.ndarray:
    if p2 is None:
        return p1
    p2 = as_subgroups(p2)
    width = max(p1.shape[1], p2.shape[1])

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan)

    return np.vstack([pad(p1), pad(p2)])


def moving_ranges(x: np.ndarray) -> np.ndarray:
    """|x_i − x_prev| where x_prev is the previous non-missing value; NaN at the first and missing points.

    Missing points are skipped ("the series is the plotted points only",
    ``spc-semantics.md`` rule 6), so a gap does not break the moving range.
    """
    x = np.asarray(x, dtype=float)
    mr = np.full(x.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(x))
    if idx.size > 1:
        mr[idx[1:]] = np.abs(np.diff(x[idx]))
    return mr


def _individuals(data: np.ndarray) -> np.ndarray:
    arr = np.asarray(data, dtype=float)
    if arr.ndim == 2:
        if arr.shape[1] != 1:
            raise SpcInputError("data", "I-MR takes individual values or 1-element subgroups")
        arr = arr[:, 0]
    return arr


def estimate_imr(
    data: np.ndarray,
    method: str = "mr",
    known: Known | None = None,
    exclude: np.ndarray | None = None,
) -> Estimate:
    """Phase I estimate for I-MR: mean of the values and σ̂ = MR̄/d2(2) (``mr``) or SD/c4(N) (``sd``).

    With exclusions, a moving range counts only when both of its points are used.
    """
    known = known or Known()
    x = _individuals(data)
    use = _use_mask(len(x), exclude) & ~np.isnan(x)
    vals = x[use]
    if known.center is not None:
        center = float(known.center)
    elif vals.size:
        center = float(np.mean(vals))
    else:
        raise SpcInputError("data", "no observations to estimate the centre from")
    if known.sigma is not None:
        return Estimate(center=center, sigma=float(known.sigma), method="known")
    if method == "mr":
        idx = np.flatnonzero(~np.isnan(x))
        pair_ok = use[idx[1:]] & use[idx[:-1]]
        mrs = np.abs(np.diff(x[idx]))[pair_ok]
        if mrs.size == 0:
            raise SpcInputError(
                "data", "needs at least two values to estimate σ from moving ranges"
            )
        return Estimate(center=center, sigma=float(np.mean(mrs)) / d2(2), method="mr")
    if method == "sd":
        if vals.size < 2:
            raise SpcInputError("data", "needs at least two values to estimate σ")
        return Estimate(
            center=center, sigma=float(np.std(vals, ddof=1)) / c4(vals.size), method="sd"
        )
    raise SpcInputError("sigma_method", f"unknown method {method!r} for I-MR")


def imr_series(
    x: np.ndarray, est: Estimate, nsigmas: float = 3.0, prev: float | None = None
) -> tuple[ChartSeries, ChartSeries]:
    """The individuals (``x``) and moving-range (``mr``) series of values ``x`` against ``est``.

    ``prev`` is the last value before ``x`` (so the first Phase II moving range
    uses the last Phase I value); without it the first MR is NaN.
    """
    x = _individuals(x)
    m = len(x)
    present = ~np.isnan(x)
    nf = present.astype(float)
    s = est.sigma
    center_x = np.full(m, est.center)
    sig_x = np.full(m, s)
    lcl_x, ucl_x = control_band(center_x, sig_x, nsigmas)
    xs = ChartSeries("x", x.copy(), center_x, lcl_x, ucl_x, sig_x, nf, est)
    if prev is None:
        mr = moving_ranges(x)
    else:
        mr = moving_ranges(np.concatenate([[prev], x]))[1:]
    center_m, sig_m, lcl_m, ucl_m = range_limits(np.full(m, d2(2)), np.full(m, d3(2)), s, nsigmas)
    n_mr = (~np.isnan(mr)).astype(float) * 2.0
    mrs = ChartSeries("mr", mr, center_m, lcl_m, ucl_m, sig_m, n_mr, est, dispersion=True)
    return xs, mrs


def imr_chart(
    data: np.ndarray,
    phase2: np.ndarray | None = None,
    *,
    method: str = "mr",
    known: Known | None = None,
    nsigmas: float = 3.0,
    exclude: np.ndarray | None = None,
) -> tuple[ChartSeries, ChartSeries]:
    """I-MR over Phase I then Phase II values, limits from Phase I (or known)."""
    est = estimate_imr(data, method, known, exclude)
    x = _individuals(data)
    if phase2 is not None:
        x = np.concatenate([x, _individuals(phase2)])
    return imr_series(x, est, nsigmas)
