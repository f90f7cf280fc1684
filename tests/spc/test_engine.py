"""Streaming engine (spc/engine.py): hand-computed points, limits changes, resets, persistence.

The batch reference (:func:`batch_reference`) builds each chart with the
batch series functions and :func:`spc.rules.evaluate` against a frozen
estimate (``spc-semantics.md``, "Streaming equals batch"); the property tests
in ``test_engine_properties.py`` use it too.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from spc import rules
from spc.analyze import analyze_json
from spc.charts import attributes
from spc.charts.timeweighted import (
    CusumCarry,
    EwmaCarry,
    cusum_series,
    ewma_factor,
    ewma_saturation,
    ewma_series,
)
from spc.charts.variables import imr_series, subgroup_stats, xbar_series
from spc.constants import c4, d2, d3
from spc.engine import CHARTS, Engine, Points, Spec, encode_snapshot
from spc.errors import SpcInputError
from spc.limits import LimitsRecord
from spc.rules import BITS
from spc.series import Estimate

NAN = math.nan
B = {code: np.uint32(1 << bit) for code, bit in BITS.items()}

CENTRE_COLS = ("statistic", "center", "lcl", "ucl", "sigma", "n", "mask")
DISP_COLS = ("disp_statistic", "disp_center", "disp_lcl", "disp_ucl", "disp_sigma", "disp_mask")
PATH_COLS = ("ewma", "cusum_upper", "cusum_lower")
ALL_COLS = CENTRE_COLS + DISP_COLS + PATH_COLS


# --------------------------------------------------------------------------- batch reference


@dataclass
class Segment:
    """Values judged against one estimate: flat values (m per point) and, for p/np/u, sizes."""

    values: np.ndarray
    est: Estimate
    sizes: np.ndarray | None = None
    params: dict[str, float] = field(default_factory=dict)


def _rules_for(spec: Spec) -> tuple[rules.RuleConfig, rules.RuleConfig]:
    centre = rules.resolve_rules("nelson" if spec.rules is None else spec.rules, spec.rule_params)
    if spec.rules_dispersion is None:
        disp: Any = [c for c in centre.codes if c in ("N1", "WE1")]
    else:
        disp = spec.rules_dispersion
    return centre, rules.resolve_rules(disp, spec.rule_params)


def batch_reference(spec: Spec, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
    """Expected per-point columns of one characteristic, from the batch path.

    Each segment is judged against its own estimate (a ``set_limits`` between
    segments); moving ranges, EWMA/CUSUM sums and run-rule windows continue
    across segments, as in the engine.
    """
    chart, m = spec.chart, spec.subgroup_size
    parts: list[dict[str, np.ndarray]] = []
    prev: float | None = None
    ewma_carry: EwmaCarry | None = None
    cusum_carry: CusumCarry | None = None
    k = spec.nsigmas
    for seg in segments:
        k = seg.params.get("nsigmas", k)
        v = np.asarray(seg.values, dtype=float)
        npts = len(v) // m
        if npts == 0:
            continue
        nan = np.full(npts, np.nan)
        zeros = np.zeros(npts, dtype=np.uint32)
        cols: dict[str, np.ndarray] = dict.fromkeys(ALL_COLS, nan)
        cols["disp_mask"] = zeros
        if chart == "imr":
            xs, mr = imr_series(v, seg.est, k, prev=prev)
            present = v[~np.isnan(v)]
            if present.size:
                prev = float(present[-1])
            cols.update(_series_cols(xs), **{"disp_" + c: a for c, a in _series_cols(mr).items()})
        elif chart in ("xbar-r", "xbar-s"):
            xb, disp = xbar_series(v.reshape(npts, m), seg.est, k, chart[-1])
            cols.update(_series_cols(xb), **{"disp_" + c: a for c, a in _series_cols(disp).items()})
        elif chart in ("p", "np", "c", "u"):
            counts = np.nan_to_num(v, nan=0.0)  # limits do not depend on the counts
            fn = getattr(attributes, f"{chart}_series")
            if chart == "c":
                s = fn(counts, seg.est, k)
            else:
                s = fn(counts, seg.sizes, seg.est, k)
            cols.update(_series_cols(s))
            cols["statistic"] = np.where(np.isnan(v), np.nan, s.statistics)
        elif chart == "ewma":
            lam = seg.params.get("ewma_lambda", spec.ewma_lambda)
            L = seg.params.get("ewma_L", spec.ewma_L)
            st = subgroup_stats(v.reshape(npts, m))
            s, ewma_carry = ewma_series(st.mean, st.n, seg.est, lam, L, carry=ewma_carry)
            cols.update(_series_cols(s), ewma=s.extra["ewma"])
        else:
            st = subgroup_stats(v.reshape(npts, m))
            s, cusum_carry = cusum_series(
                st.mean,
                st.n,
                seg.est,
                seg.params.get("cusum_k", spec.cusum_k),
                seg.params.get("cusum_h", spec.cusum_h),
                spec.cusum_head_start,
                reset=spec.cusum_reset,
                carry=cusum_carry,
            )
            cols.update(
                _series_cols(s),
                cusum_upper=s.extra["cusum_upper"],
                cusum_lower=s.extra["cusum_lower"],
            )
        parts.append(cols)
    if not parts:
        empty = {c: np.zeros(0) for c in ALL_COLS}
        empty["mask"] = empty["disp_mask"] = np.zeros(0, dtype=np.uint32)
        return empty
    out = {c: np.concatenate([p[c] for p in parts]) for c in ALL_COLS if c not in ("mask",)}
    centre_cfg, disp_cfg = _rules_for(spec)
    if chart == "ewma":
        with np.errstate(invalid="ignore"):
            hit = (out["ewma"] > out["ucl"]) | (out["ewma"] < out["lcl"])
        out["mask"] = hit * B["EWMA"]
    elif chart == "cusum":
        h = np.concatenate([p["ucl"] for p in parts])
        with np.errstate(invalid="ignore"):
            out["mask"] = (out["cusum_upper"] > h) * B["CUSUM_UPPER"] | (
                out["cusum_lower"] < -h
            ) * B["CUSUM_LOWER"]
    else:
        out["mask"] = rules.evaluate(
            out["statistic"], out["center"], out["sigma"], out["lcl"], out["ucl"], centre_cfg
        )
    if chart in ("imr", "xbar-r", "xbar-s"):
        out["disp_mask"] = rules.evaluate(
            out["disp_statistic"],
            out["disp_center"],
            out["disp_sigma"],
            out["disp_lcl"],
            out["disp_ucl"],
            disp_cfg,
        )
    return out


def _series(s) -> dict[str, np.ndarray]:
    return {
        "statistic": s.statistics,
        "center": s.center,
        "lcl": s.lcl,
        "ucl": s.ucl,
        "sigma": s.sigma,
        "n": np.asarray(s.n, dtype=float),
    }


_series_cols = _series


def assert_matches(
    pts: Points, expected: dict[str, np.ndarray], cols: Sequence[str] = ALL_COLS
) -> None:
    """Exact equality (NaN = NaN) of every column; the engine's point numbers count 0, 1, 2 …"""
    assert pts.point.tolist() == list(range(len(pts)))
    for c in cols:
        got = getattr(pts, c)
        want = np.asarray(expected[c])
        assert got.shape == want.shape, c
        if got.dtype.kind == "u":
            assert np.array_equal(got, want), (c, got, want)
        else:
            assert np.array_equal(got, want, equal_nan=True), (c, got, want)


