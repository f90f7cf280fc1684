"""Streaming equals batch (spc-semantics.md): property tests of the engine.

Several characteristics of random chart kinds get random series (missing
observations, ties, values exactly on zone lines, constant data with σ = 0),
are interleaved at random, split into random micro-batches (all at once, one
sample per call, or anything between), optionally get a new limits record
mid-stream (possibly while a subgroup is open) and are optionally snapshotted
and restored at a random batch boundary. Every column of every point must
equal the batch path (:func:`tests.spc.test_engine.batch_reference`) exactly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spc.engine import CHARTS, Engine, Points, Spec
from spc.limits import LimitsRecord
from spc.series import Estimate
from tests.spc.test_engine import Segment, assert_matches, batch_reference

NAN = math.nan
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Z_GRID = [0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0]
RULE_CHOICES = ["nelson", "we", ["N1", "N3", "N4"], ["N2", "N7", "N8"], "none"]


@dataclass
class Char:
    """One characteristic of an example: its spec, samples and optional mid-stream record."""

    spec: Spec
    values: list[float]
    sizes: list[float] | None
    switch_sample: int | None  # samples fed before the new record is set
    switch_point: int | None  # first point judged against it
    record: LimitsRecord | None


@st.composite
def variable_values(draw, n: int, center: float, sigma: float) -> list[float]:
    mode = draw(st.sampled_from(["grid", "float", "constant", "mixed"]))
    if mode == "constant":
        c = draw(st.sampled_from([center, center + sigma, 1.25]))
        return [c] * n
    grid = st.sampled_from(Z_GRID).map(lambda z: center + z * sigma)
    floats = st.floats(-20.0, 20.0, allow_nan=False).map(lambda x: round(x, 2))
    missing = st.just(NAN)
    if mode == "grid":
        one = st.one_of(grid, missing)
    elif mode == "float":
        one = st.one_of(floats, missing)
    else:
        one = st.one_of(grid, floats, missing, st.sampled_from([center, center + 1.0]))
    return draw(st.lists(one, min_size=n, max_size=n))


@st.composite
def characteristic(draw, chart: str | None = None) -> Char:
    if chart is None:
        chart = draw(st.sampled_from(CHARTS))
    npts = draw(st.integers(0, 28))
    if chart in ("xbar-r", "xbar-s"):
        m = draw(st.sampled_from([2, 3, 4, 5, 9, 10]))
    elif chart in ("ewma", "cusum"):
        m = draw(st.sampled_from([1, 1, 2, 4]))
    else:
        m = 1
    nsig = draw(st.sampled_from([3.0, 2.0, 2.5]))
    kw: dict = {"nsigmas": nsig, "subgroup_size": m, "limits_id": "L-a"}
    sizes = None
    if chart in ("p", "np", "c", "u"):
        if chart in ("p", "np"):
            center = draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 1.0]))
        else:
            center = draw(st.sampled_from([0.0, 0.5, 2.0, 4.0]))
        sigma = NAN
        if chart == "u":
            sizes = draw(
                st.lists(st.sampled_from([0.5, 1.0, 2.5, 4.0]), min_size=npts, max_size=npts)
            )
        else:
            sizes = draw(st.lists(st.integers(1, 30).map(float), min_size=npts, max_size=npts))
        values = []
        for s in sizes:
            top = int(s) if chart in ("p", "np") else 12
            values.append(draw(st.one_of(st.integers(0, top).map(float), st.just(NAN))))
        if chart == "c" and draw(st.booleans()):
            sizes = None
        kw["rules"] = draw(st.sampled_from(RULE_CHOICES))
    else:
        center = draw(st.sampled_from([0.0, 1.5, 10.0, -3.0]))
        sigma = draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]))
        values = draw(variable_values(npts * m, center, sigma))
        if chart == "ewma":
            kw["ewma_lambda"] = draw(st.sampled_from([0.05, 0.2, 0.5, 1.0]))
            kw["ewma_L"] = draw(st.sampled_from([3.0, 2.7]))
        elif chart == "cusum":
            kw["cusum_k"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
            kw["cusum_h"] = draw(st.sampled_from([1.0, 4.0, 5.0]))
            kw["cusum_head_start"] = draw(st.sampled_from([0.0, 0.5, 2.0]))
            kw["cusum_reset"] = draw(st.booleans())
        else:
            kw["rules"] = draw(st.sampled_from(RULE_CHOICES))
            kw["rules_dispersion"] = draw(st.sampled_from([None, "nelson", ["N1", "N2"]]))
    spec = Spec(chart, center, sigma, **kw)
    switch_sample = switch_point = record = None
    if npts and draw(st.booleans()):
        j = draw(st.integers(0, npts))
        partial = draw(st.integers(0, m - 1)) if j < npts else 0
        switch_point, switch_sample = j, j * m + partial
        params = [("nsigmas", draw(st.sampled_from([nsig, 3.0, 1.5])))]
        if chart == "ewma":
            params.append(("ewma_lambda", draw(st.sampled_from([0.1, 0.3]))))
        if chart == "cusum":
            params.append(("cusum_h", draw(st.sampled_from([2.0, 3.0]))))
        if chart in ("p", "np"):
            c2, s2 = draw(st.sampled_from([0.02, 0.2, 0.5])), NAN
        elif chart in ("c", "u"):
            c2, s2 = draw(st.sampled_from([1.0, 3.0])), NAN
        else:
            c2 = center + draw(st.sampled_from([0.0, 0.5, -1.0]))
            s2 = draw(st.sampled_from([1.0, 0.25, 4.0]))
        record = LimitsRecord(chart, c2, s2, "known", npts, params=tuple(sorted(params)))
    return Char(spec, values, sizes, switch_sample, switch_point, record)


def _reference(ch: Char) -> dict[str, np.ndarray]:
    spec, m = ch.spec, ch.spec.subgroup_size
    v = np.array(ch.values, dtype=float)
    sz = None if ch.sizes is None else np.array(ch.sizes, dtype=float)
    est1 = Estimate(spec.center, spec.sigma, "known")
    if ch.record is None:
        return batch_reference(spec, [Segment(v, est1, sz)])
    j = ch.switch_point
    cut = j * m
    segs = [
        Segment(v[:cut], est1, None if sz is None else sz[:cut]),
        Segment(
            v[cut:], ch.record.estimate, None if sz is None else sz[cut:], dict(ch.record.params)
        ),
    ]
    if spec.chart == "ewma" and not _plotted(v[:cut], m):
        # an EWMA that has plotted nothing restarts at the new centre (z0 = centre)
        return _ewma_fresh(spec, segs)
    return batch_reference(spec, segs)


def _plotted(v: np.ndarray, m: int) -> bool:
    if v.size == 0:
        return False
    return bool((~np.isnan(v.reshape(-1, m))).any(axis=1).any())


def _ewma_fresh(spec: Spec, segs: list[Segment]) -> dict[str, np.ndarray]:
    """Phase I points all missing: the rows are NaN, then the EWMA starts at the new centre."""
    first = batch_reference(spec, [segs[0]])
    second = batch_reference(spec, [segs[1]])
    return {k: np.concatenate([first[k], second[k]]) for k in first}


@st.composite
def scenario(draw):
    chars = draw(st.lists(characteristic(), min_size=1, max_size=4))
    labels = [i for i, ch in enumerate(chars) for _ in ch.values]
    order = draw(st.permutations(labels)) if labels else []
    mode = draw(st.sampled_from(["random", "single", "whole"]))
    total = len(order)
    if mode == "single":
        cuts = set(range(1, total))
    elif mode == "whole":
        cuts = set()
    else:
        cuts = set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=12)))
    snap_at = draw(st.one_of(st.none(), st.integers(0, total)))
    return chars, order, cuts, snap_at


def _stream(chars: list[Char], order: list[int]) -> list[tuple[int, int]]:
    """(characteristic, sample number) in arrival order: the k-th occurrence of a label is sample k."""
    seen = [0] * len(chars)
    out = []
    for label in order:
        out.append((label, seen[label]))
        seen[label] += 1
    return out


def _arrays(chars: list[Char], stream: list[tuple[int, int]]):
    idx = np.array([c for c, _ in stream], dtype=np.intp)
    vals = np.array([chars[c].values[k] for c, k in stream], dtype=float)
    sizes = np.array(
        [NAN if chars[c].sizes is None else chars[c].sizes[k] for c, k in stream], dtype=float
    )
    return idx, vals, sizes


@SETTINGS
@given(scenario())
def test_stream_equals_batch(case) -> None:
    chars, order, cuts, snap_at = case
    stream = _stream(chars, order)
    idx, vals, sizes = _arrays(chars, stream)
    # a record is set right after the characteristic's switch_sample-th sample
    switches: dict[int, list[int]] = {}
    for i, ch in enumerate(chars):
        if ch.record is not None:
            fed = np.cumsum(np.concatenate([[0], idx == i]))
            pos = int(np.flatnonzero(fed == ch.switch_sample)[0])
            switches.setdefault(pos, []).append(i)
    extra = [] if snap_at is None else [snap_at]
    bounds = sorted({0, len(stream), *cuts, *switches, *extra})
    eng = Engine([ch.spec for ch in chars])
    parts = []
    for a, b in itertools.pairwise(bounds):
        if snap_at == a:
            eng = Engine.restore(eng.snapshot())
        for i in switches.get(a, []):
            eng.set_limits(i, chars[i].record)
        parts.append(eng.process(idx[a:b], vals[a:b], sizes[a:b]))
    pts = Points.concat(parts)
    for i, ch in enumerate(chars):
        got = pts.of(i)
        assert_matches(got, _reference(ch))
        if ch.record is not None:
            ids = np.array(eng.limits_ids)[got.limits]
            assert (ids[: ch.switch_point] == "L-a").all()
            assert (ids[ch.switch_point :] == ch.record.id).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.data())
def test_snapshot_restore_equals_uninterrupted(case, data) -> None:
    """Restoring a snapshot at any sample gives exactly the uninterrupted engine's points."""
    chars, order, _, _ = case
    idx, vals, sizes = _arrays(chars, _stream(chars, order))
    specs = [ch.spec for ch in chars]
    cut = data.draw(st.integers(0, idx.size))
    whole = Engine(specs).process(idx, vals, sizes)
    first = Engine(specs)
    a = first.process(idx[:cut], vals[:cut], sizes[:cut])
    restored = Engine.restore(first.snapshot())
    b = restored.process(idx[cut:], vals[cut:], sizes[cut:])
    both = Points.concat([a, b])
    for name in Points.__dataclass_fields__:
        assert np.array_equal(getattr(both, name), getattr(whole, name), equal_nan=True), name
    assert restored.nbytes == first.nbytes
