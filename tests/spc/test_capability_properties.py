"""Hypothesis properties of ``spc.capability`` (consequences of the contract formulas)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spc.capability import capability

INDEX_KEYS = ("Cp", "Cpl", "Cpu", "Cpk", "Cpm", "Pp", "Ppl", "Ppu", "Ppk")

values = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
data = st.lists(values, min_size=2, max_size=40)
sigmas = st.floats(0.01, 100.0)


@st.composite
def cases(draw, two_sided: bool | None = None):
    x = np.array(draw(data))
    sw = draw(sigmas)
    a = draw(st.floats(-300.0, 300.0))
    width = draw(st.floats(0.1, 300.0))
    sided = draw(st.sampled_from(["both", "lsl", "usl"])) if two_sided is None else "both"
    lsl = a if sided in ("both", "lsl") else None
    usl = a + width if sided in ("both", "usl") else None
    target = draw(st.none() | st.floats(-300.0, 300.0))
    conf = draw(st.sampled_from([0.8, 0.9, 0.95, 0.99]))
    return x, {
        "center": float(np.mean(x)),
        "sigma_within": sw,
        "lsl": lsl,
        "usl": usl,
        "target": target,
        "confidence": conf,
        "non_normal": False,
    }


def _sd_ok(x: np.ndarray) -> bool:
    # constant data, or a spread not so tiny that a shift's rounding wipes it out
    spread = float(np.ptp(x))
    return spread == 0.0 or spread > 1e-3


@settings(max_examples=150, deadline=None)
@given(cases(two_sided=True))
def test_cpk_le_cp_and_cpk_is_min(case):
    x, kw = case
    r = capability(x, **kw)
    assert r.Cpk.value <= r.Cp.value * (1 + 1e-12) + 1e-12
    assert r.Cpk.value == min(r.Cpl.value, r.Cpu.value)
    assert r.Cpm.value <= r.Cp.value * (1 + 1e-12)
    if math.isfinite(r.Pp.value):
        assert r.Ppk.value <= r.Pp.value * (1 + 1e-12) + 1e-12
        assert r.Ppk.value == min(r.Ppl.value, r.Ppu.value)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_intervals_bracket_the_estimate(case):
    x, kw = case
    r = capability(x, **kw)
    for key in INDEX_KEYS:
        idx = getattr(r, key)
        if math.isfinite(idx.lower):
            assert idx.lower <= idx.value <= idx.upper, key
        if math.isfinite(r.Cpl.value) and math.isfinite(r.Cpu.value):
            assert r.Cpk.value == min(r.Cpl.value, r.Cpu.value)


@settings(max_examples=100, deadline=None)
@given(cases(), st.floats(-1000.0, 1000.0))
def test_shift_invariance(case, c):
    """Shifting data, centre, limits and target together changes no index."""
    x, kw = case
    assume(_sd_ok(x))
    moved = dict(kw)
    for k in ("center", "lsl", "usl", "target"):
        if moved[k] is not None:
            moved[k] = moved[k] + c
    a = capability(x, **kw).to_json()
    b = capability(x + c, **moved).to_json()
    for key in INDEX_KEYS:
        for part in ("value", "lower", "upper"):
            va, vb = a[key][part], b[key][part]
            assert (va is None) == (vb is None), (key, part)
            if va is not None:
                assert vb == pytest.approx(va, rel=1e-6, abs=1e-6), (key, part)
    assert b["expected_ppm_outside"] == pytest.approx(a["expected_ppm_outside"], rel=1e-5, abs=1e-3)


@settings(max_examples=100, deadline=None)
@given(cases(), st.floats(0.01, 100.0))
def test_scale_invariance(case, s):
    """Multiplying data, centre, σ̂, limits and target by s > 0 changes no index."""
    x, kw = case
    assume(_sd_ok(x))
    scaled = dict(kw)
    for k in ("center", "lsl", "usl", "target", "sigma_within"):
        if scaled[k] is not None:
            scaled[k] = scaled[k] * s
    a = capability(x, **kw).to_json()
    b = capability(x * s, **scaled).to_json()
    for key in INDEX_KEYS:
        for part in ("value", "lower", "upper"):
            va, vb = a[key][part], b[key][part]
            assert (va is None) == (vb is None), (key, part)
            if va is not None:
                assert vb == pytest.approx(va, rel=1e-8, abs=1e-9), (key, part)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(values, st.just(float("nan")), st.just(0.0), st.just(1.0)), max_size=25),
    st.floats(0.0, 50.0),
    st.one_of(st.none(), st.floats(-200.0, 200.0)),
    st.one_of(st.none(), st.floats(0.0, 200.0)),
    st.floats(-100.0, 100.0),
    st.booleans(),
    st.one_of(st.none(), st.booleans()),
)
def test_to_json_is_always_plain_json(xs, sw, lsl, width, center, non_normal, in_control):
    """Whatever the data (empty, constant, NaN-riddled, one-sided, σ̂ = 0), to_json has no NaN/inf."""
    usl = None if width is None else (lsl if lsl is not None else 0.0) + width + 0.01
    assume(lsl is not None or usl is not None)
    r = capability(
        xs,
        center=center,
        sigma_within=sw,
        lsl=lsl,
        usl=usl,
        non_normal=non_normal,
        in_control=in_control,
    )
    json.dumps(r.to_json(), allow_nan=False)