def feed(
    engine: Engine, idx: int, values: Sequence[float], sizes: Sequence[float] | None = None
) -> Points:
    """Feed one characteristic's values one call per sample; concatenated points."""
    parts = []
    for j, x in enumerate(values):
        size = None if sizes is None else [sizes[j]]
        parts.append(engine.process([idx], [x], size))
    return Points.concat(parts)


# --------------------------------------------------------------------------- hand-computed


def test_imr_hand_computed() -> None:
    """μ = 10, σ = 1: limits 7/13; MR centre d2(2), UCL d2(2) + 3·d3(2) ≈ 3.686.
    x = 10, 12, 9, NaN, 14: MR = –, 2, 3, – (missing point), 5 (bridges the gap, as
    moving_ranges does); 14 > 13 flags N1, MR 5 > 3.686 flags N1 on the MR chart."""
    eng = Engine([Spec("imr", center=10.0, sigma=1.0)])
    pts = eng.process([0, 0, 0, 0, 0], [10.0, 12.0, 9.0, NAN, 14.0])
    assert pts.point.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(pts.statistic, [10, 12, 9, NAN, 14], equal_nan=True)
    assert pts.lcl.tolist() == [7.0] * 5 and pts.ucl.tolist() == [13.0] * 5
    assert pts.n.tolist() == [1, 1, 1, 0, 1]
    assert np.array_equal(pts.disp_statistic, [NAN, 2, 3, NAN, 5], equal_nan=True)
    assert pts.disp_center[0] == d2(2)
    assert pts.disp_ucl[0] == pytest.approx(d2(2) + 3 * d3(2))
    assert pts.disp_lcl[0] == 0.0
    assert pts.mask.tolist() == [0, 0, 0, 0, int(B["N1"])]
    assert pts.disp_mask.tolist() == [0, 0, 0, 0, int(B["N1"])]
    assert np.isnan(pts.ewma).all() and np.isnan(pts.cusum_upper).all()


