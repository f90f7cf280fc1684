"""Property: replaying the alarm outbox never changes what a de-duplicating subscriber sees.

Alarm events come from the real :class:`~collector.alarms.AlarmManager` judging
random point batches (with acks between them). The ``mqtt`` stream is then
delivered with the real shared drain loop of ``collector/notify.py``
(:class:`_Drainer`) through a stub transport that, at random points of a batch,

* *crashes* after handing some messages to the subscriber but before anything
  is acknowledged (the "process" dies: a new outbox object and drainer take over), or
* *loses the connection* after some messages reached the subscriber and a
  prefix of them was confirmed (the drainer settles what was confirmed and reconnects).

Compared with a crash-free delivery of an identically built outbox, the
subscriber's ordered view of unique (``alarm_id``, ``event``) is the same, the
seqs it sees are 1, 2, … n with nothing skipped, and the last retained state
per topic is the same. A stub transport is fine here: this is a unit-level
property; the real broker paths are in test_gateway_alarms.py / test_gateway_kill.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collector.alarmconfig import AlarmsConfig
from collector.alarms import AlarmChar, AlarmManager, PointBatch
from collector.notify import Envelope, NotifyStats, _Delivery, _Drainer
from collector.outbox import Outbox
from connectors.base import Backoff, ConnectorError
from spc.rules import BITS

S = 1_000_000
T0 = 1_764_000_000 * S
CHARS = [AlarmChar(f"S/A/L/ST/c{i}", "S", "A", "L", "ST", f"c{i}") for i in range(2)]
CONFIG = AlarmsConfig(
    clear_after=2, durability="normal", flood={"max_alarms": 10_000, "window_s": 60}
)
MASKS = (0, 0, 1 << BITS["N1"], 1 << BITS["N2"], (1 << BITS["N1"]) | (1 << BITS["N2"]))
MAX_ROUNDS = 400  # restarts + reconnects before the test gives up (bounded)

point = st.tuples(st.integers(0, len(CHARS) - 1), st.sampled_from(MASKS))
step = st.tuples(st.lists(point, min_size=1, max_size=8), st.booleans())  # batch, then ack?


def build(path: Path, steps: Sequence[tuple[list[tuple[int, int]], bool]]) -> int:
    """Judge the steps into ``path`` (alarms.db); returns the number of ``mqtt`` entries."""
    t = T0
    with AlarmManager(path, CHARS, CONFIG, gateway_id="gw-p", mqtt=True) as mgr:
        for n, (points, ack) in enumerate(steps):
            rows = len(points)
            times = [t + k * S for k in range(rows)]
            t += rows * S
            masks = [m for _, m in points]
            batch = PointBatch(
                char=np.array([c for c, _ in points], dtype=np.intp),
                chart=["x"] * rows,
                mask=np.array(masks, dtype=np.int64),
                value=[14.0 if m else 10.0 for m in masks],
                center=[10.0] * rows,
                lcl=[7.0] * rows,
                ucl=[13.0] * rows,
                sigma=[1.0] * rows,
                limits_id=["L-prop"] * rows,
                time_us=np.array(times, dtype=np.int64),
                serial=[f"SN{x}" for x in times],
                context=[None] * rows,
            )
            now = T0 + 1000 * S + n * S
            mgr.judge(batch, now)
            active = [a for a in mgr.active() if a["status"] == "active"]
            if ack and active:
                mgr.ack(active[0]["alarm_id"], "op", "seen", now_us=now)
        return pending(mgr.outbox)


class CrashError(Exception):
    """The gateway process dies (nothing after this point of the round happens)."""


class StubTransport:
    """Hands envelopes to the subscriber; crashes or loses the link at random points.

    Like one TCP connection: once a round broke the link, rounds sent after it
    on the same link reach nobody (``window`` rounds are in flight at once).
    """

    where = "stub transport"
    proves_link = True

    def __init__(
        self, rng: random.Random | None, received: list[dict[str, Any]], window: int = 1
    ) -> None:
        self.rng = rng
        self.received = received
        self.window = window
        self.broken = False

    async def open(self) -> None:
        self.broken = False

    def check(self) -> None:
        pass

    def send(self, envelopes: Sequence[Envelope]) -> Callable[[], Awaitable[_Delivery]]:
        return lambda: self.deliver(envelopes)

    async def deliver(self, envelopes: Sequence[Envelope]) -> _Delivery:
        rng, n = self.rng, len(envelopes)
        if self.broken:
            return _Delivery(error=ConnectorError(self.where, "connection lost", retryable=True))
        roll = rng.random() if rng is not None else 1.0
        if roll < 0.3:  # crash: k reached the subscriber, none acknowledged
            k = rng.randint(0, n)
            self.received.extend(dict(e.payload, _topic=e.topic) for e in envelopes[:k])
            self.broken = True
            raise CrashError
        if roll < 0.5:  # link lost: k reached the subscriber, the first j ≤ k confirmed
            self.broken = True
            k = rng.randint(0, n)
            j = rng.randint(0, k)
            self.received.extend(dict(e.payload, _topic=e.topic) for e in envelopes[:k])
            return _Delivery(
                [e.seq for e in envelopes[:j]],
                error=ConnectorError(self.where, "connection lost", retryable=True),
            )
        self.received.extend(dict(e.payload, _topic=e.topic) for e in envelopes)
        return _Delivery([e.seq for e in envelopes])

    async def reset(self) -> None:
        pass

    async def close(self, graceful: bool) -> None:
        pass


def pending(outbox: Outbox) -> int:
    counts = outbox.counts().streams.get("mqtt")
    return 0 if counts is None else counts.pending


async def deliver(
    path: Path, rng: random.Random | None, batch: int, window: int = 1
) -> tuple[list[dict], int]:
    """Drain the ``mqtt`` stream of ``path`` to a subscriber list; restarts after each crash."""
    received: list[dict[str, Any]] = []
    restarts = 0
    for _ in range(MAX_ROUNDS):
        with Outbox(path) as outbox:  # a fresh process: a new outbox object and drainer
            if pending(outbox) == 0:
                return received, restarts
            stop = asyncio.Event()
            drainer = _Drainer(
                outbox,
                "mqtt",
                StubTransport(rng, received, window),  # type: ignore[arg-type]
                NotifyStats(),
                batch=batch,
                backoff=Backoff(0.001, 0.002),
                stop_drain_s=5.0,
            )

            async def watch(ob: Outbox = outbox, ev: asyncio.Event = stop) -> None:
                while pending(ob):
                    await asyncio.sleep(0.002)
                ev.set()

            watcher = asyncio.create_task(watch())
            try:
                async with asyncio.timeout(20):
                    await drainer.run(stop)
            except CrashError:
                restarts += 1
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    raise AssertionError(f"stream not drained after {MAX_ROUNDS} restarts")


def unique_events(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in received:
        if p.get("schema") != "shopspc.alarm/1":
            continue
        key = (p["alarm_id"], p["event"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def last_states(received: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["_topic"]: p for p in received if p.get("schema") == "shopspc.state/1"}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    steps=st.lists(step, min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 6),
    window=st.integers(1, 3),
)
def test_replaying_the_outbox_never_changes_the_deduplicated_view(
    steps: list[tuple[list[tuple[int, int]], bool]], seed: int, batch: int, window: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clean_db, crashy_db = Path(tmp, "clean.db"), Path(tmp, "crashy.db")
        n_clean = build(clean_db, steps)
        n_crashy = build(crashy_db, steps)
        assert n_clean == n_crashy  # the manager is deterministic for the same input
        clean, _ = asyncio.run(deliver(clean_db, None, batch, window))
        crashy, restarts = asyncio.run(deliver(crashy_db, random.Random(seed), batch, window))

    clean_view = unique_events(clean)
    assert len(clean) == n_clean and len(clean_view) == sum(
        p.get("schema") == "shopspc.alarm/1" for p in clean
    )
    assert unique_events(crashy) == clean_view
    seqs = [p["seq"] for p in unique_events(crashy)]
    assert seqs == list(range(1, len(seqs) + 1))  # strictly increasing, prefix-closed
    # every copy of an event is the same message (a replay, never a new version)
    first = {(p["alarm_id"], p["event"]): p for p in clean_view}
    for p in crashy:
        if p.get("schema") == "shopspc.alarm/1":
            assert p == first[(p["alarm_id"], p["event"])]
    # and the retained state a late subscriber would get is the crash-free one
    assert last_states(crashy) == last_states(clean)
    # in arrival order the subscriber never sees a gap: each seq is a replay or the next one
    top = 0
    for p in crashy:
        if p.get("schema") == "shopspc.alarm/1":
            assert p["seq"] <= top + 1, f"seq {p['seq']} after {top}: a gap"
            top = max(top, p["seq"])
    event("restarts" if restarts else "no restart")
    event("re-delivered copies" if len(crashy) > len(clean) else "no copies")
