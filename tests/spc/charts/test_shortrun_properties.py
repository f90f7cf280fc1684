"""Property tests for the short-run charts (hypothesis).

The properties follow from the definitions in ``spc/charts/shortrun.py``:
DNOM charts d = x − nominal(part), so moving a part's values and its nominal
together changes nothing; Z-MR standardizes by each part's own μ and σ, so a
positive affine change of one part's scale leaves every z unchanged.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spc.charts.shortrun import (
    dnom_chart,
    dnom_series,
    estimate_dnom,
    estimate_zmr,
    zmr_chart,
    zmr_series,
)
from spc.errors import SpcInputError

FEW = settings(max_examples=60, deadline=None)
PART_IDS = ["A", "B", "C"]


@st.composite
def runs(draw, min_size=2, max_size=30):
    """Values with part ids; each part has its own level, noise on a 0.1 grid."""
    m = draw(st.integers(min_size, max_size))
    parts = draw(st.lists(st.sampled_from(PART_IDS), min_size=m, max_size=m))
    levels = {"A": 10.0, "B": 250.0, "C": -40.0}
    noise = draw(st.lists(st.integers(-50, 50), min_size=m, max_size=m))
    values = np.array([levels[p] + e / 10 for p, e in zip(parts, noise, strict=True)])
    return values, parts


NOMINAL = {"A": 10.0, "B": 250.0, "C": -40.0}


def zmr_or_reject(values, parts, **kw):
    """The Z-MR chart, or a rejected example when a part has no usable σ̂ (by design an error)."""
    try:
        return zmr_chart(values, parts, **kw)
    except SpcInputError:
        assume(False)
        raise


@FEW
@given(runs(), st.floats(0.5, 6))
def test_dnom_limits_ordered(data, k):
    """x: LCL ≤ centre ≤ UCL, σ ≥ 0; mr: 0 ≤ LCL ≤ centre ≤ UCL; every MR ≥ 0."""
    values, parts = data
    x, mr = dnom_chart(values, parts, NOMINAL, nsigmas=k)
    assert np.all(x.sigma >= 0) and np.all(mr.sigma >= 0)
    assert np.all(x.lcl <= x.center) and np.all(x.center <= x.ucl)
    assert np.all(mr.lcl >= 0) and np.all(mr.lcl <= mr.center) and np.all(mr.center <= mr.ucl)
    assert np.all(mr.statistics[1:] >= 0)


@FEW
@given(runs(), st.sampled_from(PART_IDS), st.integers(-1000, 1000))
def test_dnom_shift_of_a_part_and_its_nominal_changes_nothing(data, part, shift):
    """Adding c to one part's values and to its nominal leaves d_i, and so the chart, unchanged."""
    values, parts = data
    moved = values + np.where(np.array(parts) == part, shift, 0.0)
    nominal = {**NOMINAL, part: NOMINAL[part] + shift}
    a = dnom_chart(values, parts, NOMINAL)
    b = dnom_chart(moved, parts, nominal)
    for s, t in ((a.x, b.x), (a.mr, b.mr)):
        for name in ("statistics", "center", "lcl", "ucl", "sigma"):
            np.testing.assert_allclose(
                getattr(t, name), getattr(s, name), rtol=1e-9, atol=1e-9, equal_nan=True
            )


@FEW
@given(runs(min_size=3), st.data())
def test_dnom_series_split_equals_whole(data, draw):
    """Batch equals stream: a split series with ``prev`` equals the whole series."""
    values, parts = data
    cut = draw.draw(st.integers(1, len(parts) - 1))
    est = estimate_dnom(values, parts, NOMINAL)
    whole = dnom_series(values, parts, NOMINAL, est)
    left = dnom_series(values[:cut], parts[:cut], NOMINAL, est)
    right = dnom_series(values[cut:], parts[cut:], NOMINAL, est, prev=left.x.statistics[-1])
    for a, b, c in ((whole.x, left.x, right.x), (whole.mr, left.mr, right.mr)):
        for name in ("statistics", "center", "lcl", "ucl", "sigma", "n"):
            np.testing.assert_array_equal(
                getattr(a, name), np.concatenate([getattr(b, name), getattr(c, name)])
            )


@FEW
@given(
    runs(min_size=4),
    st.fixed_dictionaries(
        {p: st.tuples(st.floats(0.1, 100), st.floats(-1e3, 1e3)) for p in PART_IDS}
    ),
)
def test_zmr_by_parts_invariant_to_each_parts_affine_scale(data, affine):
    """x → a_p·x + b_p (a_p > 0) per part leaves every z, and so the whole chart, unchanged."""
    values, parts = data
    a = zmr_or_reject(values, parts)
    scale = np.array([affine[p][0] for p in parts])
    shift = np.array([affine[p][1] for p in parts])
    b = zmr_chart(scale * values + shift, parts)
    np.testing.assert_allclose(b.x.statistics, a.x.statistics, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(b.mr.statistics, a.mr.statistics, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(b.x.ucl, a.x.ucl)
    np.testing.assert_array_equal(b.mr.ucl, a.mr.ucl)


@FEW
@given(runs(min_size=3), st.floats(0.1, 100), st.floats(-1e3, 1e3))
def test_zmr_constant_invariant_to_a_common_affine_scale(data, scale, shift):
    """ "constant" pools one σ, so a common positive scale (and any shift) leaves z unchanged."""
    values, parts = data
    a = zmr_or_reject(values, parts, sigma_method="constant")
    b = zmr_chart(scale * values + shift, parts, sigma_method="constant")
    np.testing.assert_allclose(b.x.statistics, a.x.statistics, rtol=1e-7, atol=1e-7)


@FEW
@given(runs(min_size=4), st.permutations(PART_IDS))
def test_zmr_relabelling_parts_changes_nothing(data, relabel):
    """Part ids are labels only: a bijective renaming gives the same plotted points."""
    values, parts = data
    a = zmr_or_reject(values, parts)
    rename = dict(zip(PART_IDS, relabel, strict=True))
    b = zmr_chart(values, [rename[p] for p in parts])
    np.testing.assert_array_equal(b.x.statistics, a.x.statistics)


@FEW
@given(runs(min_size=4), st.floats(0.5, 6), st.data())
def test_zmr_limits_and_split(data, k, draw):
    """Z limits are ±k with σ 1; MR LCL ≥ 0; a split series with ``prev`` equals the whole."""
    values, parts = data
    r = zmr_or_reject(values, parts, nsigmas=k)
    assert np.all(r.x.ucl == k) and np.all(r.x.lcl == -k) and np.all(r.x.sigma == 1.0)
    assert np.all(r.mr.lcl >= 0) and np.all(r.mr.lcl <= r.mr.center)
    est = estimate_zmr(values, parts)
    cut = draw.draw(st.integers(1, len(parts) - 1))
    left = zmr_series(values[:cut], parts[:cut], est, k)
    right = zmr_series(values[cut:], parts[cut:], est, k, prev=left.x.statistics[-1])
    np.testing.assert_array_equal(
        r.x.statistics, np.concatenate([left.x.statistics, right.x.statistics])
    )
    np.testing.assert_array_equal(
        r.mr.statistics, np.concatenate([left.mr.statistics, right.mr.statistics])
    )