def test_xbar_r_and_s_hand_computed() -> None:
    """m = 3, μ = 2, σ = 1: [1, 2, 3] → x̄ = 2, R = 2, S = 1; limits 2 ± 3/√3;
    R centre d2(3), S centre c4(3). [1, NaN, 3] has n = 2: σ_x̄ = 1/√2, R centre d2(2)."""
    eng = Engine(
        [Spec("xbar-r", center=2.0, sigma=1.0, subgroup_size=3), Spec("xbar-s", 2.0, 1.0, 3)]
    )
    pts = eng.process([0, 1] * 6, np.repeat([1.0, 2.0, 3.0, 1.0, NAN, 3.0], 2))
    r, s = pts.of(0), pts.of(1)
    assert r.statistic.tolist() == [2.0, 2.0] and r.n.tolist() == [3.0, 2.0]
    assert r.ucl[0] == 2 + 3 / math.sqrt(3) and r.sigma[1] == 1 / math.sqrt(2)
    assert r.disp_statistic.tolist() == [2.0, 2.0]
    assert r.disp_center.tolist() == [d2(3), d2(2)]
    assert r.disp_ucl[0] == pytest.approx(d2(3) + 3 * d3(3))
    assert s.disp_statistic[0] == 1.0 and s.disp_statistic[1] == pytest.approx(math.sqrt(2))
    assert s.disp_center.tolist() == [c4(3), c4(2)]
    assert s.disp_sigma[0] == pytest.approx(math.sqrt(1 - c4(3) ** 2))
    # rows in arrival order of the completing sample: char 0's then char 1's
    assert pts.char.tolist() == [0, 1, 0, 1]


def test_subgroup_completes_across_batches() -> None:
    """Two values in one call, the third in the next: the point appears in the second call."""
    spec = Spec("xbar-r", center=0.0, sigma=1.0, subgroup_size=3)
    eng = Engine([spec])
    a = eng.process([0, 0], [1.0, 2.0])
    assert len(a) == 0
    b = eng.process([0, 0], [6.0, 0.0])
    assert b.statistic.tolist() == [3.0]
    assert b.mask.tolist() == [int(B["N1"])]  # 3 > 3/√3
    c = eng.process([0, 0, 0, 0, 0], [0.0, 3.0, 3.0, NAN, 0.0])
    assert c.statistic.tolist() == [1.0, 1.5] and c.n.tolist() == [3.0, 2.0]
    values = np.array([1.0, 2, 6, 0, 0, 3, 3, NAN, 0])
    ref = batch_reference(spec, [Segment(values, Estimate(0.0, 1.0, "known"))])
    assert_matches(Points.concat([a, b, c]), ref)


def test_attribute_charts_hand_computed() -> None:
    """p̄ = 0.1, n = 100: σ = 0.03, limits 0.01 / 0.19; 20/100 = 0.2 > 0.19.
    np: centre 10, σ = 3, limits 1 / 19. c̄ = 4: σ = 2, limits 0 (clipped) / 10.
    ū = 2, n = 0.5: σ = 2, limits 0 (clipped) / 8."""
    eng = Engine([Spec("p", 0.1), Spec("np", 0.1), Spec("c", 4.0), Spec("u", 2.0)])
    pts = eng.process([0, 1, 2, 3], [20.0, 5.0, 11.0, 1.0], [100.0, 100.0, NAN, 0.5])
    assert pts.statistic.tolist() == [0.2, 5.0, 11.0, 2.0]
    assert pts.center.tolist() == pytest.approx([0.1, 10.0, 4.0, 2.0])
    assert pts.sigma.tolist() == pytest.approx([0.03, 3.0, 2.0, 2.0])
    assert pts.lcl.tolist() == pytest.approx([0.01, 1.0, 0.0, 0.0])
    assert pts.ucl.tolist() == pytest.approx([0.19, 19.0, 10.0, 8.0])
    assert pts.n.tolist() == [100.0, 100.0, 1.0, 0.5]
    assert pts.mask.tolist() == [int(B["N1"]), 0, int(B["N1"]), 0]
    assert np.isnan(pts.disp_statistic).all() and not pts.disp_mask.any()


