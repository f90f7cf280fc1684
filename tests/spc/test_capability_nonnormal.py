"""Normality test and non-normal capability (Box-Cox, ISO 22514-2 percentile method).

Sources of expected values:

* **scipy**: ``scipy.stats.anderson(x, "norm")`` computes the same A² (mean
  and SD with n−1 estimated); its normal-case critical values are
  0.561, 0.631, 0.752, 0.873, 1.035 (15, 10, 5, 2.5, 1 %, from Stephens'
  papers cited in scipy's docstring) divided by (1 + 0.75/n + 2.25/n²), so at
  the 5 % value A*² = 0.752 and the p-value must be ≈ 0.05.
  ``scipy.stats.boxcox`` gives the maximum-likelihood λ;
  ``scipy.stats.{weibull_min,gamma}.fit`` give reference likelihoods.
* **coefficient check**: the D'Agostino & Stephens (1986) coefficients
  (1.2937, 5.709, 0.0186; 0.9177, 4.279, 1.38; 8.318, 42.796, 59.938;
  13.436, 101.14, 223.73) are those in statsmodels' ``normal_ad`` and many
  other public implementations.
* **hand-derived**: formulas written out step by step in the test.
* **closed form**: e.g. the log of exactly normal quantiles is exactly normal.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from spc.capability import (
    P_HIGH,
    P_LOW,
    anderson_darling_normal,
    anderson_darling_pvalue,
    capability,
)

N = 200
PLOT = (np.arange(1, N + 1) - 0.5) / N
Z = stats.norm.ppf(PLOT)  # exactly normal "data": the normal quantiles at plotting positions


def _fit(report, name):
    return next(f for f in report.percentile.fits if f.distribution == name)


# ---------------------------------------------------------------------------
# Anderson–Darling


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("n", [8, 30, 250])
def test_ad_statistic_matches_scipy(seed, n):
    """Source: scipy.stats.anderson(x, 'norm') — same A² definition."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(3.0, 2.0, n)
    ref = stats.anderson(x, "norm", method="interpolate").statistic
    got = anderson_darling_normal(x)
    assert got.ad == pytest.approx(ref, rel=1e-10)
    assert got.ad_adjusted == pytest.approx(ref * (1 + 0.75 / n + 2.25 / n**2), rel=1e-12)


