"""Process capability: Cp/Cpk/Cpm from the chart's σ̂, Pp/Ppk from the overall SD.

The formulas are those of ``contracts/analyze.md`` (Capability bullet) and
``spc-semantics.md`` ("Capability"); every constant is 6σ / 3σ whatever the
chart's ``nsigmas``. On top of the contract the report carries

* an Anderson–Darling normality test (A², A*² and the D'Agostino & Stephens
  (1986) p-value, the one Minitab prints);
* two non-normal analyses: a Box-Cox transformation (λ by maximum
  likelihood) and the ISO 22514-2 percentile method on the best of several
  fitted distributions;
* a stability verdict passed in by the caller.

Undefined values are NaN inside the dataclasses and ``null`` in ``to_json()``;
``notes`` says why each one is missing. Everything is deterministic: fits use
closed forms, monotone root finding and fixed grids, never random starts.

Degenerate inputs (all of them valid, none raises):

* ``sigma_within`` = 0 (e.g. constant data on an I-MR chart) or NaN (no σ̂):
  the C indices and their intervals are null; ``expected_ppm_outside`` is the
  σ → 0 limit for σ = 0 (0 inside the limits, 10⁶ outside, 5·10⁵ on a limit
  that is hit exactly) and null for NaN.
* fewer than 2 observations: the C point estimates still exist (they need
  only μ̂ and σ̂), every interval and every P index is null.
* all observations equal: σ_o = 0, so the P indices, the normality test and
  both non-normal analyses are null.
* Bissell intervals are computed as Ĉ ∓ z·√(1/(9n) + Ĉ²/(2(n−1))), which
  equals the contract's Ĉ·(1 ∓ z·√(1/(9nĈ²) + 1/(2(n−1)))) for every Ĉ ≠ 0
  and is its limit at Ĉ = 0 (μ̂ exactly on a limit), where the contract's
  form is 0·∞. A negative estimate gets its interval ordered lower ≤ upper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from spc.errors import SpcInputError

__all__ = [
    "BoxCoxCapability",
    "CapabilityIndex",
    "CapabilityReport",
    "DistributionFit",
    "Normality",
    "PercentileCapability",
    "anderson_darling_normal",
    "anderson_darling_pvalue",
    "capability",
]

NAN = float("nan")
#: ISO 22514-2 percentiles standing for μ ∓ 3σ (Φ(∓3) rounded as the standard writes them).
P_LOW = 0.00135
P_HIGH = 0.99865
#: The normality verdict: not rejected at the 5 % level.
NORMAL_P_THRESHOLD = 0.05
#: Box-Cox λ is searched in [−LAMBDA_MAX, LAMBDA_MAX].
LAMBDA_MAX = 5.0
UNSTABLE_WARNING = "process not in statistical control: Cpk is not a meaningful prediction"


# ---------------------------------------------------------------------------
# result records


def _num(x: float | None) -> float | None:
    """A plain JSON number, or None for a missing / NaN / infinite value."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class CapabilityIndex:
    """One index with its interval at ``confidence`` (NaN = undefined).

    Chi-square interval for Cp/Pp/Cpm; Bissell's normal approximation for the
    others, each bound with the one-sided z_{1−α} for Cpl/Cpu/Ppl/Ppu and the
    two-sided z_{1−α/2} for Cpk/Ppk (``contracts/analyze.md``).
    """

    value: float = NAN
    lower: float = NAN
    upper: float = NAN

    def to_json(self) -> dict[str, float | None]:
        """``{"value", "lower", "upper"}``, null where undefined."""
        return {"value": _num(self.value), "lower": _num(self.lower), "upper": _num(self.upper)}


@dataclass(frozen=True)
class Normality:
    """Anderson–Darling test against a normal with estimated mean and SD.

    ``ad`` is A², ``ad_adjusted`` is A*² = A²(1 + 0.75/n + 2.25/n²), ``p_value``
    the D'Agostino & Stephens (1986) approximation; ``normal`` is
    ``p_value ≥ 0.05``. All NaN/None with a ``reason`` when n < 3 or SD = 0.
    """

    ad: float = NAN
    ad_adjusted: float = NAN
    p_value: float = NAN
    normal: bool | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; null where the test is undefined."""
        return {
            "ad": _num(self.ad),
            "ad_adjusted": _num(self.ad_adjusted),
            "p_value": _num(self.p_value),
            "normal": self.normal,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DistributionFit:
    """One fitted distribution and the ISO 22514-2 percentile indices it gives.

    ``parameters`` are (name, value) pairs: normal (mean, sd), lognormal
    (mu, sigma) of ln x, weibull (shape, scale), gamma (shape, scale); the
    ``…3`` variants add ``threshold`` (the distribution is of x − threshold).
    ``ad`` is the Anderson–Darling A² of the observations against the fitted,
    fully specified distribution (smaller is better).
    """

    distribution: str
    parameters: tuple[tuple[str, float], ...]
    ad: float
    Pp: float = NAN
    Ppl: float = NAN
    Ppu: float = NAN
    Ppk: float = NAN
    expected_ppm_outside: float = NAN

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; null where an index is undefined."""
        return {
            "distribution": self.distribution,
            "parameters": {k: _num(v) for k, v in self.parameters},
            "ad": _num(self.ad),
            "Pp": _num(self.Pp),
            "Ppl": _num(self.Ppl),
            "Ppu": _num(self.Ppu),
            "Ppk": _num(self.Ppk),
            "expected_ppm_outside": _num(self.expected_ppm_outside),
        }