def test_p_and_np_clipping_at_one_and_n() -> None:
    """p̄ = 0.9, n = 4: centre + 3σ = 0.9 + 0.45 > 1 → UCL 1; np UCL clipped at n = 4."""
    eng = Engine([Spec("p", 0.9), Spec("np", 0.9)])
    pts = eng.process([0, 1], [4.0, 4.0], [4.0, 4.0])
    assert pts.ucl.tolist() == [1.0, 4.0]


def test_ewma_hand_computed() -> None:
    """z0 = 10, λ = 0.2: x = 11 → 10.2, x = 9 → 9.96; σ_1 = 0.2, σ_2 = √(0.2/1.8·(1 − 0.8⁴)).
    A large shift pushes z beyond centre + 3σ_t and sets the EWMA bit."""
    eng = Engine([Spec("ewma", center=10.0, sigma=1.0, ewma_lambda=0.2, ewma_L=3.0)])
    pts = eng.process([0, 0, 0], [11.0, 9.0, 30.0])
    assert pts.ewma[:2].tolist() == pytest.approx([10.2, 9.96])
    assert pts.sigma[0] == pytest.approx(0.2)
    assert pts.sigma[1] == pytest.approx(math.sqrt(0.2 / 1.8 * (1 - 0.8**4)))
    assert pts.statistic.tolist() == [11.0, 9.0, 30.0]
    assert pts.mask.tolist() == [0, 0, int(B["EWMA"])]


def test_ewma_missing_point_and_subgroups() -> None:
    """A subgroup with no observation is skipped: t does not advance, the row is NaN."""
    eng = Engine([Spec("ewma", center=0.0, sigma=2.0, subgroup_size=2)])
    pts = eng.process([0] * 6, [1.0, 1.0, NAN, NAN, 2.0, 2.0])
    assert np.isnan(pts.ewma[1]) and np.isnan(pts.ucl[1])
    assert pts.ewma[2] == pytest.approx(0.2 * 2 + 0.8 * 0.2)
    assert pts.sigma[2] == pytest.approx(2 / math.sqrt(2) * math.sqrt(0.2 / 1.8 * (1 - 0.8**4)))


def test_cusum_hand_computed_and_reset() -> None:
    """μ0 = 10, σ = 1, k = 0.5, h = 4, head start 2: x = 13, 13, 13, 10 gives
    C⁺ = 4.5, 7, 9.5, 9 without reset (signals at every point); with reset the sums
    restart at the head start after each signal: 4.5, 4.5, 4.5, 1.5."""
    kw = dict(center=10.0, sigma=1.0, cusum_k=0.5, cusum_h=4.0, cusum_head_start=2.0)
    eng = Engine([Spec("cusum", **kw), Spec("cusum", cusum_reset=True, **kw)])
    x = [13.0, 13.0, 13.0, 10.0]
    pts = eng.process([0, 1] * 4, np.repeat(x, 2))
    plain, reset = pts.of(0), pts.of(1)
    assert plain.cusum_upper.tolist() == [4.5, 7.0, 9.5, 9.0]
    assert reset.cusum_upper.tolist() == [4.5, 4.5, 4.5, 1.5]
    assert reset.cusum_lower.tolist() == [0.0, 0.0, 0.0, -1.5]  # −2 + 0 + 0.5 after a reset
    up = int(B["CUSUM_UPPER"])
    assert plain.mask.tolist() == [up] * 4
    assert reset.mask.tolist() == [up, up, up, 0]
    assert plain.center.tolist() == [0.0] * 4 and plain.ucl.tolist() == [4.0] * 4
    assert plain.lcl.tolist() == [-4.0] * 4 and plain.sigma.tolist() == [1.0] * 4
    low = Engine([Spec("cusum", center=0.0, sigma=1.0, cusum_h=1.0)]).process([0], [-3.0])
    assert low.cusum_lower.tolist() == [-2.5] and low.mask.tolist() == [int(B["CUSUM_LOWER"])]


