"""Property tests of the alarm lifecycle: any interleaving of points, acks, shelves, restarts.

Invariants checked after every run:

* at most one live (active or acknowledged) alarm per (characteristic, chart, rule);
* published ``seq`` values are 1, 2, 3, … in stream order (gapless, strictly increasing);
* every alarm has at most one ``raised``, one ``cleared`` and one ``acknowledged`` event;
* replaying every judged batch after a reopen raises nothing new;
* judging a series in one batch or split at random gives the same alarm events.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collector.alarmconfig import AlarmsConfig
from collector.alarms import AlarmChar, AlarmManager, PointBatch
from spc.rules import BITS

S = 1_000_000
T0 = 1_764_000_000 * S
N_CHARS = 3
RULES = ("N1", "N2", "WE2")
CHARS = [AlarmChar(f"S/A/L/ST/c{i}", "S", "A", "L", "ST", f"c{i}") for i in range(N_CHARS)]

row = st.tuples(
    st.integers(0, N_CHARS - 1),
    st.sampled_from(["x", "mr"]),
    st.lists(st.sampled_from(RULES), max_size=2),
    st.booleans(),  # with a serial
)
op = st.one_of(
    st.tuples(st.just("judge"), st.lists(row, min_size=1, max_size=12)),
    st.tuples(st.just("ack"), st.integers(0, 20)),
    st.tuples(st.just("shelve"), st.integers(0, 20), st.integers(1, 30)),
    st.tuples(st.just("unshelve"), st.integers(0, 20)),
    st.tuples(st.just("oos"), st.integers(0, N_CHARS - 1), st.booleans()),
    st.tuples(st.just("tick"), st.integers(0, 5)),
    st.tuples(
        st.just("reopen"),
    ),
)


def _mask(codes: list[str]) -> int:
    m = 0
    for c in codes:
        m |= 1 << BITS[c]
    return m


def _points(
    rows: list[tuple], times: list[int], limits_ids: list[str], context: dict | None
) -> PointBatch:
    """Rows ``(char, chart, rule codes, with a serial, …)`` as a batch of plotted points."""
    return PointBatch(
        char=[r[0] for r in rows],
        chart=[r[1] for r in rows],
        mask=[_mask(r[2]) for r in rows],
        value=[1.0] * len(rows),
        center=[0.0] * len(rows),
        lcl=[-3.0] * len(rows),
        ucl=[3.0] * len(rows),
        sigma=[1.0] * len(rows),
        limits_id=limits_ids,
        time_us=times,
        serial=[f"P{t}" if r[3] else None for r, t in zip(rows, times, strict=True)],
        context=[context] * len(rows),
    )


class Run:
    """Applies operations to a manager with strictly increasing sample times and a wall clock."""

    def __init__(self, path: Path, config: AlarmsConfig) -> None:
        self.path = path
        self.config = config
        self.m = AlarmManager(path, CHARS, config, gateway_id="gw")
        self.t = T0
        self.now = T0
        self.judged: list[tuple[PointBatch, int]] = []

    def batch(self, rows: list[tuple]) -> PointBatch:
        times = []
        for _ in rows:
            self.t += 1
            times.append(self.t)
        return _points(rows, times, ["LIM"] * len(rows), {"operator": "op"})

    def apply(self, step: tuple) -> None:
        self.now += S
        kind = step[0]
        open_ids = [a["alarm_id"] for a in self.m.active()]
        if kind == "judge":
            b = self.batch(step[1])
            self.judged.append((b, self.now))
            self.m.judge(b, self.now)
        elif kind == "ack" and open_ids:
            self.m.ack(open_ids[step[1] % len(open_ids)], "op", now_us=self.now)
        elif kind == "shelve" and open_ids:
            aid = open_ids[step[1] % len(open_ids)]
            self.m.shelve(aid, "op", "", self.now + step[2] * S, now_us=self.now)
        elif kind == "unshelve" and open_ids:
            self.m.unshelve(open_ids[step[1] % len(open_ids)], "op", now_us=self.now)
        elif kind == "oos":
            self.m.set_out_of_service(step[1], step[2], "op", now_us=self.now)
        elif kind == "tick":
            self.now += step[1] * S
            self.m.tick(self.now)
        elif kind == "reopen":
            self.m.close()
            self.m = AlarmManager(self.path, CHARS, self.config, gateway_id="gw")

    def check(self) -> None:
        live = self.m.outbox.query(
            "SELECT path, chart, rule, count(*) FROM alarms "
            "WHERE status IN ('active', 'acknowledged') GROUP BY path, chart, rule "
            "HAVING count(*) > 1"
        )
        assert live == [], f"more than one live alarm at {live}"
        env = [json.loads(e.payload) for e in self.m.outbox.peek("mqtt", 10**6, now=math.inf)]
        events = [e["payload"] for e in env if "/alarm/" in e["topic"]]
        assert [p["seq"] for p in events] == list(range(1, len(events) + 1))
        per = Counter((p["alarm_id"], p["event"]) for p in events)
        for (aid, kind), n in per.items():
            if kind in ("raised", "cleared", "acknowledged"):
                assert n == 1, f"{aid} has {n} {kind} events"
        journal = Counter(
            self.m.outbox.query(
                "SELECT alarm_id, event FROM journal "
                "WHERE event IN ('raised', 'cleared', 'acknowledged')"
            )
        )
        # a held alarm published at unshelve has two raised rows (held, then published)
        for (aid, kind), n in journal.items():
            limit = 2 if kind == "raised" else 1
            assert n <= limit, f"journal: {aid} has {n} {kind} rows"
        for aid in {aid for aid, _ in journal}:
            assert self.m.get(aid) is not None


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=1, max_size=25), clear_after=st.integers(1, 4))
def test_any_interleaving_keeps_the_invariants(ops: list[tuple], clear_after: int) -> None:
    """Invariants hold after any sequence; a replay of all batches after reopen raises nothing."""
    with tempfile.TemporaryDirectory() as d:
        cfg = AlarmsConfig(clear_after=clear_after, flood={"max_alarms": 4, "window_s": 3})
        run = Run(Path(d) / "alarms.db", cfg)
        try:
            for step in ops:
                run.apply(step)
                run.check()
            run.apply(("reopen",))
            event(f"raised {min(run.m.counts()['seq'], 10) // 5 * 5}+ events")
            for b, now in run.judged:
                assert run.m.judge(b, now + 10**9).raised == 0
            run.check()
        finally:
            run.m.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(row, min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 59), max_size=6),
    clear_after=st.integers(1, 4),
)
def test_batch_equals_stream(rows: list[tuple], cuts: list[int], clear_after: int) -> None:
    """One batch or any split into micro-batches: the same events, ids, counts and samples."""
    cfg = AlarmsConfig(clear_after=clear_after, flood={"max_alarms": 10_000})
    results = []
    with tempfile.TemporaryDirectory() as d:
        for k, bounds in enumerate(([], sorted({c for c in cuts if c < len(rows)}))):
            run = Run(Path(d) / f"a{k}.db", cfg)
            try:
                edges = [0, *bounds, len(rows)]
                got = []
                for a, b in itertools.pairwise(edges):
                    out = run.m.judge(run.batch(rows[a:b]), T0)
                    got += [
                        (p["alarm_id"], p["event"], p.get("count"), tuple(p["samples"]))
                        for p in out.events
                    ]
                results.append(got)
            finally:
                run.m.close()
    assert results[0] == results[1]


def _same_state(q: AlarmManager, g: AlarmManager) -> None:
    """Two managers fed alike hold the same sample rings, states, limits and seen marks."""
    assert (q._count == g._count).all()
    assert (q._ring_t == g._ring_t).all() and (q._ring_s == g._ring_s).all()
    assert (q._state_code == g._state_code).all() and list(q._limits) == list(g._limits)
    assert (q._seen == g._seen).all()


@contextlib.contextmanager
def _two(cfg: AlarmsConfig) -> Iterator[list[AlarmManager]]:
    """Twin managers on their own files in a temporary directory, closed after."""
    with tempfile.TemporaryDirectory() as d:
        ms = [AlarmManager(Path(d) / f"a{k}.db", CHARS, cfg, gateway_id="gw") for k in (0, 1)]
        try:
            yield ms
        finally:
            for m in ms:
                m.close()


def _oos(ms: list[AlarmManager], step: tuple, now: int) -> None:
    for m in ms:
        m.set_out_of_service(step[1], step[2], "op", now_us=now)


few_row = st.tuples(
    st.integers(0, N_CHARS - 1),
    st.sampled_from(["x", "mr"]),
    st.one_of(st.just([]), st.just([]), st.lists(st.sampled_from(RULES), max_size=1)),
    st.booleans(),  # with a serial
    st.sampled_from(["LIM-A", "LIM-B"]),
)
few_op = st.one_of(
    st.tuples(st.just("judge"), st.lists(few_row, min_size=1, max_size=40)),
    st.tuples(st.just("oos"), st.integers(0, N_CHARS - 1), st.booleans()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(few_op, min_size=1, max_size=30), clear_after=st.integers(1, 3))
def test_row_by_row_path_equals_the_columnar_one(ops: list[tuple], clear_after: int) -> None:
    """Small batches take a row-by-row path (``_few``): the same outcomes, events (with their
    sample windows), state messages, sample rings and state as the columnar path."""
    cfg = AlarmsConfig(clear_after=clear_after, flood={"max_alarms": 10_000})
    with _two(cfg) as ms:
        ms[1]._few_max = 0  # columnar always
        t, now = T0, T0
        for step in ops:
            now += S
            if step[0] == "oos":
                _oos(ms, step, now)
                continue
            rows = step[1]
            times = list(range(t + 1, t + 1 + len(rows)))
            t += len(rows)
            b = _points(rows, times, [r[4] for r in rows], None)
            a, c = (m.judge(b, now) for m in ms)
            assert (a.events, a.states, a.lines) == (c.events, c.states, c.lines)
            assert (a.raised, a.updated, a.cleared) == (c.raised, c.updated, c.cleared)
        _same_state(*ms)


quiet_row = st.tuples(
    st.integers(0, N_CHARS - 1),
    st.sampled_from(["x", "mr"]),
    # mostly in control, on unchanged limits
    st.tuples(st.integers(0, 9), st.sampled_from(RULES)).map(lambda t: [] if t[0] else [t[1]]),
    st.booleans(),  # with a serial
    st.integers(0, 9).map(lambda k: "LIM-B" if k == 0 else "LIM-A"),
)
quiet_other = st.one_of(
    st.tuples(st.just("oos"), st.integers(0, N_CHARS - 1), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 20)),
    st.tuples(st.just("tick"), st.integers(0, 5)),
)
quiet_op = st.integers(0, 9).flatmap(
    lambda k: (
        st.tuples(st.just("judge"), st.lists(quiet_row, min_size=1, max_size=4))
        if k < 7
        else quiet_other
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(quiet_op, min_size=5, max_size=40), clear_after=st.integers(1, 3))
def test_quiet_points_equal_judging_them(ops: list[tuple], clear_after: int) -> None:
    """``quiet`` (the pipeline's way for points that violate nothing) either declines and
    changes nothing, or does exactly what ``judge`` does with them: no event, no state
    message, the same sample rings and state (floods, out of service, acks, limit changes
    and open alarms included)."""
    cfg = AlarmsConfig(clear_after=clear_after, flood={"max_alarms": 2, "window_s": 3})
    taken = 0
    with _two(cfg) as ms:
        t, now = T0, T0
        for step in ops:
            now += S
            if step[0] == "oos":
                _oos(ms, step, now)
                continue
            if step[0] == "ack":
                ids = [[a["alarm_id"] for a in m.active()] for m in ms]
                assert ids[0] == ids[1]
                if ids[0]:
                    for m in ms:
                        m.ack(ids[0][step[1] % len(ids[0])], "op", now_us=now)
                continue
            if step[0] == "tick":
                now += step[1] * S
                outs = [m.tick(now) for m in ms]
                assert outs[0].events == outs[1].events
                continue
            rows = step[1]
            times = list(range(t + 1, t + 1 + len(rows)))
            t += len(rows)
            b = _points(rows, times, [r[4] for r in rows], None)
            q, g = ms
            before = (q._count.copy(), q._ring_t.copy(), q._ring_s.copy())
            keys = [2 * r[0] + (r[1] == "mr") for r in rows]
            done = not any(b.mask) and q.quiet(keys, times, b.serial, b.limits_id)
            if not done:
                assert (q._count == before[0]).all() and (q._ring_t == before[1]).all()
                assert (q._ring_s == before[2]).all()
                a = q.judge(b, now)
            c = g.judge(b, now)
            if done:
                taken += 1
                assert (c.events, c.states, c.lines) == ([], [], [])
            else:
                assert (a.events, a.states, a.lines) == (c.events, c.states, c.lines)
            _same_state(q, g)
        event(f"quiet taken {min(taken, 10) // 5 * 5}+")
