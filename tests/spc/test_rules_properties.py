"""Property tests: vectorised batch == reference, streaming == batch, carries and state round trip.

Series are drawn so that ties, points exactly on zone lines (z ∈ {0, ±1, ±2,
±3} with power-of-two σ so x = CL + z·σ is exact), constant data (σ = 0),
missing points, NaN limits and per-point centre/σ all occur often.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spc import rules
from tests.spc.test_rules import reference

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAN = float("nan")
Z_EXACT = [0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 4.0, -4.0]


@dataclass
class Series:
    x: np.ndarray
    center: np.ndarray
    sigma: np.ndarray
    lcl: np.ndarray
    ucl: np.ndarray

    def args(self, sl: slice = slice(None)) -> tuple[np.ndarray, ...]:
        return (self.x[sl], self.center[sl], self.sigma[sl], self.lcl[sl], self.ucl[sl])

    def __len__(self) -> int:
        return len(self.x)


@st.composite
def series(draw, max_len: int = 90) -> Series:
    n = draw(st.integers(0, max_len))
    mode = draw(st.sampled_from(["zones", "integers", "floats"]))
    if draw(st.booleans()):
        center = np.full(n, float(draw(st.integers(-3, 3))))
    else:
        center = np.array(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), float)
    sigmas = st.sampled_from([0.5, 1.0, 1.0, 2.0, 4.0, 0.0, NAN])
    if draw(st.booleans()):
        sigma = np.full(n, draw(st.sampled_from([0.5, 1.0, 2.0, 0.0])))
    else:
        sigma = np.array(draw(st.lists(sigmas, min_size=n, max_size=n)), float)
    if mode == "zones":
        zs = st.one_of(st.sampled_from(Z_EXACT), st.floats(-5, 5))
        z = np.array(draw(st.lists(zs, min_size=n, max_size=n)), float)
        x = center + z * np.nan_to_num(sigma, nan=1.0)
    elif mode == "integers":
        x = np.array(draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n)), float)
    else:
        x = np.array(draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n)), float)
    missing = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else []
    for i, gone in enumerate(missing):
        if gone and i % 3 == 0:
            x[i] = NAN
    limit = draw(st.sampled_from(["3sigma", "nan", "mixed", "random"]))
    if limit == "3sigma":
        lcl, ucl = center - 3 * sigma, center + 3 * sigma
    elif limit == "nan":
        lcl, ucl = np.full(n, NAN), np.full(n, NAN)
    elif limit == "mixed":
        lcl, ucl = np.maximum(center - 3 * sigma, -1.0), np.full(n, NAN)
    else:
        lcl = np.array(draw(st.lists(st.integers(-8, 0), min_size=n, max_size=n)), float)
        ucl = np.array(draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)), float)
    return Series(x, center, sigma, lcl, ucl)


LEVELS = st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
RUNS = st.one_of(st.integers(2, 12), st.sampled_from([15, 64]))


@st.composite
def configs(draw) -> rules.RuleConfig:
    which = draw(st.sampled_from(["nelson", "we", "random", "random"]))
    if which != "random":
        return rules.resolve_rules(which)
    codes = draw(st.lists(st.sampled_from(list(rules.RULES)), unique=True, max_size=12))
    overrides = {}
    for code in codes:
        kind = rules.RULES[code].kind
        if kind == "limit" or draw(st.booleans()):
            continue
        if kind == "k_of_m":
            m = draw(st.integers(1, 8))
            overrides[code] = {"m": m, "k": draw(st.integers(1, m)), "level": draw(LEVELS)}
        elif kind in ("within", "beyond_both"):
            overrides[code] = {"run": draw(RUNS), "level": draw(LEVELS)}
        else:
            overrides[code] = {"run": draw(RUNS)}
    return rules.resolve_rules(codes, overrides)


@SETTINGS
@given(series(), configs())
def test_batch_equals_reference(s, cfg):
    want = reference(*s.args(), cfg)
    assert rules.evaluate(*s.args(), cfg).tolist() == want
    # small chunks exercise the words carried from one chunk to the next
    mask, _ = rules._evaluate(*s.args(), cfg, None, False, chunk=64, word_chunk=1)
    assert mask.tolist() == want
    # x thresholds instead of z wherever a chunk has one centre and one σ
    mask, _ = rules._evaluate(*s.args(), cfg, None, False, chunk=64, word_chunk=2, cuts_min=0)
    assert mask.tolist() == want


@SETTINGS
@given(series(max_len=200), configs(), st.data())
def test_evaluate_with_carry_over_splits_equals_whole(s, cfg, data):
    whole = rules.evaluate_with_carry(*s.args(), cfg)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(s)), max_size=4)))
    carry = None
    parts = []
    for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True):
        res = rules.evaluate_with_carry(*s.args(slice(a, b)), cfg, carry)
        parts.append(res.mask)
        carry = res.carry
        carry = rules.RuleCarry.from_dict(json.loads(json.dumps(carry.to_dict())))
    assert np.concatenate([whole.mask[:0], *parts]).tolist() == whole.mask.tolist()
    assert _same_carry(carry, whole.carry)


def _same_carry(a: rules.RuleCarry, b: rules.RuleCarry) -> bool:
    nan_equal = a.last_x == b.last_x or (a.last_x != a.last_x and b.last_x != b.last_x)
    return nan_equal and (a.levels, a.pos, a.neg, a.up, a.down, a.count) == (
        b.levels,
        b.pos,
        b.neg,
        b.up,
        b.down,
        b.count,
    )


@SETTINGS
@given(st.lists(st.tuples(series(max_len=70), configs()), min_size=1, max_size=5), st.data())
def test_streaming_equals_batch(chars, data):
    """Several characteristics interleaved in random rounds, with a restart from state midway."""
    cfgs = [c for _, c in chars]
    bank = rules.RuleBank(cfgs)
    pos = [0] * len(chars)
    got: list[list[int]] = [[] for _ in chars]
    restart_at = data.draw(st.integers(0, 40))
    rounds = 0
    while any(p < len(s) for p, (s, _) in zip(pos, chars, strict=True)):
        live = [i for i, (s, _) in enumerate(chars) if pos[i] < len(s)]
        picked = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
        cols = [[chars[i][0].args()[j][pos[i]] for i in picked] for j in range(5)]
        out = bank.step(np.array(picked), *cols)
        assert out.dtype == np.uint32 and out.shape == (len(picked),)
        for i, m in zip(picked, out.tolist(), strict=True):
            got[i].append(m)
            pos[i] += 1
        rounds += 1
        if rounds == restart_at:
            if data.draw(st.booleans()):
                bank = rules.RuleBank.from_state(cfgs, json.loads(json.dumps(bank.state_dict())))
            else:
                bank = rules.RuleBank.from_bytes(cfgs, bank.to_bytes())
    for i, (s, cfg) in enumerate(chars):
        whole = rules.evaluate_with_carry(*s.args(), cfg)
        assert got[i] == whole.mask.tolist()
        assert _same_carry(bank.carry(i), whole.carry)


@SETTINGS
@given(st.lists(st.tuples(series(max_len=70), configs()), min_size=1, max_size=5), st.data())
def test_one_point_steps_equal_the_array_program(chars, data):
    """A step of one point runs the compiled program as Python code on ints (``_OnePoint``):
    the same masks, histories, last values, counts and saturation as the array program,
    step by step, for mixed configs (per-config levels, enabled rows, codes, lookup tables)
    and for scalars or one-element arrays."""
    cfgs = [c for _, c in chars]
    one, arr = rules.RuleBank(cfgs), rules.RuleBank(cfgs)
    pos = [0] * len(chars)
    steps = 0
    while live := [i for i, (s, _) in enumerate(chars) if pos[i] < len(s)]:
        i = data.draw(st.sampled_from(live))
        vals = [float(chars[i][0].args()[j][pos[i]]) for j in range(5)]
        as_floats = data.draw(st.booleans())
        a = one.step(np.array([i]), *(vals if as_floats else [np.array([v]) for v in vals]))
        b = arr.step([i], *[[v] for v in vals])  # a list: the array program
        assert a.dtype == b.dtype == np.uint32 and a.tolist() == b.tolist()
        assert (one._regs == arr._regs).all() and (one._count == arr._count).all()
        assert np.array_equal(one._last, arr._last, equal_nan=True)
        assert one._sat == arr._sat
        pos[i] += 1
        steps += 1
    if steps:
        assert one._prog.one is not None and arr._prog.one is None


@SETTINGS
@given(series(max_len=120), configs(), st.data())
def test_bank_seeded_from_a_batch_carry_continues_it(s, cfg, data):
    cut = data.draw(st.integers(0, len(s)))
    whole = rules.evaluate(*s.args(), cfg)
    head = rules.evaluate_with_carry(*s.args(slice(0, cut)), cfg)
    bank = rules.RuleBank([rules.resolve_rules("none")])
    (i,) = bank.extend([cfg], [head.carry])
    tail = [int(bank.step([i], *(a[k : k + 1] for a in s.args()))[0]) for k in range(cut, len(s))]
    assert head.mask.tolist() + tail == whole.tolist()


def _around(v: float, k: int = 3) -> list[float]:
    out = [v]
    lo = hi = v
    for _ in range(k):
        lo = math.nextafter(lo, -math.inf)
        hi = math.nextafter(hi, math.inf)
        out += [lo, hi]
    return out


@SETTINGS
@given(
    st.one_of(st.integers(-5, 5).map(float), st.floats(-1e6, 1e6)),
    st.one_of(st.sampled_from([0.0, 0.5, 1.0, 3.0]), st.floats(1e-300, 1e6)),
    st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), st.floats(0.001, 10)),
    st.lists(st.floats(-1e7, 1e7), max_size=20),
)
def test_x_thresholds_classify_exactly_like_z(center, sigma, level, extra):
    """The constant-centre shortcut compares x with thresholds; it must agree with z bit for bit."""
    cuts = rules._x_thresholds(center, sigma, level)
    assert cuts is not None
    hi, lo = cuts
    xs = np.array(
        [*_around(hi), *_around(lo), *_around(center), center + level * sigma, *extra], float
    )
    z = rules.standardize(xs, center, sigma)
    assert ((xs > hi) == (z > level)).all()
    assert ((xs < lo) == (z < -level)).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.data())
def test_k_of_m_with_long_windows(m, data):
    """k-of-m for any 1 ≤ k ≤ m ≤ 64 (bit-sliced counter and shift-and paths) equals the reference."""
    k = data.draw(st.integers(1, m))
    level = data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    cfg = rules.resolve_rules(
        ["N5", "WE3"],
        {"N5": {"k": k, "m": m, "level": level}, "WE3": {"k": max(1, k // 2), "m": m}},
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = 400
    p_beyond = data.draw(st.sampled_from([0.2, 0.5, 0.8, 0.95]))
    z = np.where(
        rng.random(n) < p_beyond, rng.choice([2.5, -2.5, 1.5], n), rng.choice([0.0, 1.0, -0.5], n)
    )
    z[rng.random(n) < 0.02] = np.nan
    args = (z, 0.0, 1.0, -3.0, 3.0)
    want = reference(*args, cfg)
    assert rules.evaluate(*args, cfg).tolist() == want
    mask, _ = rules._evaluate(*args, cfg, None, False, chunk=64, word_chunk=1)
    assert mask.tolist() == want
    bank = rules.RuleBank([cfg])
    assert [int(bank.step([0], [v], 0.0, 1.0, -3.0, 3.0)[0]) for v in z] == want