def test_cusum_reset_matches_cusum_series() -> None:
    """The engine's reset equals cusum_series(reset=True) (the live-engine option)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 1.0, 200)
    spec = Spec("cusum", center=0.0, sigma=1.0, cusum_h=2.0, cusum_reset=True)
    eng = Engine([spec])
    pts = feed(eng, 0, x)
    ref = batch_reference(spec, [Segment(x, Estimate(0.0, 1.0, "known"))])
    assert_matches(pts, ref)
    assert pts.mask.any()


# --------------------------------------------------------------------------- Phase I / II


def test_set_limits_mid_stream_continues_windows() -> None:
    """A new record judges the next point; N2's run of 9 continues across the change
    (spc-semantics: run-rule windows continue across the Phase I/II boundary)."""
    spec = Spec("imr", center=0.0, sigma=1.0)
    eng = Engine([spec])
    rec = LimitsRecord("imr", center=-0.5, sigma=2.0, method="mr", n_points=30)
    a = eng.process([0] * 5, [0.5] * 5)
    eng.set_limits(0, rec)
    assert eng.limits_id(0) == rec.id
    b = eng.process([0] * 5, [0.5] * 5)
    assert b.center.tolist() == [-0.5] * 5 and b.ucl.tolist() == [5.5] * 5
    assert b.mask.tolist()[3:] == [int(B["N2"])] * 2  # points 9 and 10 of the run
    assert eng.limits_ids[b.limits[0]] == rec.id and a.limits[0] != b.limits[0]
    ref = batch_reference(
        spec,
        [
            Segment(np.full(5, 0.5), Estimate(0.0, 1.0, "known")),
            Segment(np.full(5, 0.5), rec.estimate),
        ],
    )
    assert_matches(Points.concat([a, b]), ref)


def test_set_limits_applies_to_the_open_subgroup() -> None:
    """The subgroup open when the record changes is judged against the new record."""
    eng = Engine([Spec("xbar-s", center=0.0, sigma=1.0, subgroup_size=2)])
    eng.process([0], [1.0])
    eng.set_limits([0], Estimate(center=1.0, sigma=4.0, method="known"))
    pts = eng.process([0], [1.0])
    assert pts.center.tolist() == [1.0] and pts.sigma.tolist() == [4.0 / math.sqrt(2)]
    assert eng.limits_id(0) == ""


def test_set_limits_adopts_record_params_and_checks_chart() -> None:
    eng = Engine([Spec("ewma", center=0.0, sigma=1.0), Spec("imr", center=0.0, sigma=1.0)])
    rec = LimitsRecord(
        "ewma", 5.0, 2.0, "mr", 20, params=(("ewma_L", 2.5), ("ewma_lambda", 0.5), ("nsigmas", 3.0))
    )
    eng.set_limits(0, rec)
    pts = eng.process([0], [5.0])
    # no point plotted yet: z0 restarts at the new centre
    assert pts.ewma.tolist() == [5.0]
    assert pts.ucl[0] == pytest.approx(5.0 + 2.5 * 2.0 * math.sqrt(0.5 / 1.5 * (1 - 0.5**2)))
    with pytest.raises(SpcInputError, match=r"record\.chart"):
        eng.set_limits(1, rec)
    with pytest.raises(SpcInputError, match="idx"):
        eng.set_limits(7, rec)
    spec = Spec.from_limits("ewma", rec)
    assert (spec.ewma_lambda, spec.ewma_L, spec.limits_id) == (0.5, 2.5, rec.id)
    bad = LimitsRecord("ewma", 5.0, 2.0, "mr", 20, params=(("ewma_lambda", 1.5),))
    with pytest.raises(SpcInputError, match=r"record\.params\.ewma_lambda"):
        eng.set_limits(0, bad)
    with pytest.raises(SpcInputError, match=r"record\.sigma"):
        eng.set_limits(0, Estimate(5.0, -1.0, "known"))


# --------------------------------------------------------------------------- batches


def test_micro_batch_interleaving_and_row_order() -> None:
    """Samples of one characteristic are taken in arrival order; rows follow arrival order."""
    eng = Engine([Spec("imr", 0.0, 1.0), Spec("c", 3.0), Spec("ewma", 0.0, 1.0)])
    pts = eng.process([1, 0, 0, 2, 1, 0], [2.0, 1.0, 2.0, 0.5, 4.0, 3.0])
    assert pts.char.tolist() == [1, 0, 0, 2, 1, 0]
    assert pts.point.tolist() == [0, 0, 1, 0, 1, 2]
    assert pts.statistic.tolist() == [2.0, 1.0, 2.0, 0.5, 4.0, 3.0]
    assert np.array_equal(pts.disp_statistic, [NAN, NAN, 1.0, NAN, NAN, 1.0], equal_nan=True)


def test_empty_batch_and_points_helpers() -> None:
    eng = Engine([Spec("imr", 0.0, 1.0)])
    pts = eng.process([], [])
    assert len(pts) == 0 and pts.mask.dtype == np.uint32
    assert len(Points.concat([])) == 0


def test_validation_before_any_state_change() -> None:
    eng = Engine([Spec("imr", 0.0, 1.0), Spec("p", 0.1), Spec("u", 1.0)])
    with pytest.raises(SpcInputError, match="idx"):
        eng.process([3], [1.0])
    with pytest.raises(SpcInputError, match=r"value\[1\]"):
        eng.process([0, 0], [1.0, math.inf])
    with pytest.raises(SpcInputError, match="size"):
        eng.process([1], [1.0])
    with pytest.raises(SpcInputError, match=r"value\[1\]"):
        eng.process([0, 1], [1.0, 5.0], [1.0, 4.0])  # count above its size
    with pytest.raises(SpcInputError, match=r"size\[0\]"):
        eng.process([2], [1.0], [0.0])
    with pytest.raises(SpcInputError, match=r"value\[0\]"):
        eng.process([2], [-1.0], [1.0])
    with pytest.raises(SpcInputError, match="value"):
        eng.process([0, 0], [1.0])
    # nothing was consumed by the failed calls
    assert eng.process([0], [1.0]).point.tolist() == [0]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (Spec("bogus", 0.0, 1.0), "specs[0].chart"),
        (Spec("imr", 0.0, 1.0, subgroup_size=2), "specs[0].subgroup_size"),
        (Spec("xbar-r", 0.0, 1.0, subgroup_size=1), "specs[0].subgroup_size"),
        (Spec("imr", 0.0, -1.0), "specs[0].sigma"),
        (Spec("imr", math.nan, 1.0), "specs[0].center"),
        (Spec("p", 1.5), "specs[0].center"),
        (Spec("imr", 0.0, 1.0, nsigmas=0.0), "specs[0].nsigmas"),
        (Spec("ewma", 0.0, 1.0, ewma_lambda=1.5), "specs[0].ewma_lambda"),
        (Spec("cusum", 0.0, 1.0, cusum_h=0.0), "specs[0].cusum_h"),
        (Spec("imr", 0.0, 1.0, rules=["N9"]), "specs[0].rules[0]"),
        (Spec("ewma", 0.0, 1.0, rules="nelson"), "specs[0].rules"),
        (Spec("p", 0.1, rules_dispersion=["N1"]), "specs[0].rules_dispersion"),
    ],
)
def test_bad_specs(spec: Spec, path: str) -> None:
    eng = Engine([Spec("imr", 0.0, 1.0)])
    with pytest.raises(SpcInputError) as err:
        eng.add([spec])
    assert err.value.path == path
    assert len(eng) == 1


def test_rule_configs_defaults_and_overrides() -> None:
    """Centre defaults to nelson, the dispersion chart to the centre's rule 1 (as analyze);
    rule_params override a rule's parameters."""
    eng = Engine(
        [
            Spec("imr", 0.0, 1.0),
            Spec("imr", 0.0, 1.0, rules="we"),
            Spec("imr", 0.0, 1.0, rules=["N2"], rule_params={"N2": {"run": 3}}),
        ]
    )
    assert eng.rule_configs(0)[0].codes == rules.RULE_SETS["nelson"]
    assert eng.rule_configs(0)[1].codes == ("N1",)
    assert eng.rule_configs(1)[1].codes == ("WE1",)
    assert eng.rule_configs(2)[1].codes == ()
    pts = eng.process([2, 2, 2], [1.0, 1.0, 1.0])
    assert pts.mask.tolist() == [0, 0, int(B["N2"])]


