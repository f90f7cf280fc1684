"""Property tests for the attribute charts (hypothesis).

Each property follows from the definitions in ``spc-semantics.md``
("Charts and estimates"): p̄ = ΣD/Σn, ū = ΣC/Σn, c̄ = mean count, σ_i from
the centre and n_i, LCL clipped at 0, p's UCL at 1, np's at n_i.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spc.charts.attributes import (
    c_chart,
    c_series,
    estimate_c,
    estimate_laney_p,
    estimate_laney_u,
    estimate_np,
    estimate_p,
    estimate_u,
    laney_p_chart,
    laney_p_series,
    laney_u_chart,
    np_chart,
    np_series,
    p_chart,
    p_series,
    u_chart,
    u_series,
)
from spc.series import Estimate

# Per-test settings (a loaded profile would change every other module's tests too).
FEW = settings(max_examples=60, deadline=None)

TOL = 1e-12


@st.composite
def binomial_data(draw, min_size=1, max_size=25):
    """Counts D_i ≤ n_i with integer sizes, plus an exclude mask that keeps at least one point."""
    sizes = draw(st.lists(st.integers(1, 400), min_size=min_size, max_size=max_size))
    counts = [draw(st.integers(0, n)) for n in sizes]
    exclude = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    if all(exclude):
        exclude[draw(st.integers(0, len(sizes) - 1))] = False
    return np.array(counts, float), np.array(sizes, float), np.array(exclude)


@st.composite
def poisson_data(draw, min_size=1, max_size=25):
    """Counts C_i ≥ 0 and positive, possibly non-integer, areas n_i."""
    m = draw(st.integers(min_size, max_size))
    counts = draw(st.lists(st.integers(0, 200), min_size=m, max_size=m))
    sizes = draw(
        st.lists(st.floats(0.05, 50, allow_nan=False, allow_infinity=False), min_size=m, max_size=m)
    )
    exclude = draw(st.lists(st.booleans(), min_size=m, max_size=m))
    if all(exclude):
        exclude[0] = False
    return np.array(counts, float), np.array(sizes, float), np.array(exclude)


def ordered(s, lo=None, hi=None):
    """LCL ≤ centre ≤ UCL, sigma ≥ 0, everything finite, limits inside [lo, hi]."""
    for a in (s.center, s.lcl, s.ucl, s.sigma, s.statistics):
        assert np.all(np.isfinite(a))
    assert np.all(s.sigma >= 0)
    assert np.all(s.lcl <= s.center + TOL)
    assert np.all(s.center <= s.ucl + TOL)
    assert np.all(s.lcl >= 0)
    if lo is not None:
        assert np.all(s.lcl >= lo)
    if hi is not None:
        assert np.all(s.ucl <= hi)
        assert np.all(s.center <= hi + TOL)


@FEW
@given(binomial_data(), st.floats(0.5, 6))
def test_p_limits_ordered_and_within_unit_interval(data, k):
    """p: 0 ≤ LCL ≤ p̄ ≤ UCL ≤ 1 and σ_i ≥ 0 for any valid counts, sizes, exclusions and k."""
    d, n, ex = data
    ordered(p_chart(d, n, exclude=ex, nsigmas=k), 0.0, 1.0)
    if d.size > 1:
        ordered(laney_p_chart(d, n, nsigmas=k), 0.0, 1.0)


@FEW
@given(binomial_data(), st.floats(0.5, 6))
def test_np_limits_ordered_and_within_zero_and_n(data, k):
    """np: 0 ≤ LCL_i ≤ n_i p̄ ≤ UCL_i ≤ n_i."""
    d, n, ex = data
    s = np_chart(d, n, exclude=ex, nsigmas=k)
    ordered(s, 0.0)
    assert np.all(s.ucl <= n)
    assert np.all(s.center <= n + TOL)


@FEW
@given(poisson_data(), st.floats(0.5, 6))
def test_c_and_u_limits_ordered_and_non_negative(data, k):
    """c and u (and Laney u′): 0 ≤ LCL ≤ centre ≤ UCL, σ ≥ 0."""
    c, n, ex = data
    ordered(c_chart(c, exclude=ex, nsigmas=k))
    ordered(u_chart(c, n, exclude=ex, nsigmas=k))
    if c.size > 1:
        ordered(laney_u_chart(c, n, nsigmas=k))


@FEW
@given(binomial_data(), st.integers(2, 9))
def test_scaling_n_and_d_together(data, m):
    """D → mD, n → mn: p̄ and p_i unchanged, σ_i(p) scales by 1/√m, np's centre by m and σ by √m."""
    d, n, ex = data
    a, b = p_chart(d, n, exclude=ex), p_chart(m * d, m * n, exclude=ex)
    np.testing.assert_allclose(b.center, a.center, rtol=TOL)
    np.testing.assert_allclose(b.statistics, a.statistics, rtol=TOL)
    np.testing.assert_allclose(b.sigma, a.sigma / np.sqrt(m), rtol=1e-10, atol=1e-15)
    a, b = np_chart(d, n, exclude=ex), np_chart(m * d, m * n, exclude=ex)
    np.testing.assert_allclose(b.center, m * a.center, rtol=1e-10)
    np.testing.assert_allclose(b.sigma, np.sqrt(m) * a.sigma, rtol=1e-10, atol=1e-15)


