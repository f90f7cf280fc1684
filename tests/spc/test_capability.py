"""Capability indices, intervals and ppm (contracts/analyze.md, Capability bullet).

Sources of expected values:

* **qcc vignette**: R package qcc 3.0, vignette "qcc" (docs/articles/qcc.html,
  section "Process capability analysis", github.com/luca-scr/qcc at commit
  31afaf68a779d9fcede774394649b4aa15d3c0a2). ``processCapability`` on the
  piston-ring X̄ chart prints Number of obs = 125, Center = 74.00118,
  StdDev = 0.009785039 and the index table for four spec settings. qcc's
  interval formulas are the contract's (chi-square for Cp, Bissell with
  one-sided z for Cpl/Cpu and two-sided z for Cpk, Boyles' ν for Cpm).
  The C indices depend on the data only through n, so any 125 observations
  reproduce the table once the printed centre and σ̂ are passed in.
* **hand-derived**: the contract formula written out step by step with
  ``scipy.stats`` primitives inside the test.
* **closed form**: values checked by hand (noted at each test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from spc.capability import UNSTABLE_WARNING, CapabilityReport, capability
from spc.errors import SpcInputError
from tests.data.pistonrings import PHASE1

CONTRACT_KEYS = {
    "Cp",
    "Cpl",
    "Cpu",
    "Cpk",
    "Cpm",
    "Pp",
    "Ppl",
    "Ppu",
    "Ppk",
    "sigma_within",
    "sigma_overall",
    "expected_ppm_outside",
    "observed_ppm_outside",
}
INDEX_KEYS = ("Cp", "Cpl", "Cpu", "Cpk", "Cpm", "Pp", "Ppl", "Ppu", "Ppk")

# qcc vignette: the printed centre and σ̂ of the piston-ring X̄ chart (R̄/d2(5), qcc's d2).
QCC_CENTER = 74.00118
QCC_SIGMA = 0.009785039
PISTON = np.asarray(PHASE1, dtype=float).ravel()  # 125 observations: only n matters here

# Printed 3-decimal values have a rounding error ≤ 5e-4; the printed centre 74.00118
# (±5e-6) moves Cpl/Cpu by ≤ 5e-6/(3·0.009785) ≈ 1.7e-4. Hence 7e-4.
TOL3 = 7e-4

# qcc vignette, the three tables printed with 3 decimals: (lsl, usl, target, expected rows).
QCC_TABLES = [
    pytest.param(
        73.95,
        74.05,
        74.02,
        {
            "Cp": (1.703, 1.491, 1.915),
            "Cpl": (1.743, 1.555, 1.932),
            "Cpu": (1.663, 1.483, 1.844),
            "Cpk": (1.663, 1.448, 1.878),
            "Cpm": (0.786, 0.656, 0.915),
        },
        id="qcc-spec-73.95-74.05-target-74.02",
    ),
    pytest.param(
        73.99,
        74.01,
        None,
        {
            "Cp": (0.341, 0.298, 0.383),
            "Cpl": (0.381, 0.318, 0.444),
            "Cpu": (0.301, 0.242, 0.359),
            "Cpk": (0.301, 0.231, 0.370),
            "Cpm": (0.338, 0.296, 0.380),
        },
        id="qcc-spec-73.99-74.01",
    ),
    pytest.param(
        73.99,
        74.1,
        None,
        {
            "Cp": (1.874, 1.641, 2.106),
            "Cpl": (0.381, 0.318, 0.444),
            "Cpu": (3.367, 3.011, 3.722),
            "Cpk": (0.381, 0.305, 0.456),
            "Cpm": (0.408, 0.338, 0.479),
        },
        id="qcc-spec-73.99-74.1-target-midpoint-74.045",
    ),
]


def _json_ok(report: CapabilityReport) -> dict:
    out = report.to_json()
    json.dumps(out, allow_nan=False)  # raises on NaN / inf
    return out


# ---------------------------------------------------------------------------
# published worked examples (qcc vignette)


@pytest.mark.parametrize(("lsl", "usl", "target", "expected"), QCC_TABLES)
def test_qcc_vignette_piston_rings_tables(lsl, usl, target, expected):
    """Source: qcc vignette, processCapability tables with 3 decimals."""
    r = capability(
        PISTON, center=QCC_CENTER, sigma_within=QCC_SIGMA, lsl=lsl, usl=usl, target=target
    )
    assert r.n == 125
    for key, (value, lower, upper) in expected.items():
        idx = getattr(r, key)
        assert idx.value == pytest.approx(value, abs=TOL3), key
        assert idx.lower == pytest.approx(lower, abs=TOL3), key
        assert idx.upper == pytest.approx(upper, abs=TOL3), key


def test_qcc_vignette_default_target_table():
    """Source: qcc vignette, first table (2 decimals): spec 73.95–74.05, target = midpoint 74."""
    r = capability(PISTON, center=QCC_CENTER, sigma_within=QCC_SIGMA, lsl=73.95, usl=74.05)
    assert r.target == pytest.approx(74.0)
    expected = {
        "Cp": (1.70, 1.49, 1.91),
        "Cpl": (1.74, 1.55, 1.93),
        "Cpu": (1.66, 1.48, 1.84),
        "Cpk": (1.66, 1.45, 1.88),
        "Cpm": (1.69, 1.48, 1.90),
    }
    for key, triple in expected.items():
        idx = getattr(r, key)
        got = (idx.value, idx.lower, idx.upper)
        assert got == pytest.approx(triple, abs=5e-3 + 2e-4), key


def test_qcc_vignette_expected_fraction_outside():
    """Source: qcc vignette. Spec 73.99–74.01 prints Exp<LSL 13 %, Exp>USL 18 %
    (2 significant digits, so each share lies in [12.5, 13.5) % and [17.5, 18.5) %);
    spec 73.99–74.1 prints 13 % and 0 % (qcc prints 0 below 0.01 %)."""
    r = capability(PISTON, center=QCC_CENTER, sigma_within=QCC_SIGMA, lsl=73.99, usl=74.01)
    assert 0.30e6 <= r.expected_ppm_outside < 0.32e6
    r = capability(PISTON, center=QCC_CENTER, sigma_within=QCC_SIGMA, lsl=73.99, usl=74.1)
    assert 0.125e6 <= r.expected_ppm_outside < 0.135e6 + 100


# ---------------------------------------------------------------------------
# the contract formula, written out (hand-derived)


def _contract(x, mu, sw, lsl, usl, target, conf):
    """contracts/analyze.md, Capability bullet, step by step with scipy.stats primitives."""
    n = len(x)
    so = float(np.std(x, ddof=1))
    alpha = 1.0 - conf
    z1 = stats.norm.ppf(1.0 - alpha)
    z2 = stats.norm.ppf(1.0 - alpha / 2.0)
    lo_q = stats.chi2.ppf(alpha / 2.0, n - 1)
    hi_q = stats.chi2.ppf(1.0 - alpha / 2.0, n - 1)
    out = {}
    for prefix, s in (("C", sw), ("P", so)):
        p = (usl - lsl) / (6 * s)
        pl = (mu - lsl) / (3 * s)
        pu = (usl - mu) / (3 * s)
        pk = min(pl, pu)
        out[prefix + "p"] = (p, p * math.sqrt(lo_q / (n - 1)), p * math.sqrt(hi_q / (n - 1)))
        for name, c, z in (("pl", pl, z1), ("pu", pu, z1), ("pk", pk, z2)):
            w = z * math.sqrt(1 / (9 * n * c**2) + 1 / (2 * (n - 1)))
            out[prefix + name] = (c, c * (1 - w), c * (1 + w))
    d = (mu - target) / sw
    cpm = out["Cp"][0] / math.sqrt(1 + d**2)
    nu = n * (1 + d**2) / (1 + 2 * d**2)
    out["Cpm"] = (
        cpm,
        cpm * math.sqrt(stats.chi2.ppf(alpha / 2, nu) / nu),
        cpm * math.sqrt(stats.chi2.ppf(1 - alpha / 2, nu) / nu),
    )
    ppm = 1e6 * (stats.norm.cdf((lsl - mu) / sw) + 1 - stats.norm.cdf((usl - mu) / sw))
    return out, so, ppm


@pytest.mark.parametrize("conf", [0.95, 0.90, 0.99])
def test_matches_contract_formula_step_by_step(conf):
    """Hand-derived: every index, interval, σ_o and expected ppm against _contract."""
    rng = np.random.default_rng(20240611)
    x = rng.normal(10.2, 0.5, size=37)
    mu, sw, lsl, usl, target = 10.1, 0.45, 8.0, 12.5, 10.4
    r = capability(x, center=mu, sigma_within=sw, lsl=lsl, usl=usl, target=target, confidence=conf)
    exp, so, ppm = _contract(x, mu, sw, lsl, usl, target, conf)
    assert r.sigma_overall == pytest.approx(so, rel=1e-12)
    assert r.sigma_within == sw
    assert r.expected_ppm_outside == pytest.approx(ppm, rel=1e-9)
    for key in INDEX_KEYS:
        idx = getattr(r, key)
        assert (idx.value, idx.lower, idx.upper) == pytest.approx(exp[key], rel=1e-10), key


def test_cpm_uses_non_integer_degrees_of_freedom():
    """Hand-derived: ν = n(1+d²)/(1+2d²) is not an integer here and is used as such."""
    x = np.linspace(0.0, 1.0, 30)
    mu, sw, target = 0.5, 0.2, 0.6
    r = capability(x, center=mu, sigma_within=sw, lsl=-0.5, usl=1.5, target=target)
    d = (mu - target) / sw  # −0.5
    nu = 30 * (1 + d * d) / (1 + 2 * d * d)  # 30·1.25/1.5 = 25
    assert nu == pytest.approx(25.0)
    r2 = capability(x, center=mu, sigma_within=sw, lsl=-0.5, usl=1.5, target=0.65)
    d2 = (mu - 0.65) / sw  # −0.75
    nu2 = 30 * (1 + d2 * d2) / (1 + 2 * d2 * d2)  # 30·1.5625/2.125 = 22.0588…
    assert nu2 != round(nu2)
    for rep, dd, nn in ((r, d, nu), (r2, d2, nu2)):
        cpm = (2.0 / (6 * sw)) / math.sqrt(1 + dd * dd)
        assert rep.Cpm.value == pytest.approx(cpm, rel=1e-12)
        assert rep.Cpm.lower == pytest.approx(
            cpm * math.sqrt(stats.chi2.ppf(0.025, nn) / nn), rel=1e-10
        )
        assert rep.Cpm.upper == pytest.approx(
            cpm * math.sqrt(stats.chi2.ppf(0.975, nn) / nn), rel=1e-10
        )


# ---------------------------------------------------------------------------
# closed-form cases


def test_standard_normal_three_sigma_limits():
    """Closed form: μ̂ = 0, σ_w = 1, LSL = −3, USL = 3 → Cp = Cpl = Cpu = Cpk = Cpm = 1 and
    expected ppm = 2·10⁶·Φ(−3) = 2699.796063… (Φ(−3) = 0.001349898031630…)."""
    x = np.array([-1.0, 0.0, 1.0])
    r = capability(x, center=0.0, sigma_within=1.0, lsl=-3.0, usl=3.0)
    for key in ("Cp", "Cpl", "Cpu", "Cpk", "Cpm"):
        assert getattr(r, key).value == pytest.approx(1.0, rel=1e-15), key
    assert r.expected_ppm_outside == pytest.approx(2699.796063, abs=1e-6)
    # x = −1, 0, 1: mean 0, SD (n−1) = 1, so the P indices equal the C indices.
    assert r.sigma_overall == pytest.approx(1.0)
    assert r.Ppk.value == pytest.approx(1.0)
    assert r.expected_ppm_outside_overall == pytest.approx(2699.796063, abs=1e-6)


def test_off_centre_closed_form():
    """Closed form: LSL 8, USL 20, μ̂ 16, σ 2 → Cp = 12/12 = 1, Cpu = 4/6, Cpl = 8/6, Cpk = 2/3."""
    r = capability([15.0, 16.0, 17.0], center=16.0, sigma_within=2.0, lsl=8.0, usl=20.0)
    assert r.Cp.value == pytest.approx(1.0)
    assert r.Cpu.value == pytest.approx(2 / 3)
    assert r.Cpl.value == pytest.approx(4 / 3)
    assert r.Cpk.value == pytest.approx(2 / 3)
    # target defaults to the midpoint 14: d = (16 − 14)/2 = 1, Cpm = 1/√2
    assert r.target == 14.0
    assert r.Cpm.value == pytest.approx(1 / math.sqrt(2))


def test_symmetric_data_gives_equal_sides():
    """Closed form: data symmetric about the spec midpoint → Cpl = Cpu = Cpk = Cp, Ppl = Ppu."""
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]) + 50.0
    r = capability(x, center=50.0, sigma_within=1.1, lsl=46.0, usl=54.0)
    assert r.Cpl.value == pytest.approx(r.Cpu.value, rel=1e-12)
    assert r.Cpk.value == pytest.approx(r.Cp.value, rel=1e-12)
    assert r.Ppl.value == pytest.approx(r.Ppu.value, rel=1e-12)
    assert r.Cpm.value == pytest.approx(r.Cp.value, rel=1e-12)  # centre on target: d = 0
    # same value, same n: one-sided z for Cpl/Cpu, two-sided z for Cpk → Cpk's interval is wider
    assert r.Cpl.lower == pytest.approx(r.Cpu.lower, rel=1e-12)
    assert r.Cpk.lower < r.Cpl.lower
    assert r.Cpk.upper > r.Cpl.upper


@pytest.mark.parametrize("side", ["lsl", "usl"])
def test_one_sided_spec_leaves_cp_pp_cpm_null(side):
    """spc-semantics.md, Capability: one-sided specs leave Cp, Pp, Cpm undefined (null)."""
    x = np.array([9.0, 10.0, 10.5, 11.0, 9.5])
    limits = {"lsl": 7.0} if side == "lsl" else {"usl": 13.0}
    r = capability(x, center=10.0, sigma_within=0.8, target=10.0, **limits)
    out = _json_ok(r)
    for key in ("Cp", "Pp", "Cpm"):
        assert out[key] == {"value": None, "lower": None, "upper": None}, key
        assert key in out["notes"]
    defined, undefined = ("Cpl", "Cpu") if side == "lsl" else ("Cpu", "Cpl")
    assert out[undefined]["value"] is None
    assert r.Cpk.value == getattr(r, defined).value  # the smaller of those defined
    assert r.Ppk.value == getattr(r, "P" + defined[1:]).value
    # Cpk keeps the two-sided z although it equals the one-sided index
    assert r.Cpk.lower < getattr(r, defined).lower
    expected = stats.norm.cdf(-3.0 / 0.8) * 1e6  # one limit 3 units away, the other adds 0
    assert r.expected_ppm_outside == pytest.approx(expected, rel=1e-12)


def test_interval_contains_estimate_and_narrows_with_n():
    """Hand-derived consequence of the formulas: wider for small n, always around Ĉ."""
    widths = []
    for n in (10, 40, 160, 640):
        x = np.tile([9.0, 10.0, 11.0], n // 3 + 1)[:n]
        r = capability(x, center=10.0, sigma_within=1.0, lsl=6.5, usl=14.0)
        for key in INDEX_KEYS:
            idx = getattr(r, key)
            assert idx.lower <= idx.value <= idx.upper, (n, key)
        widths.append([getattr(r, k).upper - getattr(r, k).lower for k in INDEX_KEYS])
    w = np.array(widths)
    assert np.all(np.diff(w, axis=0) < 0)


def test_higher_confidence_gives_wider_intervals():
    x = np.linspace(9.0, 11.0, 25)
    r90 = capability(x, center=10.0, sigma_within=0.6, lsl=8.0, usl=12.5, confidence=0.90)
    r99 = capability(x, center=10.0, sigma_within=0.6, lsl=8.0, usl=12.5, confidence=0.99)
    for key in INDEX_KEYS:
        a, b = getattr(r90, key), getattr(r99, key)
        assert a.value == b.value
        assert b.lower < a.lower and b.upper > a.upper, key


def test_observed_ppm_counts_strictly_outside():
    """Closed form: 11 values (NaN dropped), one below LSL, two above USL, one on each limit → 3/11."""
    x = [0.5, 1.0, 2, 3, 4, 5, 6, 7, 9.0, 9.5, 9.7, float("nan")]
    r = capability(x, center=5.0, sigma_within=2.0, lsl=1.0, usl=9.0)
    assert r.n == 11
    assert r.observed_ppm_outside == pytest.approx(1e6 * 3 / 11)
    assert r.mean == pytest.approx(np.nanmean(x))
    assert r.center == 5.0


def test_missing_observations_are_dropped():
    """contracts/analyze.md: missing observations dropped, n = number of observations."""
    x = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 4.0])
    r = capability(x, center=2.5, sigma_within=1.0, lsl=0.0, usl=5.0)
    clean = capability(x[~np.isnan(x)], center=2.5, sigma_within=1.0, lsl=0.0, usl=5.0)
    assert r.n == 4
    assert r.to_json() == clean.to_json()
    assert r.sigma_overall == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


# ---------------------------------------------------------------------------
# stability verdict


def test_stability_verdict():
    x = np.linspace(9.0, 11.0, 20)
    kw = {"center": 10.0, "sigma_within": 0.5, "lsl": 8.0, "usl": 12.0}
    unstable = capability(x, in_control=False, **kw)
    assert unstable.stable is False
    assert unstable.warning == UNSTABLE_WARNING
    assert "not in statistical control" in unstable.warning
    assert unstable.Cpk.value == pytest.approx(4 / 3)  # still computed
    stable = capability(x, in_control=True, **kw)
    assert stable.stable is True and stable.warning is None
    unknown = capability(x, **kw)
    assert unknown.stable is None and unknown.warning is None
    assert _json_ok(unstable)["stable"] is False
    assert _json_ok(unknown)["stable"] is None


# ---------------------------------------------------------------------------
# JSON shape


def test_to_json_shape_and_types():
    rng = np.random.default_rng(7)
    x = rng.normal(5.0, 1.0, 50)
    out = _json_ok(capability(x, center=5.0, sigma_within=1.0, lsl=1.0, usl=9.0))
    assert out.keys() >= CONTRACT_KEYS
    for key in INDEX_KEYS:
        assert set(out[key]) == {"value", "lower", "upper"}
        assert all(isinstance(v, float) for v in out[key].values())
    for key in ("n", "mean", "lsl", "usl", "target", "confidence", "normality", "non_normal"):
        assert key in out
    assert set(out["normality"]) >= {"ad", "ad_adjusted", "p_value", "normal"}
    assert set(out["non_normal"]) == {"box_cox", "percentile"}
    pct = out["non_normal"]["percentile"]
    assert set(pct) >= {
        "distribution",
        "parameters",
        "fits",
        "Pp",
        "Ppl",
        "Ppu",
        "Ppk",
        "expected_ppm_outside",
    }
    assert type(out["n"]) is int
    assert out["stable"] is None and out["warning"] is None


def test_non_normal_can_be_skipped():
    out = _json_ok(
        capability([1.0, 2.0, 3.0], center=2.0, sigma_within=1.0, usl=9.0, non_normal=False)
    )
    assert out["non_normal"] == {"box_cox": None, "percentile": None}


# ---------------------------------------------------------------------------
# degenerate inputs: null with a reason, never NaN / inf


def test_sigma_within_zero():
    """σ_w = 0 (constant data on an I-MR chart): C indices null; expected ppm is the σ → 0 limit."""
    x = np.full(10, 5.0)
    r = capability(x, center=5.0, sigma_within=0.0, lsl=4.0, usl=6.0)
    out = _json_ok(r)
    for key in INDEX_KEYS:
        assert out[key] == {"value": None, "lower": None, "upper": None}, key
    assert "sigma_within" in out["notes"] and "sigma_overall" in out["notes"]
    assert out["expected_ppm_outside"] == 0.0
    assert out["observed_ppm_outside"] == 0.0
    assert out["sigma_overall"] == 0.0
    assert out["normality"]["p_value"] is None and out["normality"]["reason"]
    assert out["non_normal"]["box_cox"]["applicable"] is False
    assert out["non_normal"]["percentile"]["applicable"] is False
    outside = capability(x, center=5.0, sigma_within=0.0, lsl=5.5, usl=6.0)
    assert outside.expected_ppm_outside == 1e6
    on_limit = capability(x, center=5.0, sigma_within=0.0, lsl=5.0, usl=6.0)
    assert on_limit.expected_ppm_outside == 5e5


def test_all_observations_equal_with_positive_sigma_within():
    """σ_o = 0 but σ̂ from elsewhere (e.g. known σ): C indices exist, P indices null."""
    r = capability(np.full(8, 3.0), center=3.0, sigma_within=0.5, lsl=1.0, usl=5.0)
    out = _json_ok(r)
    assert out["Cp"]["value"] == pytest.approx(4 / 3)
    assert out["Pp"] == {"value": None, "lower": None, "upper": None}
    assert out["Ppk"]["value"] is None
    assert out["expected_ppm_outside_overall"] == 0.0


def test_sigma_within_nan_means_unavailable():
    out = _json_ok(capability([1.0, 2.0, 3.0], center=2.0, sigma_within=float("nan"), lsl=0, usl=4))
    assert out["Cp"]["value"] is None and out["Cpk"]["value"] is None
    assert out["expected_ppm_outside"] is None
    assert out["Pp"]["value"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_observations(n):
    """C point estimates need only μ̂ and σ̂; intervals and P indices need n ≥ 2."""
    r = capability([4.0] * n, center=4.0, sigma_within=0.5, lsl=2.0, usl=7.0)
    out = _json_ok(r)
    assert out["n"] == n
    assert out["Cp"]["value"] == pytest.approx(5 / 3)
    assert out["Cpk"]["value"] == pytest.approx(4 / 3)
    for key in INDEX_KEYS:
        assert out[key]["lower"] is None and out[key]["upper"] is None, key
    assert out["Pp"]["value"] is None
    assert out["sigma_overall"] is None
    assert "intervals" in out["notes"]
    if n == 0:
        assert out["observed_ppm_outside"] is None and out["mean"] is None
    else:
        assert out["observed_ppm_outside"] == 0.0


def test_estimate_zero_bissell_interval_is_the_limit():
    """Hand-derived: at Ĉ = 0 (centre exactly on LSL) the contract's Ĉ·(1 ∓ z·√(1/(9nĈ²) + …))
    is 0·∞; its limit as Ĉ → 0 is ±z/(3√n), and the interval is continuous there."""
    x = np.linspace(-1, 1, 11)
    r = capability(x, center=0.0, sigma_within=1.0, lsl=0.0, usl=6.0)
    out = _json_ok(r)
    z1, z2 = stats.norm.ppf(0.95), stats.norm.ppf(0.975)
    assert out["Cpl"]["value"] == 0.0
    assert (out["Cpl"]["lower"], out["Cpl"]["upper"]) == pytest.approx(
        (-z1 / (3 * math.sqrt(11)), z1 / (3 * math.sqrt(11))), rel=1e-12
    )
    assert (out["Cpk"]["lower"], out["Cpk"]["upper"]) == pytest.approx(
        (-z2 / (3 * math.sqrt(11)), z2 / (3 * math.sqrt(11))), rel=1e-12
    )
    near = capability(x, center=1e-9, sigma_within=1.0, lsl=0.0, usl=6.0)
    assert near.Cpl.lower == pytest.approx(r.Cpl.lower, abs=1e-9)
    assert out["expected_ppm_outside"] == pytest.approx(5e5 + 1e6 * stats.norm.sf(6.0))


def test_negative_estimate_interval_is_ordered():
    """Centre below LSL: Ĉpl < 0; the interval is reported lower ≤ value ≤ upper."""
    x = np.linspace(0.0, 2.0, 21)
    r = capability(x, center=1.0, sigma_within=0.5, lsl=1.6, usl=3.0)
    assert r.Cpl.value == pytest.approx(-0.4)
    assert r.Cpk.value == r.Cpl.value
    for key in ("Cpl", "Cpk", "Ppl", "Ppk"):
        idx = getattr(r, key)
        assert idx.lower <= idx.value <= idx.upper, key
    w = stats.norm.ppf(0.95) * math.sqrt(1 / (9 * 21 * 0.16) + 1 / 40)
    assert (r.Cpl.lower, r.Cpl.upper) == pytest.approx((-0.4 * (1 + w), -0.4 * (1 - w)))


def test_target_outside_spec_is_allowed():
    r = capability([1.0, 2.0, 3.0], center=2.0, sigma_within=1.0, lsl=0.0, usl=4.0, target=5.0)
    assert r.Cpm.value == pytest.approx((4 / 6) / math.sqrt(1 + 9))


# ---------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"lsl": 5.0, "usl": 5.0}, "capability.lsl"),
        ({"lsl": 6.0, "usl": 5.0}, "capability.lsl"),
        ({}, "capability"),
        ({"lsl": None, "usl": None}, "capability"),
        ({"lsl": 0.0, "usl": 9.0, "confidence": 0.0}, "capability.confidence"),
        ({"lsl": 0.0, "usl": 9.0, "confidence": 1.0}, "capability.confidence"),
        ({"lsl": 0.0, "usl": 9.0, "confidence": 1.5}, "capability.confidence"),
        ({"lsl": 0.0, "usl": 9.0, "confidence": float("nan")}, "capability.confidence"),
        ({"lsl": float("nan"), "usl": 9.0}, "capability.lsl"),
        ({"lsl": 0.0, "usl": float("inf")}, "capability.usl"),
        ({"lsl": 0.0, "usl": 9.0, "target": float("inf")}, "capability.target"),
        ({"lsl": 0.0, "usl": 9.0, "sigma_within": -1.0}, "capability.sigma_within"),
        ({"lsl": 0.0, "usl": 9.0, "sigma_within": float("inf")}, "capability.sigma_within"),
        ({"lsl": 0.0, "usl": 9.0, "center": float("nan")}, "capability.center"),
        ({"lsl": 0.0, "usl": 9.0, "in_control": "yes"}, "capability.in_control"),
    ],
)
def test_bad_input_raises_with_path(kwargs, path):
    base = {"center": 5.0, "sigma_within": 1.0}
    base.update(kwargs)
    with pytest.raises(SpcInputError) as err:
        capability([4.0, 5.0, 6.0], **base)
    assert err.value.path == path
    assert err.value.message


@pytest.mark.parametrize("obs", [[1.0, float("inf")], [[1.0, 2.0], [3.0, 4.0]], ["a", "b"]])
def test_bad_observations_raise(obs):
    with pytest.raises(SpcInputError) as err:
        capability(obs, center=2.0, sigma_within=1.0, lsl=0.0, usl=5.0)
    assert err.value.path == "capability.observations"