# --------------------------------------------------------------------------- equals analyze


def _analyze_case(chart: str) -> tuple[dict[str, Any], Spec, list[float], list[float] | None]:
    # a fixed seed per chart (hash() of a str changes from process to process)
    rng = np.random.default_rng(zlib.crc32(chart.encode()))
    if chart in ("p", "np", "c", "u"):
        sizes = rng.integers(20, 60, 40).astype(float)
        counts = rng.binomial(sizes.astype(int), 0.1).astype(float)
        counts[7] = 15.0
        center = 0.12 if chart in ("p", "np") else 4.0
        if chart == "u":
            center = 0.1
        req = {"chart": chart, "data": counts.tolist(), "known": {"center": center}}
        if chart != "c":
            req["sizes"] = sizes.tolist()
        return req, Spec(chart, center), counts.tolist(), (None if chart == "c" else sizes.tolist())
    m = 1 if chart in ("imr", "cusum") else 4
    data = rng.normal(5.0, 1.0, (40, m))
    data[20:30] += 1.5
    data[3, 0] = np.nan
    req: dict[str, Any] = {"chart": chart, "known": {"center": 5.0, "sigma": 1.0}}
    req["data"] = (
        [[None if np.isnan(x) else float(x) for x in row] for row in data]
        if m > 1
        else [None if np.isnan(x) else float(x) for x in data[:, 0]]
    )
    return req, Spec(chart, 5.0, 1.0, subgroup_size=m), data.ravel().tolist(), None