@FEW
@given(poisson_data(), st.integers(2, 9))
def test_u_scaling_counts_and_areas_together(data, m):
    """C → mC, n → mn: ū and u_i unchanged, σ_i = √(ū/n_i) scales by 1/√m."""
    c, n, ex = data
    a, b = u_chart(c, n, exclude=ex), u_chart(m * c, m * n, exclude=ex)
    np.testing.assert_allclose(b.center, a.center, rtol=1e-10)
    np.testing.assert_allclose(b.statistics, a.statistics, rtol=1e-10)
    np.testing.assert_allclose(b.sigma, a.sigma / np.sqrt(m), rtol=1e-10, atol=1e-15)


@FEW
@given(binomial_data(), st.randoms(use_true_random=False))
def test_permutation_of_phase1_leaves_p_estimate_unchanged(data, rnd):
    """p̄ = ΣD/Σn depends on the set of (used) points, not their order."""
    d, n, ex = data
    perm = np.array(rnd.sample(range(d.size), d.size), dtype=int)
    a = estimate_p(d, n, exclude=ex)
    b = estimate_p(d[perm], n[perm], exclude=ex[perm])
    assert abs(a.center - b.center) <= 1e-12 * max(a.center, 1e-300) + 1e-15
    assert estimate_np(d[perm], n[perm], exclude=ex[perm]).method == a.method == "pbar"


@FEW
@given(poisson_data(), st.randoms(use_true_random=False))
def test_permutation_of_phase1_leaves_c_and_u_estimates_unchanged(data, rnd):
    """c̄ and ū are order-free."""
    c, n, ex = data
    perm = np.array(rnd.sample(range(c.size), c.size), dtype=int)
    for est in (
        lambda c, n, ex: estimate_c(c, exclude=ex),
        lambda c, n, ex: estimate_u(c, n, exclude=ex),
    ):
        a, b = est(c, n, ex), est(c[perm], n[perm], ex[perm])
        np.testing.assert_allclose(b.center, a.center, rtol=1e-12, atol=1e-15)


@FEW
@given(binomial_data(min_size=2), poisson_data(min_size=2))
def test_laney_sigma_z_unchanged_by_reversal(bdata, pdata):
    """σ_z uses |z_i − z_{i−1}| over adjacent pairs: reversing the order (and the mask) keeps the set.

    (Laney's σ_z is order-dependent in general, so full permutation invariance does not hold.)
    """
    d, n, _ = bdata
    a, b = estimate_laney_p(d, n), estimate_laney_p(d[::-1], n[::-1])
    np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-9, atol=1e-12)
    c, m, _ = pdata
    a, b = estimate_laney_u(c, m), estimate_laney_u(c[::-1], m[::-1])
    np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-9, atol=1e-12)


@FEW
@given(binomial_data(min_size=2), st.data())
def test_series_split_equals_whole(data, draw):
    """Batch equals stream: a frozen estimate applied to a split series gives the same points."""
    d, n, _ = data
    cut = draw.draw(st.integers(1, d.size - 1))
    est = estimate_p(d, n)
    for series in (p_series, np_series, u_series):
        whole = series(d, n, est)
        left, right = series(d[:cut], n[:cut], est), series(d[cut:], n[cut:], est)
        for name in ("statistics", "center", "lcl", "ucl", "sigma", "n"):
            np.testing.assert_array_equal(
                getattr(whole, name), np.concatenate([getattr(left, name), getattr(right, name)])
            )
    whole, left = c_series(d, est), c_series(d[:cut], est)
    np.testing.assert_array_equal(whole.ucl[:cut], left.ucl)


@FEW
@given(binomial_data(min_size=2), st.floats(0.0, 1.0))
def test_laney_with_unit_sigma_z_is_the_p_chart(data, pbar):
    """With σ_z = 1 the Laney p′ series coincides with the p series, point for point."""
    d, n, _ = data
    est = Estimate(pbar, 1.0, "laney")
    a, b = laney_p_series(d, n, est), p_series(d, n, est)
    for name in ("statistics", "center", "lcl", "ucl", "sigma"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@FEW
@given(binomial_data(min_size=2))
def test_phase2_does_not_move_the_estimate(data):
    """Appending Phase II points leaves the Phase I estimate and the Phase I points untouched."""
    d, n, ex = data
    alone = p_chart(d, n, exclude=ex)
    both = p_chart(d, n, d[::-1], n[::-1], exclude=ex)
    assert both.estimate.center == alone.estimate.center
    assert both.estimate.method == alone.estimate.method
    k = d.size
    for name in ("statistics", "center", "lcl", "ucl", "sigma"):
        np.testing.assert_array_equal(getattr(both, name)[:k], getattr(alone, name))