def test_p_value_at_scipys_five_percent_critical_value():
    """Source: scipy's normal-case critical values (5 % entry: A*² = 0.752, rounded to
    3 decimals after dividing by 1 + 0.75/n + 2.25/n²). The D'Agostino-Stephens
    formula there must give p ≈ 0.05; its table points 1 % / 2.5 % / 10 % / 15 %
    are matched to within a few per cent of p (the formula is a smooth fit)."""
    for n in (10, 25, 100, 1000):
        x = np.linspace(-1.0, 1.0, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy critical-value API
            res = stats.anderson(x, "norm")
        if not hasattr(res, "critical_values"):
            pytest.skip("this scipy no longer reports critical values")
        factor = 1 + 0.75 / n + 2.25 / n**2
        for level, crit in zip(res.significance_level, res.critical_values, strict=True):
            p = anderson_darling_pvalue(crit * factor)
            assert p == pytest.approx(level / 100.0, rel=0.04, abs=0.0015), (n, level)
        five = list(res.significance_level).index(5.0)
        p5 = anderson_darling_pvalue(res.critical_values[five] * factor)
        assert p5 == pytest.approx(0.05, abs=0.0015)


def test_p_value_formula_by_hand():
    """Hand-derived: each branch of D'Agostino & Stephens (1986) evaluated directly."""
    cases = {
        0.1: 1 - math.exp(-13.436 + 101.14 * 0.1 - 223.73 * 0.01),
        0.3: 1 - math.exp(-8.318 + 42.796 * 0.3 - 59.938 * 0.09),
        0.5: math.exp(0.9177 - 4.279 * 0.5 - 1.38 * 0.25),
        0.752: math.exp(1.2937 - 5.709 * 0.752 + 0.0186 * 0.752**2),
        3.0: math.exp(1.2937 - 5.709 * 3 + 0.0186 * 9),
    }
    for a, p in cases.items():
        assert anderson_darling_pvalue(a) == pytest.approx(p, rel=1e-12)
    assert anderson_darling_pvalue(0.752) == pytest.approx(0.0503, abs=1e-4)
    # the top branch is held at its minimum: p never rises again for huge A*²
    assert anderson_darling_pvalue(1e6) <= anderson_darling_pvalue(100.0)
    assert 0.0 <= anderson_darling_pvalue(1e6) < 1e-100
    assert anderson_darling_pvalue(0.0) <= 1.0


def test_normal_data_pass_and_skewed_data_fail():
    """Exactly normal quantiles: A² tiny, p ≈ 1; exponential quantiles: clearly rejected."""
    ok = anderson_darling_normal(10 + 2 * Z)
    assert ok.normal is True and ok.p_value > 0.9
    bad = anderson_darling_normal(stats.expon.ppf(PLOT))
    assert bad.normal is False and bad.p_value < 0.001


def test_normality_is_affine_invariant():
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    a = anderson_darling_normal(x)
    b = anderson_darling_normal(1000.0 + 0.01 * x)
    assert b.ad == pytest.approx(a.ad, rel=1e-8)


@pytest.mark.parametrize("x", [[1.0, 2.0], [3.0, 3.0, 3.0, 3.0], []])
def test_normality_undefined_with_reason(x):
    r = anderson_darling_normal(np.array(x))
    assert r.normal is None and math.isnan(r.ad) and r.reason
    assert json.dumps(r.to_json(), allow_nan=False)


def test_report_normality_block():
    r = capability(10 + Z, center=10.0, sigma_within=1.0, lsl=6.0, usl=14.0)
    out = r.to_json()["normality"]
    assert out["normal"] is True
    assert out["ad"] == pytest.approx(stats.anderson(10 + Z, method="interpolate").statistic)


# ---------------------------------------------------------------------------
# Box-Cox


def test_box_cox_lognormal_data_gives_lambda_near_zero():
    """Closed form: ln x is exactly normal, so the Box-Cox likelihood peaks at λ ≈ 0."""
    x = np.exp(1.0 + 0.5 * Z)
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=0.8, usl=12.0)
    bc = r.box_cox
    assert bc.applicable
    assert abs(bc.lmbda) < 1e-3
    assert bc.lmbda == pytest.approx(stats.boxcox(x)[1], abs=1e-4)  # scipy's own MLE


def test_box_cox_indices_by_hand():
    """Hand-derived: transform data and limits with scipy.special.boxcox at the reported λ,
    then Pp/Ppl/Ppu/Ppk with the transformed mean and SD (n−1), and normal ppm."""
    rng = np.random.default_rng(11)
    x = rng.gamma(4.0, 0.5, 80)
    lsl, usl = 0.3, 5.0
    bc = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=lsl, usl=usl).box_cox
    lam = stats.boxcox(x)[1]
    assert bc.lmbda == pytest.approx(lam, abs=1e-5)
    y = special.boxcox(x, bc.lmbda)
    tl, tu = special.boxcox(lsl, bc.lmbda), special.boxcox(usl, bc.lmbda)
    m, s = y.mean(), y.std(ddof=1)
    assert (bc.lsl, bc.usl, bc.mean, bc.sigma) == pytest.approx((tl, tu, m, s), rel=1e-12)
    assert bc.Pp == pytest.approx((tu - tl) / (6 * s), rel=1e-12)
    assert bc.Ppl == pytest.approx((m - tl) / (3 * s), rel=1e-12)
    assert bc.Ppu == pytest.approx((tu - m) / (3 * s), rel=1e-12)
    assert bc.Ppk == min(bc.Ppl, bc.Ppu)
    ppm = 1e6 * (stats.norm.cdf((tl - m) / s) + stats.norm.sf((tu - m) / s))
    assert bc.expected_ppm_outside == pytest.approx(ppm, rel=1e-9)