@pytest.mark.parametrize("chart", CHARTS)
def test_engine_equals_analyze(chart: str) -> None:
    """A request with ``known`` centre+σ equal to the engine's frozen limits gives the
    same statistics, limits and violations (contracts/analyze.md; nulls are NaN)."""
    req, spec, values, sizes = _analyze_case(chart)
    resp = analyze_json(req)
    eng = Engine([spec])
    pts = feed(eng, 0, values, sizes)
    main = resp["charts"][0]

    def arr(xs: list[Any]) -> np.ndarray:
        return np.array([NAN if x is None else x for x in xs], dtype=float)

    # analyze reports NaN as null, so compare positions where the engine has a number
    for col, key in (
        ("statistic", "statistics"),
        ("center", "center"),
        ("lcl", "lcl"),
        ("ucl", "ucl"),
        ("sigma", "sigma"),
        ("n", "n"),
    ):
        assert np.array_equal(getattr(pts, col), arr(main[key]), equal_nan=True), col
    for code, where in main["violations"].items():
        assert np.flatnonzero(pts.mask & B[code]).tolist() == where, code
    if chart == "ewma":
        assert np.array_equal(pts.ewma, arr(main["ewma"]), equal_nan=True)
    if chart == "cusum":
        assert np.array_equal(pts.cusum_upper, arr(main["cusum_upper"]), equal_nan=True)
        assert np.array_equal(pts.cusum_lower, arr(main["cusum_lower"]), equal_nan=True)
    if len(resp["charts"]) > 1:
        disp = resp["charts"][1]
        for col, key in (
            ("disp_statistic", "statistics"),
            ("disp_ucl", "ucl"),
            ("disp_sigma", "sigma"),
        ):
            assert np.array_equal(getattr(pts, col), arr(disp[key]), equal_nan=True), col
        for code, where in disp["violations"].items():
            assert np.flatnonzero(pts.disp_mask & B[code]).tolist() == where, code
    assert int(pts.mask.astype(bool).sum()) > 0


# --------------------------------------------------------------------------- persistence and size


def test_snapshot_restore_continues_exactly() -> None:
    rng = np.random.default_rng(11)
    specs = [
        Spec("imr", 0.0, 1.0),
        Spec("xbar-r", 0.0, 1.0, subgroup_size=5),
        Spec("ewma", 0.0, 1.0, subgroup_size=3),
        Spec("cusum", 0.0, 1.0, cusum_reset=True, cusum_h=2.0),
        Spec("u", 2.0, rules="we", limits_id="L-x"),
        Spec(
            "imr",
            0.0,
            1.0,
            rules=["N2", "N5", "N7", "N3"],
            rule_params={"N2": {"run": 3}, "N5": {"k": 3, "m": 4, "level": 1.5}},
        ),
    ]
    idx = np.tile(np.arange(6), 60)
    vals = rng.normal(0.3, 1.0, idx.size)
    vals[idx == 4] = rng.poisson(2.0, 60)
    sizes = np.ones(idx.size)
    a = Engine(specs)
    first = a.process(idx[:137], vals[:137], sizes[:137])
    b = Engine.restore(a.snapshot())
    assert b.nbytes == a.nbytes and b.limits_id(4) == "L-x"
    assert [b.rule_configs(i) for i in range(6)] == [a.rule_configs(i) for i in range(6)]
    rest_a = a.process(idx[137:], vals[137:], sizes[137:])
    rest_b = b.process(idx[137:], vals[137:], sizes[137:])
    assert len(first) > 0
    for c in ("char", "point", *ALL_COLS):
        assert np.array_equal(getattr(rest_a, c), getattr(rest_b, c), equal_nan=True), c
    with pytest.raises(SpcInputError):
        Engine.restore(b"not a snapshot")


