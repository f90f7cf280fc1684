"""Short-run charts (DNOM and Z-MR): hand-derived examples and validation paths.

No published worked example with data is used here; every expected value is
derived by hand in the test's docstring from the definitions in
``spc/charts/shortrun.py``: DNOM is an I-MR pair on d_i = x_i − nominal(part_i)
with σ̂ = MR̄/d2(2) (Wheeler, *Short Run SPC*, 1991); Z-MR standardizes by each
part's μ and σ (Minitab's "Z-MR Chart") and plots z with limits ±k and its
moving range with centre d2(2) and limits from d3(2). d2(2) = 2/√π and
d3(2) = √(2 − 4/π) exactly (spc-semantics, "Constants").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spc.charts.shortrun import (
    ShortRunCharts,
    ZmrEstimate,
    deviations,
    dnom_chart,
    dnom_series,
    estimate_dnom,
    estimate_zmr,
    standardize,
    zmr_chart,
    zmr_series,
)
from spc.errors import SpcInputError
from spc.series import Estimate

D2 = 2.0 / math.sqrt(math.pi)  # d2(2)
D3 = math.sqrt(2.0 - 4.0 / math.pi)  # d3(2)

# Two parts, runs A A B B A (the last A starts a second run of part A).
VALUES = [10.1, 9.9, 20.3, 20.0, 10.0]
PARTS = ["A", "A", "B", "B", "A"]
NOMINAL = {"A": 10.0, "B": 20.0}


def arrays(s):
    return {k: getattr(s, k) for k in ("statistics", "center", "lcl", "ucl", "sigma", "n")}


def assert_same(a, b, rtol=0.0):
    for k, v in arrays(a).items():
        np.testing.assert_allclose(v, arrays(b)[k], rtol=rtol, atol=0, equal_nan=True)


# --------------------------------------------------------------------------- DNOM


def test_dnom_two_parts_hand_derived():
    """d = x − nominal = (0.1, −0.1, 0.3, 0.0, 0.0); mean 0.06.

    MR = (—, 0.2, 0.4, 0.3, 0.0) across part changes, MR̄ = 0.9/4 = 0.225,
    σ̂ = 0.225/d2(2) = 0.225·√π/2 = 0.199401. x: 0.06 ± 3σ̂ = (−0.538203, 0.658203).
    mr: centre 0.225, σ = d3(2)σ̂ = 0.169993, UCL 0.225 + 3·0.169993 = 0.734970,
    LCL max(0, 0.225 − 0.509980) = 0. n: 1 per x point, 2 per defined MR.
    """
    r = dnom_chart(VALUES, PARTS, NOMINAL)
    sig = 0.225 / D2
    assert isinstance(r, ShortRunCharts)
    assert r.zmr is None
    x, mr = r
    assert x.name == "x" and mr.name == "mr"
    assert not x.dispersion and mr.dispersion
    np.testing.assert_allclose(x.statistics, [0.1, -0.1, 0.3, 0.0, 0.0], atol=1e-12)
    assert x.estimate.method == "dnom"
    assert x.estimate.center == pytest.approx(0.06, abs=1e-15)
    assert x.estimate.sigma == pytest.approx(sig, rel=1e-13)
    assert sig == pytest.approx(0.199401, abs=1e-6)
    assert x.lcl == pytest.approx([0.06 - 3 * sig] * 5, rel=1e-13)
    assert x.ucl == pytest.approx([0.06 + 3 * sig] * 5, rel=1e-13)
    assert x.ucl[0] == pytest.approx(0.658203, abs=1e-6)
    assert x.sigma == pytest.approx([sig] * 5, rel=1e-13)
    np.testing.assert_array_equal(x.n, np.ones(5))
    assert math.isnan(mr.statistics[0])
    np.testing.assert_allclose(mr.statistics[1:], [0.2, 0.4, 0.3, 0.0], atol=1e-12)
    assert mr.center == pytest.approx([0.225] * 5, rel=1e-13)
    assert mr.sigma == pytest.approx([D3 * sig] * 5, rel=1e-13)
    assert mr.ucl == pytest.approx([0.225 + 3 * D3 * sig] * 5, rel=1e-13)
    assert mr.ucl[0] == pytest.approx(0.734970, abs=1e-6)
    assert np.all(mr.lcl == 0.0)
    np.testing.assert_array_equal(mr.n, [0, 2, 2, 2, 2])
    assert mr.estimate == x.estimate


def test_dnom_one_part_equals_imr_of_deviations():
    """With one part DNOM is I-MR of x − nominal: centre x̄ − nominal, σ̂ = MR̄/d2(2).

    x = (5.2, 4.9, 5.4, 5.0, 5.3, 4.8), nominal 5: d = (0.2, −0.1, 0.4, 0.0, 0.3, −0.2),
    mean 0.1, MR = (0.3, 0.5, 0.4, 0.3, 0.5), MR̄ = 2.0/5 = 0.4, σ̂ = 0.4/d2(2) = 0.354491.
    Shifting the nominal to 0 only shifts the x chart by 5 (I-MR of x itself).
    """
    x = [5.2, 4.9, 5.4, 5.0, 5.3, 4.8]
    r = dnom_chart(x, ["P"] * 6, {"P": 5.0})
    sig = 0.4 / D2
    assert r.x.estimate.center == pytest.approx(0.1, abs=1e-12)
    assert r.x.estimate.sigma == pytest.approx(sig, rel=1e-12)
    assert sig == pytest.approx(0.354491, abs=1e-6)
    np.testing.assert_allclose(r.x.ucl, 0.1 + 3 * sig, rtol=1e-12)
    np.testing.assert_allclose(r.mr.statistics[1:], [0.3, 0.5, 0.4, 0.3, 0.5], atol=1e-12)
    np.testing.assert_allclose(r.mr.ucl, 0.4 + 3 * D3 * sig, rtol=1e-12)
    raw = dnom_chart(x, ["P"] * 6, {"P": 0.0})
    np.testing.assert_allclose(raw.x.statistics, np.array(x), rtol=1e-15)
    np.testing.assert_allclose(raw.x.ucl, r.x.ucl + 5.0, rtol=1e-13)
    assert_same(raw.mr, r.mr, rtol=1e-12)


def test_dnom_center_nominal_targets_zero():
    """center="nominal": the x centre is 0 (judged against the nominals); σ̂ is unchanged."""
    r = dnom_chart(VALUES, PARTS, NOMINAL, center="nominal")
    assert np.all(r.x.center == 0.0)
    assert r.x.ucl == pytest.approx([3 * 0.225 / D2] * 5, rel=1e-13)
    assert r.x.estimate.method == "dnom"


def test_dnom_nominal_as_sequence_indexed_by_integer_part():
    """Integer part ids 0, 1 index a nominal sequence: same chart as the mapping {0: 10, 1: 20}."""
    a = dnom_chart(VALUES, [0, 0, 1, 1, 0], [10.0, 20.0])
    b = dnom_chart(VALUES, np.array([0, 0, 1, 1, 0]), {0: 10.0, 1: 20.0})
    c = dnom_chart(VALUES, PARTS, NOMINAL)
    assert_same(a.x, b.x)
    assert_same(a.x, c.x)
    assert_same(a.mr, c.mr)


def test_dnom_known_standards():
    """known_center and known_sigma replace the estimates; σ known → method ``known``."""
    r = dnom_chart(VALUES, PARTS, NOMINAL, known_center=0.0, known_sigma=0.1)
    assert r.x.estimate == Estimate(0.0, 0.1, "known")
    assert r.x.ucl == pytest.approx([0.3] * 5)
    assert r.mr.center == pytest.approx([0.1 * D2] * 5)
    est = estimate_dnom(VALUES, PARTS, NOMINAL, known_center=1.0)
    assert est.method == "dnom" and est.center == 1.0


def test_dnom_exclusion_drops_point_and_its_moving_ranges():
    """Excluding point 2 (d = 0.3): mean of (0.1, −0.1, 0.0, 0.0) = 0.

    MRs used: pair (0,1) = 0.2 and pair (3,4) = 0.0; pairs (1,2), (2,3) touch the
    excluded point. MR̄ = 0.1, σ̂ = 0.1/d2(2). Point 2 is still plotted.
    """
    r = dnom_chart(VALUES, PARTS, NOMINAL, exclude=[False, False, True, False, False])
    assert r.x.estimate.center == pytest.approx(0.0, abs=1e-15)
    assert r.x.estimate.sigma == pytest.approx(0.1 / D2, rel=1e-12)
    assert len(r.x) == 5
    assert r.x.statistics[2] == pytest.approx(0.3)
    np.testing.assert_allclose(r.mr.statistics[1:], [0.2, 0.4, 0.3, 0.0], atol=1e-12)


def test_dnom_phase2_frozen_and_first_mr_uses_last_phase1_point():
    """Phase II (B 20.5, A 9.7): d = (0.5, −0.3), judged on Phase I centre 0.06 and σ̂ 0.225/d2(2).

    First Phase II MR = |0.5 − 0.0| (last Phase I deviation), then |−0.3 − 0.5| = 0.8.
    ``dnom_series`` with ``prev`` gives the same Phase II points.
    """
    r = dnom_chart(VALUES, PARTS, NOMINAL, [20.5, 9.7], ["B", "A"])
    assert len(r.x) == len(r.mr) == 7
    assert r.x.estimate.center == pytest.approx(0.06)
    np.testing.assert_allclose(r.mr.statistics[5:], [0.5, 0.8], atol=1e-12)
    est = estimate_dnom(VALUES, PARTS, NOMINAL)
    tail = dnom_series([20.5, 9.7], ["B", "A"], NOMINAL, est, prev=0.0)
    for name in ("statistics", "center", "lcl", "ucl", "sigma"):
        np.testing.assert_allclose(getattr(r.x, name)[5:], getattr(tail.x, name), rtol=1e-15)
        np.testing.assert_allclose(getattr(r.mr, name)[5:], getattr(tail.mr, name), rtol=1e-15)
    alone = dnom_series([20.5, 9.7], ["B", "A"], NOMINAL, est)
    assert math.isnan(alone.mr.statistics[0])


def test_dnom_phase2_may_bring_a_new_part_with_a_nominal():
    """DNOM needs only a nominal for a part, so a part first seen in Phase II is fine."""
    r = dnom_chart(VALUES, PARTS, {**NOMINAL, "C": 30.0}, [30.2], ["C"])
    assert r.x.statistics[-1] == pytest.approx(0.2)


def test_dnom_constant_deviations_give_zero_sigma():
    """Constant deviations are valid: σ̂ = 0, all limits collapse to the centre."""
    r = dnom_chart([11, 21, 11], ["A", "B", "A"], NOMINAL)
    assert r.x.estimate.sigma == 0.0
    assert np.all(r.x.ucl == 1.0) and np.all(r.mr.ucl == 0.0)


def test_deviations_helper():
    """deviations() is x − nominal(part)."""
    np.testing.assert_allclose(deviations(VALUES, PARTS, NOMINAL), [0.1, -0.1, 0.3, 0.0, 0.0], atol=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda: dnom_chart([1.0, np.nan], ["A", "A"], NOMINAL), "data[1]"),
        (lambda: dnom_chart([1.0, 2.0], ["A"], NOMINAL), "parts"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "Z"], NOMINAL), "parts[1]"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], None), "nominal"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], {"A": math.inf}), "nominal['A']"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], [1.0, 2.0]), "parts[0]"),
        (lambda: dnom_chart([1.0, 2.0], [0, 5], [1.0, 2.0]), "parts[1]"),
        (lambda: dnom_chart([], [], NOMINAL), "data"),
        (lambda: dnom_chart([1.0], ["A"], NOMINAL), "data"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, exclude=[True]), "exclude"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, exclude=[1, 1]), "exclude"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, center="median"), "center"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, known_sigma=0), "known.sigma"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, known_center="x"), "known.center"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, nsigmas=0), "nsigmas"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, [1.0], ["Q"]), "phase2.parts[0]"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, [np.inf], ["A"]), "phase2.data[0]"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, [1.0]), "phase2.parts"),
        (lambda: dnom_chart([1.0, 2.0], ["A", "A"], NOMINAL, None, ["A"]), "phase2.data"),
        (lambda: dnom_chart([1.0, 2.0], [["A"], "A"], NOMINAL), "parts[0]"),
    ],
)
def test_dnom_validation_paths(call, path):
    """Bad input raises SpcInputError with the path of the offending entry."""
    with pytest.raises(SpcInputError) as e:
        call()
    assert e.value.path == path


# --------------------------------------------------------------------------- Z-MR

# Two parts; A: 10.1, 9.9, 10.3, (B run), 10.0; B: 20.3, 20.0, 20.6.
Z_VALUES = [10.1, 9.9, 10.3, 20.3, 20.0, 20.6, 10.0]
Z_PARTS = ["A", "A", "A", "B", "B", "B", "A"]


def test_zmr_by_parts_hand_derived():
    """μ_A = 40.3/4 = 10.075, μ_B = 60.9/3 = 20.3.

    Part A's own consecutive values 10.1, 9.9, 10.3, 10.0 (its two runs joined):
    MR = 0.2, 0.4, 0.3, MR̄ = 0.3, σ_A = 0.3/d2(2) = 0.265868. Part B: MR = 0.3, 0.6,
    MR̄ = 0.45, σ_B = 0.398802. z_i = (x_i − μ)/σ, e.g. z_0 = 0.025/σ_A = 0.094032.
    Z chart: centre 0, σ 1, limits ±3. MR of z between consecutive plotted points:
    centre d2(2) = 1.128379, σ d3(2) = 0.852502, UCL 1.128379 + 3·0.852502 = 3.685887, LCL 0.
    """
    r = zmr_chart(Z_VALUES, Z_PARTS)
    sa, sb = 0.3 / D2, 0.45 / D2
    assert r.zmr == ZmrEstimate(
        means={"A": pytest.approx(10.075), "B": pytest.approx(20.3)},
        sigmas={"A": pytest.approx(sa, rel=1e-12), "B": pytest.approx(sb, rel=1e-12)},
        method="zmr-by-parts",
    )
    assert sa == pytest.approx(0.265868, abs=1e-6)
    mu = np.array([10.075] * 3 + [20.3] * 3 + [10.075])
    sd = np.array([sa] * 3 + [sb] * 3 + [sa])
    z = (np.array(Z_VALUES) - mu) / sd
    np.testing.assert_allclose(r.x.statistics, z, rtol=1e-10, atol=1e-12)
    assert r.x.statistics[0] == pytest.approx(0.094032, abs=1e-6)
    assert r.x.estimate == Estimate(0.0, 1.0, "zmr-by-parts")
    assert np.all(r.x.center == 0.0)
    assert np.all(r.x.sigma == 1.0)
    assert np.all(r.x.ucl == 3.0) and np.all(r.x.lcl == -3.0)
    np.testing.assert_allclose(r.mr.statistics[1:], np.abs(np.diff(z)), rtol=1e-10, atol=1e-12)
    assert math.isnan(r.mr.statistics[0])
    assert r.mr.center == pytest.approx([D2] * 7, rel=1e-15)
    assert r.mr.sigma == pytest.approx([D3] * 7, rel=1e-15)
    assert r.mr.ucl == pytest.approx([D2 + 3 * D3] * 7, rel=1e-15)
    assert r.mr.ucl[0] == pytest.approx(3.685887, abs=1e-6)
    assert np.all(r.mr.lcl == 0.0)
    assert r.mr.dispersion and r.mr.name == "mr" and r.x.name == "x"


def test_zmr_constant_pools_every_within_part_moving_range():
    """ "constant": MRs 0.2, 0.4, 0.3 (A) and 0.3, 0.6 (B), MR̄ = 1.8/5 = 0.36, σ = 0.36/d2(2) = 0.319042."""
    est = estimate_zmr(Z_VALUES, Z_PARTS, sigma_method="constant")
    assert est.method == "zmr-constant"
    assert est.sigmas["A"] == est.sigmas["B"] == pytest.approx(0.36 / D2, rel=1e-12)
    assert est.sigmas["A"] == pytest.approx(0.319042, abs=1e-6)
    assert est.estimate == Estimate(0.0, 1.0, "zmr-constant")


def test_zmr_nsigmas_gives_limits_plus_minus_k():
    """nsigmas = 2.5: Z limits ±2.5; MR UCL d2(2) + 2.5·d3(2), LCL max(0, d2 − 2.5·d3) = 0."""
    r = zmr_chart(Z_VALUES, Z_PARTS, nsigmas=2.5)
    assert np.all(r.x.ucl == 2.5) and np.all(r.x.lcl == -2.5)
    assert r.mr.ucl == pytest.approx([D2 + 2.5 * D3] * 7, rel=1e-15)
    assert np.all(r.mr.lcl == 0.0)
    small = zmr_chart(Z_VALUES, Z_PARTS, nsigmas=1.0)
    assert small.mr.lcl == pytest.approx([D2 - D3] * 7, rel=1e-15)  # 0.275877 > 0, kept


def test_zmr_single_part_is_standardized_imr():
    """One part, by parts: z = (x − x̄)/σ̂ with σ̂ = MR̄/d2(2), so the z chart is the I-MR chart in σ̂ units.

    x = (5.2, 4.9, 5.4, 5.0, 5.3, 4.8): x̄ = 30.6/6 = 5.1, MR̄ = 0.4, σ̂ = 0.354491;
    z_2 = 0.3/σ̂ = 0.846284; each MR of z is MR of x / σ̂.
    """
    x = np.array([5.2, 4.9, 5.4, 5.0, 5.3, 4.8])
    r = zmr_chart(x, ["P"] * 6)
    sig = 0.4 / D2
    np.testing.assert_allclose(r.x.statistics, (x - 5.1) / sig, rtol=1e-10, atol=1e-12)
    assert r.x.statistics[2] == pytest.approx(0.846284, abs=1e-6)
    np.testing.assert_allclose(r.mr.statistics[1:], np.abs(np.diff(x)) / sig, rtol=1e-10)
    d = dnom_chart(x, ["P"] * 6, {"P": 5.1})
    np.testing.assert_allclose(r.x.statistics, d.x.statistics / sig, rtol=1e-10, atol=1e-12)


def test_zmr_nominal_replaces_part_mean():
    """nominal {"A": 10} fixes μ_A = 10 (a mapping may cover only some parts; B keeps its mean)."""
    est = estimate_zmr(Z_VALUES, Z_PARTS, nominal={"A": 10.0})
    assert est.means == {"A": 10.0, "B": pytest.approx(20.3)}
    assert est.sigmas["A"] == pytest.approx(0.3 / D2, rel=1e-12)


def test_zmr_known_sigma():
    """known_sigma as a number (all parts) → method ``known``; a partial mapping keeps the method."""
    est = estimate_zmr(Z_VALUES, Z_PARTS, known_sigma=0.5)
    assert est.method == "known" and est.sigmas == {"A": 0.5, "B": 0.5}
    est = estimate_zmr(Z_VALUES, Z_PARTS, known_sigma={"B": 0.5})
    assert est.method == "zmr-by-parts"
    assert est.sigmas == {"A": pytest.approx(0.3 / D2), "B": 0.5}


def test_zmr_exclusion_changes_estimate_not_points():
    """Excluding point 2 (A, 10.3): μ_A = 30.0/3 = 10.0; A's used MR pairs: (10.1, 9.9) only.

    The pairs (9.9, 10.3) and (10.3, 10.0) touch the excluded value, so
    σ_A = 0.2/d2(2). Point 2 is still plotted: z_2 = 0.3/σ_A.
    """
    ex = [False, False, True, False, False, False, False]
    r = zmr_chart(Z_VALUES, Z_PARTS, exclude=ex)
    assert r.zmr.means["A"] == pytest.approx(10.0)
    assert r.zmr.sigmas["A"] == pytest.approx(0.2 / D2, rel=1e-12)
    assert len(r.x) == 7
    assert r.x.statistics[2] == pytest.approx(0.3 / (0.2 / D2), rel=1e-10)


def test_zmr_phase2_uses_frozen_part_estimates():
    """Phase II (B 21.6, A 10.075): z = (1.3/σ_B = 3.2598, 0) with the frozen Phase I μ and σ.

    The first Phase II MR uses the last Phase I z; ``zmr_series`` with
    ``prev`` = that z reproduces the Phase II tail.
    """
    r = zmr_chart(Z_VALUES, Z_PARTS, [21.6, 10.075], ["B", "A"])
    sb = 0.45 / D2
    assert len(r.x) == 9
    np.testing.assert_allclose(r.x.statistics[7:], [1.3 / sb, 0.0], rtol=1e-10, atol=1e-12)
    assert r.x.statistics[7] > 3.0  # beyond the Z chart's UCL
    tail = zmr_series([21.6, 10.075], ["B", "A"], r.zmr, prev=r.x.statistics[6])
    np.testing.assert_allclose(tail.mr.statistics, r.mr.statistics[7:], rtol=1e-12)
    np.testing.assert_allclose(standardize([21.6], ["B"], r.zmr), r.x.statistics[7:8], rtol=1e-12)


def test_zmr_single_observation_part_needs_constant_or_known_sigma():
    """Part C seen once has no moving range: "by-parts" fails at its first index, "constant" works."""
    vals, parts = [*Z_VALUES, 30.0], [*Z_PARTS, "C"]
    with pytest.raises(SpcInputError) as e:
        estimate_zmr(vals, parts)
    assert e.value.path == "parts[7]"
    est = estimate_zmr(vals, parts, sigma_method="constant")
    assert est.sigmas["C"] == pytest.approx(0.36 / D2, rel=1e-12)
    assert est.means["C"] == 30.0
    est = estimate_zmr(vals, parts, known_sigma={"C": 1.0})
    assert est.sigmas["C"] == 1.0


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda: zmr_chart([1.0, 1.0, 2.0, 3.0], ["A", "A", "B", "B"]), "parts[0]"),
        (lambda: zmr_chart([1.0, 1.0], ["A", "A"], sigma_method="constant"), "data"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], sigma_method="by-runs"), "sigma_method"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A", "A"]), "parts"),
        (lambda: zmr_chart([1.0, -np.inf], ["A", "A"]), "data[1]"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], known_sigma=-1), "known.sigma"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], known_sigma={"A": 0}), "known.sigma['A']"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], exclude=[True, True]), "exclude"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], [1.0], ["B"]), "phase2.parts[0]"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], [np.nan], ["A"]), "phase2.data[0]"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], [1.0]), "phase2.parts"),
        (lambda: zmr_chart([1.0, 2.0], ["A", "A"], nsigmas=-1), "nsigmas"),
        (lambda: zmr_chart([1.0, 2.0, 3.0], ["A", "A", "B"], nominal=[1.0]), "parts[0]"),
        (
            lambda: zmr_chart([1.0, 2.0, 5.0], ["A", "A", "B"], exclude=[False, False, True]),
            "parts[2]",
        ),
        (lambda: zmr_series([1.0], ["A"], ZmrEstimate({"A": 0}, {"A": 1}), prev=math.nan), "prev"),
    ],
)
def test_zmr_validation_paths(call, path):
    """σ̂ = 0 for a part, unknown parts, bad numbers and bad options name their path."""
    with pytest.raises(SpcInputError) as e:
        call()
    assert e.value.path == path


def test_shortrun_charts_unpack_as_x_then_mr():
    """ShortRunCharts iterates x then mr (so ``x, mr = ...`` works) and is a frozen dataclass."""
    r = zmr_chart(Z_VALUES, Z_PARTS)
    x, mr = r
    assert x is r.x and mr is r.mr
    with pytest.raises(AttributeError):
        r.x = mr  # type: ignore[misc]