def test_box_cox_negative_lambda_equals_decreasing_power_with_swapped_limits():
    """Hand-derived: for 1/x-normal data λ < 0. The reported (x^λ − 1)/λ is increasing;
    the plain power x^λ is decreasing and swaps LSL/USL. Both give the same indices."""
    x = 1.0 / (5.0 + 0.6 * Z)
    lsl, usl = 0.13, 0.32
    bc = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=lsl, usl=usl).box_cox
    lam = bc.lmbda
    assert lam < -0.5
    y = x**lam  # decreasing in x
    new_lsl, new_usl = usl**lam, lsl**lam  # the roles swap
    assert new_lsl < new_usl
    m, s = y.mean(), y.std(ddof=1)
    assert bc.Pp == pytest.approx((new_usl - new_lsl) / (6 * s), rel=1e-9)
    assert bc.Ppk == pytest.approx(min(m - new_lsl, new_usl - m) / (3 * s), rel=1e-9)
    # the original LSL side becomes the upper side of x^λ
    assert bc.Ppl == pytest.approx((new_usl - m) / (3 * s), rel=1e-9)


def test_box_cox_not_applicable_cases():
    kw = {"center": 0.0, "sigma_within": 1.0}
    r = capability(Z, lsl=-4.0, usl=4.0, **kw)
    assert not r.box_cox.applicable and "> 0" in r.box_cox.reason
    r = capability(np.exp(Z), lsl=-1.0, usl=0.0, **kw)
    assert not r.box_cox.applicable and "USL" in r.box_cox.reason
    # LSL ≤ 0 is dropped with a note: a one-sided analysis remains
    r = capability(np.exp(Z), lsl=0.0, usl=20.0, **kw)
    assert r.box_cox.applicable and "LSL" in r.box_cox.note
    assert math.isnan(r.box_cox.Pp) and r.box_cox.Ppk == r.box_cox.Ppu
    out = r.to_json()["non_normal"]["box_cox"]
    assert out["lsl"] is None and out["Pp"] is None
    r = capability(np.exp(Z), lsl=-1.0, **kw)
    assert not r.box_cox.applicable


# ---------------------------------------------------------------------------
# ISO 22514-2 percentile method


def test_percentile_on_normal_quantiles_matches_normal_indices():
    """Hand-derived: for the normal fit X_p = x̄ + s·Φ⁻¹(p), so the percentile Pp is
    (USL−LSL)/(2·s·Φ⁻¹(0.99865)) — Pp·3/Φ⁻¹(0.99865), within 1e-5 of the normal Pp."""
    x = 10.0 + Z
    lsl, usl = 6.5, 14.0
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=lsl, usl=usl)
    pct = r.percentile
    assert pct.best.distribution == "normal"
    s = float(np.std(x, ddof=1))
    zq = stats.norm.ppf(P_HIGH)
    assert pct.best.Pp == pytest.approx((usl - lsl) / (2 * s * zq), rel=1e-12)
    for key in ("Pp", "Ppl", "Ppu", "Ppk"):
        assert getattr(pct.best, key) == pytest.approx(getattr(r, key).value, rel=2e-5), key
    assert pct.best.expected_ppm_outside == pytest.approx(r.expected_ppm_outside_overall, rel=1e-9)
    assert pct.best.ad == pytest.approx(r.normality.ad, rel=1e-8)
    assert pct.best.ad == min(f.ad for f in pct.fits)


def test_percentile_lognormal_by_hand():
    """Hand-derived: lognormal MLE μ = mean(ln x), σ = SD(ln x) with n;
    X_p = exp(μ + σΦ⁻¹(p)); ppm = Φ((ln LSL − μ)/σ) + 1 − Φ((ln USL − μ)/σ)."""
    x = np.exp(1.0 + 0.5 * Z)
    lsl, usl = 0.9, 14.0
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=lsl, usl=usl)
    pct = r.percentile
    assert pct.best.distribution == "lognormal"
    mu, sig = np.log(x).mean(), np.log(x).std()
    assert dict(pct.best.parameters) == pytest.approx({"mu": mu, "sigma": sig}, rel=1e-12)
    q_lo, q_med, q_hi = np.exp(mu + sig * stats.norm.ppf([P_LOW, 0.5, P_HIGH]))
    assert pct.best.Pp == pytest.approx((usl - lsl) / (q_hi - q_lo), rel=1e-10)
    assert pct.best.Ppl == pytest.approx((q_med - lsl) / (q_med - q_lo), rel=1e-10)
    assert pct.best.Ppu == pytest.approx((usl - q_med) / (q_hi - q_med), rel=1e-10)
    assert pct.best.Ppk == min(pct.best.Ppl, pct.best.Ppu)
    ppm = 1e6 * (
        stats.norm.cdf((math.log(lsl) - mu) / sig) + stats.norm.sf((math.log(usl) - mu) / sig)
    )
    assert pct.best.expected_ppm_outside == pytest.approx(ppm, rel=1e-9)
    out = r.to_json()["non_normal"]["percentile"]
    assert out["distribution"] == "lognormal"
    assert [f["distribution"] for f in out["fits"]][:4] == [
        "normal",
        "lognormal",
        "weibull",
        "gamma",
    ]