def test_snapshot_arrays_taken_now_encode_later_to_the_state_of_now() -> None:
    """snapshot_arrays() copies: encoding them after the engine moved on still restores the
    engine as it was when they were taken (the gateway encodes them off its event loop)."""
    rng = np.random.default_rng(5)
    specs = [Spec("imr", 0.0, 1.0), Spec("xbar-r", 0.0, 1.0, subgroup_size=4), Spec("imr", 1, 2)]
    idx = np.tile(np.arange(3), 80)
    vals = rng.normal(0.5, 1.0, idx.size)
    a = Engine(specs)
    a.process(idx[:101], vals[:101])
    parts = a.snapshot_arrays()
    b = Engine.restore(a.snapshot())  # the state now, encoded now
    a.process(idx[101:170], vals[101:170])  # the engine moves on before the encoding
    c = Engine.restore(encode_snapshot(parts))
    rest_b = b.process(idx[101:], vals[101:])
    rest_c = c.process(idx[101:], vals[101:])
    assert len(rest_b) > 0
    for col in ("char", "point", *ALL_COLS):
        assert np.array_equal(getattr(rest_b, col), getattr(rest_c, col), equal_nan=True), col


def test_bytes_per_characteristic_imr_nelson() -> None:
    """The target: ≤ 256 bytes of state per I-MR characteristic with all Nelson rules."""
    eng = Engine([Spec("imr", 0.0, 1.0)] * 1000)
    assert eng.bytes_per_characteristic <= 256
    assert eng.nbytes == pytest.approx(1000 * eng.bytes_per_characteristic)


@pytest.mark.parametrize("chart", CHARTS)
def test_points_columns_dtypes_and_independence(chart: str) -> None:
    """Every column has its promised dtype for every chart kind and fast path, and a
    Points result does not change when the engine later moves on or adopts new limits."""
    m = 2 if chart in ("xbar-r", "xbar-s") else 1
    center = 0.1 if chart in ("p", "np") else 1.0
    eng = Engine([Spec(chart, center, 1.0, subgroup_size=m)] * 3)
    idx = np.repeat(np.arange(3), m)
    pts = eng.process(np.tile(np.arange(3), m), np.ones(3 * m), np.full(3 * m, 4.0))
    slow = eng.process(idx[::-1].copy(), np.ones(3 * m), np.full(3 * m, 4.0))
    for p in (pts, slow):
        assert len(p) == 3
        for name in ("char", "point", "mask", "disp_mask", "limits"):
            assert getattr(p, name).dtype == {
                "char": np.intp,
                "point": np.int64,
                "limits": np.int32,
            }.get(name, np.uint32), name
        for name in ALL_COLS:
            if "mask" not in name:
                assert getattr(p, name).dtype == np.float64, name
    before = {name: getattr(pts, name).copy() for name in ("char", "point", *ALL_COLS)}
    eng.set_limits([0, 1, 2], Estimate(0.2, 2.0, "known"))
    eng.process(np.arange(3), [2.0, 2.0, 2.0], [4.0, 4.0, 4.0])
    for name, arr in before.items():
        assert np.array_equal(getattr(pts, name), arr, equal_nan=True), name


@pytest.mark.parametrize("lam", [0.01, 0.05, 0.2, 0.7, 1.0])
def test_ewma_long_series_past_factor_saturation(lam: float) -> None:
    """Past ewma_saturation(λ) the engine skips pow; limits stay bit-identical to ewma_series
    (also once (1−λ)^(2t) is subnormal), and the factor there is exactly √(λ/(2−λ))."""
    t_sat = float(ewma_saturation(lam))
    ts = np.arange(t_sat, t_sat + 3000.0)
    assert np.all(ewma_factor(lam, ts) == np.sqrt(lam / (2.0 - lam)))
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, 2500)
    spec = Spec("ewma", center=0.0, sigma=1.0, ewma_lambda=lam)
    eng = Engine([spec])
    pts = Points.concat(
        [eng.process(np.zeros(50, np.intp), x[i : i + 50]) for i in range(0, 2500, 50)]
    )
    assert_matches(pts, batch_reference(spec, [Segment(x, Estimate(0.0, 1.0, "known"))]))
