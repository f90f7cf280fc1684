"""The engine's fast paths equal the batch path (spc-semantics.md, "Streaming equals batch").

``Engine.process`` takes different routes for a tick that holds every
characteristic once in index order (slices instead of gathers, kind groups
found at ``add``), a contiguous part of them, a permutation (gathers), and the
I-MR/EWMA/CUSUM fast kernels read limits from the matrix derived at ``add`` /
``set_limits`` / ``restore``. These properties feed one sample per
characteristic per tick through all of them, with mid-stream limits records and
a snapshot/restore, and compare every column with the batch reference.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spc.engine import CHARTS, Engine, Points, Spec
from tests.spc.test_engine import ALL_COLS, Segment, assert_matches, batch_reference
from tests.spc.test_engine_properties import Char, _reference, characteristic

NAN = math.nan
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ["order", "order", "order", "reverse", "shuffle", "sub"]


@st.composite
def tick_scenario(draw):
    if draw(st.booleans()):
        chart = draw(st.sampled_from(CHARTS))  # one kind: the single-kind route
        chars = draw(st.lists(characteristic(chart), min_size=1, max_size=6))
    else:
        chars = draw(st.lists(characteristic(), min_size=1, max_size=6))
    if draw(st.booleans()):
        # no missing values: the all-finite fast kernels
        chars = [dataclasses.replace(ch, values=_filled(ch)) for ch in chars]
        if draw(st.booleans()):
            # EWMA/CUSUM on individual values with σ > 0: their fast kernels too
            chars = [_individual(ch) for ch in chars]
    modes = draw(st.lists(st.sampled_from(MODES), min_size=1, max_size=6))
    snap_at = draw(st.one_of(st.none(), st.integers(0, 30)))
    seed = draw(st.integers(0, 2**32 - 1))
    return chars, modes, snap_at, seed


def _filled(ch: Char) -> list[float]:
    fill = 0.0 if ch.spec.chart in ("p", "np", "c", "u") else ch.spec.center
    return [fill if math.isnan(v) else v for v in ch.values]


def _individual(ch: Char) -> Char:
    if ch.spec.chart not in ("ewma", "cusum"):
        return ch
    sigma = ch.spec.sigma if ch.spec.sigma > 0 else 1.0
    spec = dataclasses.replace(ch.spec, subgroup_size=1, sigma=sigma)
    # every sample is a point now: the record switches at the same sample
    return dataclasses.replace(ch, spec=spec, switch_point=ch.switch_sample)


def _tick_order(active: list[int], mode: str, rng: np.random.Generator) -> list[int]:
    if mode == "reverse":
        return active[::-1]
    if mode == "shuffle":
        return [active[j] for j in rng.permutation(len(active))]
    if mode == "sub" and len(active) > 1:
        a = int(rng.integers(0, len(active)))
        b = int(rng.integers(a + 1, len(active) + 1))
        return active[a:b]
    return active


def _feed_ticks(chars: list[Char], modes: list[str], snap_at: int | None, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    eng = Engine([ch.spec for ch in chars])
    fed = [0] * len(chars)
    switched = [False] * len(chars)
    parts = []
    t = 0
    while True:
        active = [i for i, ch in enumerate(chars) if fed[i] < len(ch.values)]
        if not active:
            break
        if snap_at == t:
            eng = Engine.restore(eng.snapshot())
        for i, ch in enumerate(chars):
            if ch.record is not None and not switched[i] and fed[i] == ch.switch_sample:
                eng.set_limits(i, ch.record)
                switched[i] = True
        order = _tick_order(active, modes[t % len(modes)], rng)
        idx = np.array(order, dtype=np.intp)
        vals = np.array([chars[i].values[fed[i]] for i in order])
        sizes = np.array([NAN if chars[i].sizes is None else chars[i].sizes[fed[i]] for i in order])
        parts.append(eng.process(idx, vals, sizes))
        for i in order:
            fed[i] += 1
        t += 1
    for i, ch in enumerate(chars):
        # a record set after the last sample: set it anyway (as the reference expects)
        if ch.record is not None and not switched[i]:
            eng.set_limits(i, ch.record)
    return eng, Points.concat(parts)


@SETTINGS
@given(tick_scenario())
def test_ticks_equal_batch(case) -> None:
    """One sample per characteristic per tick, in index order (slices), reversed or
    shuffled (gathers) or a contiguous part: every column equals the batch path."""
    chars, modes, snap_at, seed = case
    eng, pts = _feed_ticks(chars, modes, snap_at, seed)
    for i, ch in enumerate(chars):
        got = pts.of(i)
        assert_matches(got, _reference(ch))
        if ch.record is not None:
            ids = np.array(eng.limits_ids)[got.limits]
            assert (ids[: ch.switch_point] == "L-a").all()
            assert (ids[ch.switch_point :] == ch.record.id).all()


@SETTINGS
@given(tick_scenario())
def test_tick_rows_follow_arrival_order(case) -> None:
    """Rows of a tick follow the arrival order of their completing samples, whatever the route."""
    chars, modes, _, seed = case
    rng = np.random.default_rng(seed)
    eng = Engine([ch.spec for ch in chars])
    fed = [0] * len(chars)
    for t in range(min(len(ch.values) for ch in chars)):
        order = _tick_order(list(range(len(chars))), modes[t % len(modes)], rng)
        idx = np.array(order, dtype=np.intp)
        vals = np.array([chars[i].values[fed[i]] for i in order])
        sizes = np.array([NAN if chars[i].sizes is None else chars[i].sizes[fed[i]] for i in order])
        pts = eng.process(idx, vals, sizes)
        for i in order:
            fed[i] += 1
        # an m = 1 characteristic completes a point per sample, a subgroup every m samples
        done = [i for i in order if fed[i] % chars[i].spec.subgroup_size == 0]
        assert pts.char.tolist() == done


def _mixed_specs() -> list[Spec]:
    return [
        Spec("imr", 10.0, 2.0),
        Spec("imr", 0.0, 1.0, rules=["N1"], nsigmas=1.0),  # MR LCL above 0
        Spec("ewma", 0.0, 1.0, ewma_lambda=0.5),
        Spec("cusum", 1.0, 0.5, cusum_reset=True, cusum_h=2.0),
        Spec("xbar-r", 0.0, 1.0, subgroup_size=3),
        Spec("c", 2.0),
        Spec("imr", -3.0, 0.5, rules="we"),
        Spec("ewma", 5.0, 2.0, subgroup_size=2),
        Spec("cusum", 0.0, 0.0),  # σ = 0: the CUSUM slow path
        Spec("u", 1.5),
    ]


def _per_sample_specs() -> list[Spec]:
    """Kinds that plot one point per sample: one float block for the whole tick."""
    return [
        Spec("imr", 10.0, 2.0),
        Spec("ewma", 0.0, 1.0, ewma_lambda=0.5),
        Spec("cusum", 1.0, 0.5, cusum_reset=True, cusum_h=2.0),
        Spec("c", 2.0),
        Spec("imr", -3.0, 0.5, rules="we"),
        Spec("u", 1.5),
        Spec("ewma", 5.0, 2.0, ewma_lambda=0.05),
        Spec("cusum", 0.0, 2.0),
        Spec("imr", 0.0, 1.0),
    ]


@pytest.mark.parametrize("missing", [0.0, 0.05])
@pytest.mark.parametrize("make", [_mixed_specs, _per_sample_specs])
def test_whole_ticks_mixed_kinds_interleaved_and_contiguous(make, missing: float) -> None:
    """Kind groups found at add(): contiguous (slices) and interleaved (index arrays);
    whole ticks, parts of them and permuted ticks equal the batch reference."""
    base = make()
    rng = np.random.default_rng(17)
    for specs in (base, sorted(base, key=lambda s: CHARTS.index(s.chart))):
        K = len(specs)
        eng = Engine(specs)
        T = 60
        x = rng.normal(0.5, 1.5, (T, K))
        for j, sp in enumerate(specs):
            if sp.chart in ("c", "u"):
                x[:, j] = rng.poisson(2.0, T)
        x[rng.random((T, K)) < missing] = NAN
        sizes = np.tile(rng.choice([0.5, 1.0, 2.0], K), (T, 1))
        parts = []
        for t in range(T):
            if t % 3 == 1:  # the characteristics in reverse: gathered
                order = np.arange(K)[::-1].copy()
            elif t % 3 == 2:  # all but the first: a run from 1
                order = np.arange(1, K)
                parts.append(eng.process([0], x[t, :1], sizes[t, :1]))
            else:
                order = np.arange(K)
            parts.append(eng.process(order, x[t, order], sizes[t, order]))
        pts = Points.concat(parts)
        for j, sp in enumerate(specs):
            est = Segment(x[:, j], _estimate(sp), sizes[:, j] if sp.chart == "u" else None)
            assert_matches(pts.of(j), batch_reference(sp, [est]), ALL_COLS)
        assert eng._groups  # found at add


def _estimate(spec: Spec):
    from spc.series import Estimate

    return Estimate(spec.center, spec.sigma, "known")


def test_points_do_not_alias_engine_buffers_on_fast_paths() -> None:
    """Columns handed out on the slice fast paths are the caller's own: writing them does
    not touch the engine, and the next tick does not write them."""
    for chart in ("imr", "ewma", "cusum"):
        eng = Engine([Spec(chart, 0.0, 1.0)] * 4)
        idx = np.arange(4)
        a = eng.process(idx, [0.5, -0.5, 1.0, 2.0])
        before = {c: getattr(a, c).copy() for c in ("char", "point", "limits", *ALL_COLS)}
        for c in ("center", "sigma", "lcl", "ucl", "statistic", "n"):
            col = getattr(a, c)
            assert col.flags.writeable and not np.shares_memory(col, eng._lim), c
        b = eng.process(idx, [3.0, 3.0, 3.0, 3.0])
        for c, arr in before.items():
            assert np.array_equal(getattr(a, c), arr, equal_nan=True), (chart, c)
        a.center[:] = 99.0
        a.lcl[:] = 99.0
        c2 = eng.process(idx, [0.0, 0.0, 0.0, 0.0])
        assert not np.any(c2.center == 99.0) and not np.any(c2.lcl == 99.0)
        assert not np.any(b.center == 99.0)


# --------------------------------------------------------------------------- long runs


@st.composite
def long_scenario(draw):
    """Characteristics whose series repeat (tiled) to a few hundred samples, fed in a few
    large calls, so that calls hold long runs of one characteristic (Engine._long)."""
    chars = draw(st.lists(characteristic(), min_size=1, max_size=3))
    out = []
    for ch in chars:
        reps = draw(st.integers(1, 40))
        values = ch.values * reps
        sizes = None if ch.sizes is None else ch.sizes * reps
        if draw(st.booleans()):
            values = [
                (0.0 if ch.spec.chart in ("p", "np", "c", "u") else ch.spec.center)
                if math.isnan(v)
                else v
                for v in values
            ]
        out.append(dataclasses.replace(ch, values=values, sizes=sizes))
    mode = draw(st.sampled_from(["blocks", "interleaved", "whole"]))
    ncuts = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    return out, mode, ncuts, seed


def _long_stream(chars: list[Char], mode: str, ncuts: int, seed: int):
    """(idx, vals, sizes, call boundaries, switches) for a long-run scenario."""
    rng = np.random.default_rng(seed)
    labels = [i for i, ch in enumerate(chars) for _ in ch.values]
    if mode == "interleaved":
        labels = [labels[j] for j in rng.permutation(len(labels))]
    seen = [0] * len(chars)
    stream = []
    for c in labels:
        stream.append((c, seen[c]))
        seen[c] += 1
    idx = np.array([c for c, _ in stream], dtype=np.intp)
    vals = np.array([chars[c].values[k] for c, k in stream], dtype=float)
    sizes = np.array(
        [NAN if chars[c].sizes is None else chars[c].sizes[k] for c, k in stream], dtype=float
    )
    switches: dict[int, list[int]] = {}
    for i, ch in enumerate(chars):
        if ch.record is not None:
            fed = np.cumsum(np.concatenate([[0], idx == i]))
            switches.setdefault(int(np.flatnonzero(fed == ch.switch_sample)[0]), []).append(i)
    cuts = set() if mode == "whole" else {int(c) for c in rng.integers(1, max(2, idx.size), ncuts)}
    bounds = sorted({0, idx.size, *cuts, *switches})
    return idx, vals, sizes, bounds, switches


def _state(eng: Engine) -> dict:
    """Everything a later call depends on: the state arrays and every rule carry."""
    import io

    with np.load(io.BytesIO(eng.snapshot()), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("centre_bank", "disp_bank", "header")}
    for name, bank in (("centre", eng._centre_bank), ("disp", eng._disp_bank)):
        arrays[name] = [bank.carry(i).to_dict() for i in range(len(eng))]
    return arrays


def _assert_same_state(a: Engine, b: Engine) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if k in ("centre", "disp"):
            assert sa[k] == sb[k], k
        elif k != "buf":
            assert np.array_equal(sa[k], sb[k], equal_nan=True), k
    # the subgroup buffer: only the open part is state
    for i in range(len(a)):
        off, fill = int(sa["off"][i]), int(sa["fill"][i])
        assert np.array_equal(
            sa["buf"][off : off + fill], sb["buf"][off : off + fill], equal_nan=True
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_scenario())
def test_long_runs_equal_batch_and_leave_the_same_state(case) -> None:
    """Calls holding hundreds of samples of one characteristic (the batch functions with
    carries) give the batch columns, and leave exactly the state of feeding the same
    samples one call each, so every later call continues alike."""
    chars, mode, ncuts, seed = case
    idx, vals, sizes, bounds, switches = _long_stream(chars, mode, ncuts, seed)
    specs = [ch.spec for ch in chars]
    eng = Engine(specs)
    one = Engine(specs)
    parts = []
    for a, b in itertools.pairwise(bounds):
        for i in switches.get(a, []):
            eng.set_limits(i, chars[i].record)
            one.set_limits(i, chars[i].record)
        parts.append(eng.process(idx[a:b], vals[a:b], sizes[a:b]))
        for j in range(a, b):
            one.process(idx[j : j + 1], vals[j : j + 1], sizes[j : j + 1])
    for i in switches.get(idx.size, []):
        eng.set_limits(i, chars[i].record)
        one.set_limits(i, chars[i].record)
    pts = Points.concat(parts)
    for i, ch in enumerate(chars):
        assert_matches(pts.of(i), _reference(ch))
    _assert_same_state(eng, one)
    # and they go on alike
    tail_idx = np.repeat(np.arange(len(chars)), 3)
    tail_vals = np.concatenate(
        [
            [0.0, 1.0, 2.0] if ch.spec.chart in ("p", "np", "c", "u") else [0.5, -2.5, 1.0]
            for ch in chars
        ]
    )
    tail_sizes = np.full(tail_idx.size, 4.0)
    p1 = eng.process(tail_idx, tail_vals, tail_sizes)
    p2 = one.process(tail_idx, tail_vals, tail_sizes)
    for name in ("char", "point", *ALL_COLS):
        assert np.array_equal(getattr(p1, name), getattr(p2, name), equal_nan=True), name


def test_long_run_one_characteristic_5000_samples() -> None:
    """5 000 samples of one I-MR characteristic in one call (with missing values, a drift
    and the Nelson rules) equal the batch path, and the next call continues exactly."""
    rng = np.random.default_rng(23)
    x = rng.normal(0.0, 1.0, 5000)
    x[1000:1300] += 1.2
    x[rng.random(5000) < 0.02] = NAN
    specs = [
        Spec("imr", 0.0, 1.0),
        Spec("ewma", 0.0, 1.0),
        Spec("xbar-s", 0.0, 1.0, subgroup_size=5),
    ]
    eng = Engine(specs)
    pts = eng.process(np.zeros(5000, np.intp), x)
    ref = batch_reference(specs[0], [Segment(x, _estimate(specs[0]))])
    assert_matches(pts, ref)
    assert pts.mask.any()
    # long runs of two characteristics and a short one of the first, shuffled, in one call
    idx = np.concatenate([np.full(3000, 1), np.full(4000, 2), [0, 0]])
    vals = np.concatenate([x[:3000], x[:4000], [9.0, 0.0]])
    order = rng.permutation(idx.size)
    idx, vals = idx[order], vals[order]
    got = eng.process(idx, vals)
    done = _completes(idx, specs)
    assert got.char.tolist() == idx[done].tolist()  # rows in arrival order
    for i in (1, 2):
        ref = batch_reference(specs[i], [Segment(vals[idx == i], _estimate(specs[i]))])
        assert_matches(got.of(i), ref)
    whole = np.concatenate([x, vals[idx == 0]])
    ref = batch_reference(specs[0], [Segment(whole, _estimate(specs[0]))])
    assert_matches(Points.concat([pts, got.of(0)]), ref)


def _completes(idx: np.ndarray, specs: list[Spec]) -> np.ndarray:
    """Which samples complete a point (every m-th sample of a characteristic)."""
    seen: dict[int, int] = {}
    out = []
    for c in idx.tolist():
        seen[c] = seen.get(c, 0) + 1
        out.append(seen[c] % specs[c].subgroup_size == 0)
    return np.array(out, dtype=bool)


def test_long_run_plan_keeps_rounds_when_many_characteristics_run_long() -> None:
    """Rounds are vectorised over characteristics: 100 characteristics with 200 samples
    each stay in rounds; one characteristic far longer than the rest is taken out."""
    eng = Engine([Spec("imr", 0.0, 1.0)] * 100)
    assert eng._long_plan(np.arange(100), np.full(100, 200)).size == 0
    length = np.full(100, 3)
    length[7] = 5000
    assert eng._long_plan(np.arange(100), length).tolist() == [7]
    length[8] = 4000
    assert eng._long_plan(np.arange(100), length).tolist() == [7, 8]
    assert eng._long_plan(np.arange(100), np.full(100, 127)).size == 0


def test_rows_in_arrival_order_when_one_kind_mixes_subgroup_sizes() -> None:
    """EWMA characteristics with m = 2 and m = 1 in one tick: the rows follow the arrival
    order of the completing samples (the subgroup ones are not put first)."""
    sizes = [2, 2, 1, 2, 1, 1]
    eng = Engine([Spec("ewma", 0.0, 1.0, subgroup_size=m) for m in sizes])
    idx = np.arange(6)
    first = eng.process(idx, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert first.char.tolist() == [2, 4, 5]
    second = eng.process(idx, [1.5, 2.5, 3.5, np.nan, 5.5, 6.5])
    assert second.char.tolist() == [0, 1, 2, 3, 4, 5]
    assert second.point.tolist() == [0, 0, 1, 0, 1, 1]