def test_weibull_and_gamma_fits_are_maximum_likelihood():
    """Source: scipy.stats.{weibull_min,gamma}.fit(x, floc=0): our closed-form/root-found
    MLE has at least scipy's log-likelihood and the same parameters to 1e-4."""
    rng = np.random.default_rng(3)
    x = rng.weibull(1.8, 150) * 4.0
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, usl=15.0)
    for name, dist in (("weibull", stats.weibull_min), ("gamma", stats.gamma)):
        ours = dict(_fit(r, name).parameters)
        ref = dist.fit(x, floc=0)
        mine = (ours["shape"], 0.0, ours["scale"])
        ll_mine = dist.logpdf(x, *mine).sum()
        ll_ref = dist.logpdf(x, *ref).sum()
        assert ll_mine >= ll_ref - 1e-7, name
        assert mine == pytest.approx(ref, rel=1e-4), name


def test_three_parameter_lognormal_recovers_threshold():
    """Closed form: 3 + exp(0.6·Φ⁻¹(p)) is a lognormal shifted by 3; the 2-parameter fits
    are poor, the 3-parameter lognormal wins with threshold ≈ 3."""
    x = 3.0 + np.exp(0.6 * Z)
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=3.0, usl=12.0)
    best = r.percentile.best
    assert best.distribution == "lognormal3"
    p = dict(best.parameters)
    assert p["threshold"] == pytest.approx(3.0, abs=0.05)
    assert p["sigma"] == pytest.approx(0.6, rel=0.05)


def test_negative_data_use_threshold_fits_only():
    """Closed form: Weibull(1.7, 2) quantiles shifted by −5 → weibull3 with threshold ≈ −5;
    the 2-parameter families are skipped with a reason (they need x > 0)."""
    x = -5.0 + stats.weibull_min.ppf(PLOT, 1.7, scale=2.0)
    r = capability(x, center=float(np.mean(x)), sigma_within=1.0, lsl=-5.0, usl=5.0)
    pct = r.percentile
    assert pct.best.distribution == "weibull3"
    p = dict(pct.best.parameters)
    assert p["threshold"] == pytest.approx(-5.0, abs=0.1)
    assert p["shape"] == pytest.approx(1.7, rel=0.05)
    skipped = dict(pct.skipped)
    assert set(skipped) >= {"lognormal", "weibull", "gamma"}
    assert all("> 0" in skipped[k] for k in ("lognormal", "weibull", "gamma"))


def test_percentile_one_sided_and_deterministic():
    rng = np.random.default_rng(8)
    x = rng.lognormal(0.0, 0.4, 60)
    a = capability(x, center=float(np.mean(x)), sigma_within=0.4, usl=4.0)
    b = capability(x.copy(), center=float(np.mean(x)), sigma_within=0.4, usl=4.0)
    assert a.to_json() == b.to_json()
    best = a.percentile.best
    assert math.isnan(best.Pp) and math.isnan(best.Ppl)
    assert best.Ppk == best.Ppu
    out = a.to_json()["non_normal"]["percentile"]
    assert out["Pp"] is None
    json.dumps(a.to_json(), allow_nan=False)


def test_percentile_not_applicable():
    r = capability([1.0, 2.0], center=1.5, sigma_within=0.5, lsl=0.0, usl=3.0)
    assert not r.percentile.applicable and r.percentile.reason
    r = capability([2.0] * 5, center=2.0, sigma_within=0.5, lsl=0.0, usl=3.0)
    assert not r.percentile.applicable and "equal" in r.percentile.reason