@dataclass(frozen=True)
class PercentileCapability:
    """ISO 22514-2 percentile method on the best-fitting distribution (smallest A²).

    Pp = (USL−LSL)/(X₀.₉₉₈₆₅ − X₀.₀₀₁₃₅), Ppu = (USL − X₀.₅)/(X₀.₉₉₈₆₅ − X₀.₅),
    Ppl = (X₀.₅ − LSL)/(X₀.₅ − X₀.₀₀₁₃₅), Ppk = the smaller of those defined;
    expected ppm from the fitted distribution. ``fits`` lists every
    successful fit in a fixed order, ``skipped`` the others with a reason.
    """

    applicable: bool
    reason: str | None = None
    best: DistributionFit | None = None
    fits: tuple[DistributionFit, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; the best fit's indices at top level."""
        best = self.best.to_json() if self.best is not None else {}
        return {
            "applicable": self.applicable,
            "reason": self.reason,
            "distribution": best.get("distribution"),
            "parameters": best.get("parameters"),
            "Pp": best.get("Pp"),
            "Ppl": best.get("Ppl"),
            "Ppu": best.get("Ppu"),
            "Ppk": best.get("Ppk"),
            "expected_ppm_outside": best.get("expected_ppm_outside"),
            "fits": [f.to_json() for f in self.fits],
            "skipped": [{"distribution": d, "reason": r} for d, r in self.skipped],
        }


@dataclass(frozen=True)
class BoxCoxCapability:
    """Overall (P) indices on the Box-Cox scale y = (x^λ − 1)/λ (ln x for λ = 0).

    λ maximises the normal profile likelihood (``scipy.stats.boxcox_normmax``,
    ``method="mle"``). This form of the transform is increasing for every λ,
    so the limits keep their roles; were a transformed LSL to exceed the
    transformed USL they would be swapped. A limit ≤ 0 cannot be transformed:
    an LSL ≤ 0 is dropped (no positive value lies below it, see ``note``), a
    USL ≤ 0 makes the method not applicable. Only P indices are given: the
    chart's within σ̂ has no counterpart on the transformed scale.
    ``mean`` and ``sigma`` are the mean and SD (n−1) of the transformed data.
    """

    applicable: bool
    reason: str | None = None
    lmbda: float = NAN
    lsl: float = NAN
    usl: float = NAN
    mean: float = NAN
    sigma: float = NAN
    Pp: float = NAN
    Ppl: float = NAN
    Ppu: float = NAN
    Ppk: float = NAN
    expected_ppm_outside: float = NAN
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; ``lambda`` is λ, ``lsl``/``usl`` transformed limits."""
        return {
            "applicable": self.applicable,
            "reason": self.reason,
            "lambda": _num(self.lmbda),
            "lsl": _num(self.lsl),
            "usl": _num(self.usl),
            "mean": _num(self.mean),
            "sigma": _num(self.sigma),
            "Pp": _num(self.Pp),
            "Ppl": _num(self.Ppl),
            "Ppu": _num(self.Ppu),
            "Ppk": _num(self.Ppk),
            "expected_ppm_outside": _num(self.expected_ppm_outside),
            "note": self.note,
        }


_INDEX_KEYS = ("Cp", "Cpl", "Cpu", "Cpk", "Cpm", "Pp", "Ppl", "Ppu", "Ppk")


@dataclass(frozen=True)
class CapabilityReport:
    """Everything ``capability`` computes; ``to_json()`` is the response's ``capability``.

    ``center`` is μ̂ (the chart centre, used by every index), ``mean`` the
    sample mean of the observations. ``expected_ppm_outside`` uses σ_w (the
    contract's definition), ``expected_ppm_outside_overall`` the same with
    σ_o. ``notes`` maps a key (``Cp``, ``Ppk``, ``expected_ppm_outside`` …)
    to the reason it is null or has no interval.
    """

    n: int
    mean: float
    center: float
    lsl: float | None
    usl: float | None
    target: float | None
    confidence: float
    sigma_within: float
    sigma_overall: float
    Cp: CapabilityIndex
    Cpl: CapabilityIndex
    Cpu: CapabilityIndex
    Cpk: CapabilityIndex
    Cpm: CapabilityIndex
    Pp: CapabilityIndex
    Ppl: CapabilityIndex
    Ppu: CapabilityIndex
    Ppk: CapabilityIndex
    expected_ppm_outside: float
    expected_ppm_outside_overall: float
    observed_ppm_outside: float
    normality: Normality
    box_cox: BoxCoxCapability | None
    percentile: PercentileCapability | None
    stable: bool | None
    warning: str | None
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The contract's keys at top level plus the extras; never NaN or infinity."""
        out: dict[str, Any] = {k: getattr(self, k).to_json() for k in _INDEX_KEYS}
        out.update(
            {
                "sigma_within": _num(self.sigma_within),
                "sigma_overall": _num(self.sigma_overall),
                "expected_ppm_outside": _num(self.expected_ppm_outside),
                "observed_ppm_outside": _num(self.observed_ppm_outside),
                "expected_ppm_outside_overall": _num(self.expected_ppm_outside_overall),
                "n": int(self.n),
                "mean": _num(self.mean),
                "center": _num(self.center),
                "lsl": _num(self.lsl),
                "usl": _num(self.usl),
                "target": _num(self.target),
                "confidence": float(self.confidence),
                "normality": self.normality.to_json(),
                "non_normal": {
                    "box_cox": None if self.box_cox is None else self.box_cox.to_json(),
                    "percentile": None if self.percentile is None else self.percentile.to_json(),
                },
                "stable": self.stable,
                "warning": self.warning,
                "notes": dict(self.notes),
            }
        )
        return out


# ---------------------------------------------------------------------------
# Anderson–Darling


def _mean_sd(x: np.ndarray, ddof: int = 1) -> tuple[float, float]:
    """Mean and SD (NaN when undefined), overflow-safe near the float limit.

    The data are divided by a power of two near max|x|: exact, so the result is
    bit-identical to ``np.mean``/``np.std`` wherever those do not overflow.
    """
    if not x.size:
        return NAN, NAN
    maxabs = float(np.max(np.abs(x)))
    scale = math.ldexp(1.0, math.frexp(maxabs)[1]) if maxabs > 0.0 else 1.0
    u = x / scale
    if x.size <= ddof:
        sd = NAN
    elif float(np.ptp(u)) == 0.0:
        sd = 0.0  # constant data: exactly 0, not the rounding noise of the mean
    else:
        sd = scale * float(np.std(u, ddof=ddof))
    return scale * float(np.mean(u)), sd


def _ad_statistic(log_cdf: np.ndarray, log_sf: np.ndarray) -> float:
    """A² = −n − (1/n) Σ (2i−1)[ln F(x₍ᵢ₎) + ln(1 − F(x₍ₙ₊₁₋ᵢ₎))] from sorted-x logs."""
    n = log_cdf.shape[0]
    i = np.arange(1, n + 1, dtype=float)
    s = np.sum((2.0 * i - 1.0) * (log_cdf + log_sf[::-1]))
    a2 = -n - s / n
    return float(a2) if math.isfinite(a2) else math.inf


def anderson_darling_pvalue(ad_adjusted: float) -> float:
    """p-value of the adjusted statistic A*² by D'Agostino & Stephens (1986).

    The piecewise formula Minitab uses for the normal case with estimated mean
    and SD (breaks at 0.2, 0.34, 0.6). The top branch has its minimum at
    A*² ≈ 153.5 (p ≈ 1e-190); the statistic is held there so p never rises
    again (statsmodels instead returns 0 above 13, where p < 1e-30 anyway).
    The result is clipped to [0, 1].
    """
    a = float(ad_adjusted)
    if not math.isfinite(a):
        return 0.0 if a > 0 else NAN
    if a >= 0.6:
        a = min(a, 5.709 / (2 * 0.0186))
        p = math.exp(1.2937 - 5.709 * a + 0.0186 * a * a)
    elif a >= 0.34:
        p = math.exp(0.9177 - 4.279 * a - 1.38 * a * a)
    elif a >= 0.2:
        p = 1.0 - math.exp(-8.318 + 42.796 * a - 59.938 * a * a)
    else:
        p = 1.0 - math.exp(-13.436 + 101.14 * a - 223.73 * a * a)
    return min(1.0, max(0.0, p))


def anderson_darling_normal(observations: np.ndarray) -> Normality:
    """Anderson–Darling test of normality with mean and SD (n−1) estimated from the data.

    A² agrees with ``scipy.stats.anderson(x, "norm")``; A*² and the p-value
    follow D'Agostino & Stephens (1986). Missing values (NaN) are dropped.
    Needs n ≥ 3 and a non-zero SD, else every field is undefined with a reason.
    """
    x = np.asarray(observations, dtype=float).ravel()
    x = np.sort(x[~np.isnan(x)])
    n = x.shape[0]
    if n < 3:
        return Normality(reason=f"needs at least 3 observations, got {n}")
    m, sd = _mean_sd(x)
    if not sd > 0.0:
        return Normality(reason="all observations are equal (SD = 0)")
    z = (x - m) / sd
    a2 = _ad_statistic(special.log_ndtr(z), special.log_ndtr(-z))
    a2_adj = a2 * (1.0 + 0.75 / n + 2.25 / (n * n))
    p = anderson_darling_pvalue(a2_adj)
    return Normality(ad=a2, ad_adjusted=a2_adj, p_value=p, normal=bool(p >= NORMAL_P_THRESHOLD))


# ---------------------------------------------------------------------------
# confidence intervals (contracts/analyze.md, Capability)


def _chisq_interval(c: float, df: float, alpha: float) -> tuple[float, float]:
    """Ĉ·√(χ²_{α/2;df}/df) to Ĉ·√(χ²_{1−α/2;df}/df)."""
    if not (math.isfinite(c) and df > 0):
        return NAN, NAN
    lo = c * math.sqrt(stats.chi2.ppf(alpha / 2.0, df) / df)
    hi = c * math.sqrt(stats.chi2.ppf(1.0 - alpha / 2.0, df) / df)
    return lo, hi


def _bissell_interval(c: float, n: int, z: float) -> tuple[float, float]:
    """Ĉ·(1 ∓ z·√(1/(9nĈ²) + 1/(2(n−1)))), written as Ĉ ∓ z·√(1/(9n) + Ĉ²/(2(n−1))).

    The two forms are equal for every Ĉ ≠ 0 (for Ĉ < 0 the contract's pair comes
    out in the other order; the interval is reported lower ≤ upper). At Ĉ = 0 the
    contract's product is 0·∞; the second form gives its limit, ±z/(3√n), so the
    interval is continuous in Ĉ. NaN for n < 2.
    """
    if not math.isfinite(c) or n < 2:
        return NAN, NAN
    half = z * math.hypot(1.0 / (3.0 * math.sqrt(n)), c / math.sqrt(2.0 * (n - 1)))
    return c - half, c + half


def _ratio(num: float, den: float) -> float:
    """num/den, NaN when den is 0 or not finite (no infinity ever leaves this module)."""
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0.0:
        return NAN
    r = num / den
    return r if math.isfinite(r) else NAN


def _min_defined(*values: float) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return min(vals) if vals else NAN


def _normal_ppm(mu: float, sigma: float, lsl: float | None, usl: float | None) -> float:
    """10⁶·(Φ((LSL−μ)/σ) + 1 − Φ((USL−μ)/σ)), a missing limit adding 0; σ = 0 → the limit."""
    if not (math.isfinite(mu) and math.isfinite(sigma)) or sigma < 0.0:
        return NAN
    total = 0.0
    if sigma == 0.0:
        if lsl is not None:
            total += 1.0 if mu < lsl else (0.5 if mu == lsl else 0.0)
        if usl is not None:
            total += 1.0 if mu > usl else (0.5 if mu == usl else 0.0)
        return 1e6 * total
    if lsl is not None:
        total += float(special.ndtr((lsl - mu) / sigma))
    if usl is not None:
        total += float(special.ndtr((mu - usl) / sigma))  # 1 − Φ(t) = Φ(−t), no cancellation
    return 1e6 * total


@dataclass(frozen=True)
class _IndexFamily:
    p: CapabilityIndex  # Cp / Pp
    lower: CapabilityIndex  # Cpl / Ppl
    upper: CapabilityIndex  # Cpu / Ppu
    k: CapabilityIndex  # Cpk / Ppk


def _family(
    mu: float, sigma: float, lsl: float | None, usl: float | None, n: int, alpha: float
) -> _IndexFamily:
    """Cp, Cpl, Cpu, Cpk (or the P family) and their intervals for one σ."""
    two = lsl is not None and usl is not None
    cp = _ratio(usl - lsl, 6.0 * sigma) if two else NAN  # type: ignore[operator]
    cpl = _ratio(mu - lsl, 3.0 * sigma) if lsl is not None else NAN
    cpu = _ratio(usl - mu, 3.0 * sigma) if usl is not None else NAN
    cpk = _min_defined(cpl, cpu)
    z1 = float(stats.norm.ppf(1.0 - alpha))
    z2 = float(stats.norm.ppf(1.0 - alpha / 2.0))
    return _IndexFamily(
        p=CapabilityIndex(cp, *(_chisq_interval(cp, n - 1, alpha) if n >= 2 else (NAN, NAN))),
        lower=CapabilityIndex(cpl, *_bissell_interval(cpl, n, z1)),
        upper=CapabilityIndex(cpu, *_bissell_interval(cpu, n, z1)),
        k=CapabilityIndex(cpk, *_bissell_interval(cpk, n, z2)),
    )


# ---------------------------------------------------------------------------
# distribution fits for the percentile method

_Frozen = Any  # a frozen scipy.stats distribution
_Params = tuple[tuple[str, float], ...]  # (name, value) pairs as reported


def _fit_normal(x: np.ndarray) -> tuple[_Params, _Frozen]:
    # SD with n−1 (not the MLE): the same σ_o as Pp, so a normal fit reproduces Pp.
    m, s = _mean_sd(x)
    return (("mean", m), ("sd", s)), stats.norm(loc=m, scale=s)


def _lognormal_mle(y: np.ndarray) -> tuple[float, float]:
    ly = np.log(y)
    return float(np.mean(ly)), float(np.std(ly))


def _weibull_mle(y: np.ndarray) -> tuple[float, float]:
    """Shape k solves Σxᵏ ln x / Σxᵏ − 1/k − mean(ln x) = 0 (increasing in k); scale closed form."""
    ly = np.log(y)
    u = ly - ly.max()  # xᵏ ∝ exp(k·u): no overflow
    mean_ly = float(np.mean(ly))

    def g(k: float) -> float:
        w = np.exp(k * u)
        return float(np.dot(w, ly) / np.sum(w)) - 1.0 / k - mean_ly

    lo, hi = 0.01, 1.0
    while g(hi) < 0.0:
        hi *= 4.0
        if hi > 1e7:
            raise ArithmeticError("Weibull shape diverges (data nearly constant)")
    while g(lo) > 0.0:
        lo /= 4.0
        if lo < 1e-9:
            raise ArithmeticError("Weibull shape does not converge")
    k = optimize.brentq(g, lo, hi, xtol=1e-12, rtol=1e-12)
    scale = math.exp(ly.max()) * float(np.mean(np.exp(k * u))) ** (1.0 / k)
    return k, scale


def _gamma_mle(y: np.ndarray) -> tuple[float, float]:
    """Shape a solves ln a − ψ(a) = ln(mean) − mean(ln x) (decreasing in a); scale = mean/a."""
    m = float(np.mean(y))
    s = math.log(m) - float(np.mean(np.log(y)))
    if not (s > 0.0 and math.isfinite(s)):
        raise ArithmeticError("gamma shape diverges (data nearly constant)")
    a0 = (3.0 - s + math.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)  # Minka's start

    def h(a: float) -> float:
        return math.log(a) - float(special.digamma(a)) - s

    lo, hi = a0 / 2.0, a0 * 2.0
    while h(lo) < 0.0:
        lo /= 4.0
        if lo < 1e-300:
            raise ArithmeticError("gamma shape does not converge")
    while h(hi) > 0.0:
        hi *= 4.0
        if hi > 1e12:
            raise ArithmeticError("gamma shape diverges")
    a = optimize.brentq(h, lo, hi, xtol=1e-14, rtol=1e-12)
    return a, m / a


@dataclass(frozen=True)
class _Family:
    """A 2-parameter family on (0, ∞): MLE, closed-form log-likelihood, scipy distribution."""

    mle: Callable[[np.ndarray], tuple[float, float]]
    loglik: Callable[[np.ndarray, float, float], float]
    names: tuple[str, str]
    frozen: Callable[[float, float, float], _Frozen]

    def fit(self, y: np.ndarray) -> tuple[float, float]:
        a, b = self.mle(y)
        if not (a > 0.0 and b > 0.0 and math.isfinite(a) and math.isfinite(b)):
            raise ArithmeticError("degenerate fit (data nearly constant)")
        return a, b


def _lognormal_median_sigma(y: np.ndarray) -> tuple[float, float]:
    """(e^μ, σ): the median instead of μ, so that both parameters are positive like the others."""
    mu, sigma = _lognormal_mle(y)
    return math.exp(mu), sigma


def _lognormal_loglik(y: np.ndarray, m: float, sigma: float) -> float:
    ly = np.log(y)
    r = (ly - math.log(m)) / sigma
    n = y.shape[0]
    return float(-np.sum(ly) - n * math.log(sigma * math.sqrt(2.0 * math.pi)) - 0.5 * np.dot(r, r))


def _weibull_loglik(y: np.ndarray, k: float, scale: float) -> float:
    lz = np.log(y) - math.log(scale)
    n = y.shape[0]
    return float(
        n * (math.log(k) - math.log(scale)) + (k - 1.0) * np.sum(lz) - np.sum(np.exp(k * lz))
    )


def _gamma_loglik(y: np.ndarray, a: float, scale: float) -> float:
    n = y.shape[0]
    return float(
        (a - 1.0) * np.sum(np.log(y))
        - np.sum(y) / scale
        - n * (a * math.log(scale) + float(special.gammaln(a)))
    )


_FAMILIES: dict[str, _Family] = {
    "lognormal": _Family(
        _lognormal_median_sigma,
        _lognormal_loglik,
        ("mu", "sigma"),
        lambda m, sigma, loc: stats.lognorm(s=sigma, loc=loc, scale=m),
    ),
    "weibull": _Family(
        _weibull_mle,
        _weibull_loglik,
        ("shape", "scale"),
        lambda k, scale, loc: stats.weibull_min(c=k, loc=loc, scale=scale),
    ),
    "gamma": _Family(
        _gamma_mle,
        _gamma_loglik,
        ("shape", "scale"),
        lambda a, scale, loc: stats.gamma(a=a, loc=loc, scale=scale),
    ),
}


def _report_params(name: str, a: float, b: float) -> _Params:
    fam = _FAMILIES[name]
    if name == "lognormal":
        return (("mu", math.log(a)), ("sigma", b))
    return ((fam.names[0], a), (fam.names[1], b))


def _fit_two(x: np.ndarray, name: str) -> tuple[_Params, _Frozen]:
    fam = _FAMILIES[name]
    a, b = fam.fit(x)
    return _report_params(name, a, b), fam.frozen(a, b, 0.0)


# Threshold search for the 3-parameter variants: θ = min(x) − range·e^t on a fixed grid of t.
_HUGE = 1e300  # the objective's value where the likelihood does not exist
_T_GRID = np.linspace(math.log(1e-3), math.log(10.0), 41)


def _fit_threshold(x: np.ndarray, name: str) -> tuple[_Params, _Frozen]:
    """3-parameter fit by profile likelihood over the threshold θ < min(x).

    The likelihood of these families is unbounded as θ → min(x) (shape < 1),
    so the estimate is the highest *interior local* maximum of the profile on
    a fixed log-spaced grid, refined by bounded Brent between its neighbours.
    No interior maximum (the profile rises toward either end) means the
    3-parameter model adds nothing robust: the fit is skipped.
    """
    fam = _FAMILIES[name]
    xmin = float(x.min())
    rng = float(x.max()) - xmin

    def neg_profile(t: float) -> float:
        y = x - (xmin - rng * math.exp(t))
        try:
            a, b = fam.fit(y)
            ll = fam.loglik(y, a, b)
        except (ArithmeticError, ValueError, RuntimeError):
            return _HUGE
        # a finite sentinel: bounded Brent computes differences of these values (inf − inf)
        return -ll if math.isfinite(ll) else _HUGE

    prof = np.array([neg_profile(float(t)) for t in _T_GRID])
    interior = [
        i
        for i in range(1, len(_T_GRID) - 1)
        if prof[i] < _HUGE and prof[i] <= prof[i - 1] and prof[i] <= prof[i + 1]
    ]
    if not interior:
        raise ArithmeticError("no interior maximum of the threshold likelihood")
    i = min(interior, key=lambda j: prof[j])
    res = optimize.minimize_scalar(
        neg_profile,
        bounds=(float(_T_GRID[i - 1]), float(_T_GRID[i + 1])),
        method="bounded",
        options={"xatol": 1e-9},
    )
    t = float(res.x) if res.fun <= prof[i] else float(_T_GRID[i])
    theta = xmin - rng * math.exp(t)
    a, b = fam.fit(x - theta)
    return (*_report_params(name, a, b), ("threshold", theta)), fam.frozen(a, b, theta)


def _percentile_fit(
    name: str,
    params: tuple[tuple[str, float], ...],
    dist: _Frozen,
    x: np.ndarray,
    lsl: float | None,
    usl: float | None,
) -> DistributionFit:
    """The A² of x against ``dist`` and the ISO 22514-2 percentile indices."""
    xs = np.sort(x)
    with np.errstate(divide="ignore"):
        ad = _ad_statistic(dist.logcdf(xs), dist.logsf(xs))
    q_lo, q_med, q_hi = (float(q) for q in dist.ppf([P_LOW, 0.5, P_HIGH]))
    pp = _ratio(usl - lsl, q_hi - q_lo) if lsl is not None and usl is not None else NAN
    ppl = _ratio(q_med - lsl, q_med - q_lo) if lsl is not None else NAN
    ppu = _ratio(usl - q_med, q_hi - q_med) if usl is not None else NAN
    ppm = 0.0
    if lsl is not None:
        ppm += float(dist.cdf(lsl))
    if usl is not None:
        ppm += float(dist.sf(usl))
    return DistributionFit(
        distribution=name,
        parameters=tuple((k, float(v)) for k, v in params),
        ad=ad,
        Pp=pp,
        Ppl=ppl,
        Ppu=ppu,
        Ppk=_min_defined(ppl, ppu),
        expected_ppm_outside=1e6 * ppm,
    )


def _percentile(x: np.ndarray, lsl: float | None, usl: float | None) -> PercentileCapability:
    """Fit every candidate distribution, keep the one with the smallest A²."""
    if x.shape[0] < 3:
        return PercentileCapability(False, f"needs at least 3 observations, got {x.shape[0]}")
    if not float(np.ptp(x)) > 0.0:
        return PercentileCapability(False, "all observations are equal (SD = 0)")
    fits: list[DistributionFit] = []
    skipped: list[tuple[str, str]] = []
    positive = bool(np.all(x > 0.0))
    candidates: list[tuple[str, Callable[[], tuple[_Params, _Frozen]]]] = [
        ("normal", lambda: _fit_normal(x))
    ]
    for name in _FAMILIES:
        candidates.append((name, (lambda nm=name: _fit_two(x, nm))))
    for name in _FAMILIES:
        candidates.append((name + "3", (lambda nm=name: _fit_threshold(x, nm))))
    for name, make in candidates:
        if name in _FAMILIES and not positive:
            skipped.append((name, "needs all observations > 0"))
            continue
        try:
            params, dist = make()
            fit = _percentile_fit(name, params, dist, x, lsl, usl)
        except (ArithmeticError, ValueError, RuntimeError) as exc:
            skipped.append((name, str(exc) or type(exc).__name__))
            continue
        fits.append(fit)
    if not fits:
        return PercentileCapability(
            False, "no distribution could be fitted", skipped=tuple(skipped)
        )
    best = min(fits, key=lambda f: f.ad)  # first in the fixed order on a tie
    return PercentileCapability(True, None, best, tuple(fits), tuple(skipped))


def _finite_objective(v: float) -> float:
    v = float(v)
    return v if math.isfinite(v) else _HUGE


def _box_cox(x: np.ndarray, lsl: float | None, usl: float | None) -> BoxCoxCapability:
    """Box-Cox with λ by maximum likelihood, then P indices on the transformed scale."""
    if x.shape[0] < 3:
        return BoxCoxCapability(False, f"needs at least 3 observations, got {x.shape[0]}")
    if not bool(np.all(x > 0.0)):
        return BoxCoxCapability(False, "needs all observations > 0")
    if not float(np.ptp(x)) > 0.0:
        return BoxCoxCapability(False, "all observations are equal (SD = 0)")
    if usl is not None and usl <= 0.0:
        return BoxCoxCapability(False, "USL ≤ 0 cannot be transformed")
    note = None
    if lsl is not None and lsl <= 0.0:
        note = "LSL ≤ 0 cannot be transformed and no positive value lies below it: dropped"
        lsl = None
    if lsl is None and usl is None:
        return BoxCoxCapability(False, "no specification limit left to transform", note=note)
    # λ is searched in [−5, 5] (Minitab's range): data far from 0 with a small spread have a
    # flat likelihood whose unbounded optimum runs off to |λ| in the hundreds (and overflows).
    lmbda = float(
        stats.boxcox_normmax(
            x,
            method="mle",
            optimizer=lambda f: optimize.minimize_scalar(
                lambda lm: _finite_objective(f(lm)),
                bounds=(-LAMBDA_MAX, LAMBDA_MAX),
                method="bounded",
                options={"xatol": 1e-8},
            ),
            ymax=math.inf,
        )
    )
    if not math.isfinite(float(stats.boxcox_llf(lmbda, x))):
        return BoxCoxCapability(
            False, "degenerate likelihood (spread below floating-point resolution)", note=note
        )
    if abs(lmbda) > LAMBDA_MAX - 1e-6:
        edge = f"λ is at the bound ±{LAMBDA_MAX:g} of the search (flat or monotone likelihood)"
        note = edge if note is None else f"{note}; {edge}"
    with np.errstate(over="ignore"):
        y = special.boxcox(x, lmbda)
        t_lsl = float(special.boxcox(lsl, lmbda)) if lsl is not None else None
        t_usl = float(special.boxcox(usl, lmbda)) if usl is not None else None
    if not (
        np.all(np.isfinite(y))
        and (t_lsl is None or math.isfinite(t_lsl))
        and (t_usl is None or math.isfinite(t_usl))
    ):
        return BoxCoxCapability(False, "transformed values overflow", lmbda=lmbda, note=note)
    if t_lsl is not None and t_usl is not None and t_lsl > t_usl:
        t_lsl, t_usl = t_usl, t_lsl  # a decreasing transform swaps the limits' roles
    m, s = float(np.mean(y)), float(np.std(y, ddof=1))
    two = t_lsl is not None and t_usl is not None
    pp = _ratio(t_usl - t_lsl, 6.0 * s) if two else NAN  # type: ignore[operator]
    ppl = _ratio(m - t_lsl, 3.0 * s) if t_lsl is not None else NAN
    ppu = _ratio(t_usl - m, 3.0 * s) if t_usl is not None else NAN
    return BoxCoxCapability(
        True,
        None,
        lmbda=lmbda,
        lsl=NAN if t_lsl is None else t_lsl,
        usl=NAN if t_usl is None else t_usl,
        mean=m,
        sigma=s,
        Pp=pp,
        Ppl=ppl,
        Ppu=ppu,
        Ppk=_min_defined(ppl, ppu),
        expected_ppm_outside=_normal_ppm(m, s, t_lsl, t_usl),
        note=note,
    )


# ---------------------------------------------------------------------------
# validation and the entry point


def _finite_or_none(value: float | None, path: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SpcInputError(path, "must be a number") from None
    if not math.isfinite(v):
        raise SpcInputError(path, "must be a finite number")
    return v


def capability(
    observations: Any,
    *,
    center: float,
    sigma_within: float,
    lsl: float | None = None,
    usl: float | None = None,
    target: float | None = None,
    confidence: float = 0.95,
    in_control: bool | None = None,
    non_normal: bool = True,
) -> CapabilityReport:
    """Capability indices of the Phase I ``observations`` against ``lsl``/``usl``.

    ``center`` is the chart centre μ̂ and ``sigma_within`` the chart's σ̂ σ_w
    (both from the analyze layer); σ_o is the sample SD of the observations
    (n−1, no c4). NaN observations are missing and dropped; n counts the
    rest. Formulas, intervals and ppm follow ``contracts/analyze.md``
    (Capability) exactly, always with 6σ/3σ. ``target`` defaults to the spec
    midpoint; one-sided specs make Cp, Pp and Cpm undefined. ``in_control``
    (did the Phase I chart show no violations?) sets ``stable`` and, when
    False, ``warning``; the indices are computed regardless. ``non_normal``
    False skips the Box-Cox and percentile analyses (then None).

    Raises ``SpcInputError`` for both limits missing, LSL ≥ USL, a non-finite
    limit/target/centre, a negative or infinite ``sigma_within``, a
    ``confidence`` outside (0, 1) or an infinite observation. A NaN
    ``sigma_within`` means "no σ̂": the C indices are then null.
    """
    lsl_v = _finite_or_none(lsl, "capability.lsl")
    usl_v = _finite_or_none(usl, "capability.usl")
    target_v = _finite_or_none(target, "capability.target")
    if lsl_v is None and usl_v is None:
        raise SpcInputError("capability", "at least one of lsl, usl is required")
    if lsl_v is not None and usl_v is not None and lsl_v >= usl_v:
        raise SpcInputError("capability.lsl", f"LSL ({lsl_v:g}) must be below USL ({usl_v:g})")
    try:
        conf = float(confidence)
    except (TypeError, ValueError):
        raise SpcInputError("capability.confidence", "must be a number") from None
    if not 0.0 < conf < 1.0:
        raise SpcInputError("capability.confidence", "must be strictly between 0 and 1")
    mu = _finite_or_none(center, "capability.center")
    if mu is None:
        raise SpcInputError("capability.center", "must be a finite number")
    try:
        sw = float(NAN if sigma_within is None else sigma_within)
    except (TypeError, ValueError):
        raise SpcInputError("capability.sigma_within", "must be a number") from None
    if math.isinf(sw) or sw < 0.0:
        raise SpcInputError("capability.sigma_within", "must be a finite number ≥ 0")
    if in_control is not None and not isinstance(in_control, bool | np.bool_):
        raise SpcInputError("capability.in_control", "must be true, false or null")
    try:
        x = np.asarray(observations, dtype=float)
    except (TypeError, ValueError):
        raise SpcInputError("capability.observations", "must be numbers") from None
    if x.ndim != 1:
        raise SpcInputError("capability.observations", "must be a 1-D sequence")
    if np.isinf(x).any():
        raise SpcInputError("capability.observations", "infinite values are not allowed")
    x = x[~np.isnan(x)]
    n = int(x.shape[0])
    alpha = 1.0 - conf
    notes: dict[str, str] = {}

    two = lsl_v is not None and usl_v is not None
    if target_v is None and two:
        target_v = 0.5 * (lsl_v + usl_v)  # type: ignore[operator]
    mean, so = _mean_sd(x)

    within = _family(mu, sw, lsl_v, usl_v, n, alpha)
    overall = _family(mu, so, lsl_v, usl_v, n, alpha)

    # Cpm = Cp/√(1+d²), d = (μ̂−T)/σ_w; interval: the Cp form with ν = n(1+d²)/(1+2d²).
    cpm = CapabilityIndex()
    if two and math.isfinite(within.p.value):
        d = (mu - target_v) / sw  # type: ignore[operator]
        cpm_v = within.p.value / math.sqrt(1.0 + d * d)
        nu = n * (1.0 + d * d) / (1.0 + 2.0 * d * d)
        cpm = CapabilityIndex(cpm_v, *(_chisq_interval(cpm_v, nu, alpha) if n >= 2 else (NAN, NAN)))

    if not two:
        for k in ("Cp", "Pp", "Cpm"):
            notes[k] = "one-sided specification: undefined"
    if math.isnan(sw):
        notes["sigma_within"] = "no within σ̂ was given: C indices undefined"
    elif sw == 0.0:
        notes["sigma_within"] = "σ_w = 0: C indices undefined (division by zero)"
    if n < 2:
        notes["sigma_overall"] = f"needs at least 2 observations, got {n}: P indices undefined"
        notes["intervals"] = f"needs at least 2 observations, got {n}: intervals undefined"
    elif so == 0.0:
        notes["sigma_overall"] = "all observations are equal (σ_o = 0): P indices undefined"

    if n:
        outside = 0
        if lsl_v is not None:
            outside += int(np.count_nonzero(x < lsl_v))
        if usl_v is not None:
            outside += int(np.count_nonzero(x > usl_v))
        observed_ppm = 1e6 * outside / n
    else:
        observed_ppm = NAN
        notes["observed_ppm_outside"] = "no observations"
    expected_ppm = _normal_ppm(mu, sw, lsl_v, usl_v)
    if math.isnan(expected_ppm):
        notes["expected_ppm_outside"] = "no within σ̂"

    # Data near the float limits (|x| ~ 1e300, spreads below the resolution of the values)
    # overflow inside scipy's fits; what overflows comes out non-finite and is reported null.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        normality = anderson_darling_normal(x)
        box_cox = _box_cox(x, lsl_v, usl_v) if non_normal else None
        percentile = _percentile(x, lsl_v, usl_v) if non_normal else None

    stable = None if in_control is None else bool(in_control)
    return CapabilityReport(
        n=n,
        mean=mean,
        center=mu,
        lsl=lsl_v,
        usl=usl_v,
        target=target_v,
        confidence=conf,
        sigma_within=sw,
        sigma_overall=so,
        Cp=within.p,
        Cpl=within.lower,
        Cpu=within.upper,
        Cpk=within.k,
        Cpm=cpm,
        Pp=overall.p,
        Ppl=overall.lower,
        Ppu=overall.upper,
        Ppk=overall.k,
        expected_ppm_outside=expected_ppm,
        expected_ppm_outside_overall=_normal_ppm(mu, so, lsl_v, usl_v),
        observed_ppm_outside=observed_ppm,
        normality=normality,
        box_cox=box_cox,
        percentile=percentile,
        stable=stable,
        warning=UNSTABLE_WARNING if stable is False else None,
        notes=notes,
    )
