"""History backfill after a connection loss, against a real asyncua server with history.

The link is lost through :class:`LinkProxy` (a TCP relay the test cuts): the server keeps
running and historizing while the source is cut off, so "values written during the
outage" are real writes the source cannot see until it reads the server's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua

from connectors.base import Quality, Sample
from connectors.opcua import OpcuaSource, OpcuaSourceConfig
from connectors.opcua.source import GAP_STATUS
from tests.connectors.opcua.test_opcua_source import Collect, running, us
from tests.connectors.opcua.uaserver import LinkProxy, UaServer, wait_until

pytestmark = pytest.mark.integration

HISTORIZED = ("Bore", "D1", "D2", "D3")
LOG = "connectors.opcua.source"


@contextlib.asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[UaServer, LinkProxy]]:
    """A server historizing HISTORIZED (unless told otherwise) behind a proxy the test can cut."""
    options.setdefault("historize", HISTORIZED)
    srv = UaServer(**options)
    await srv.start()
    proxy = LinkProxy(srv.port)
    await proxy.start()
    try:
        yield srv, proxy
    finally:
        await proxy.stop()
        await srv.stop()


def config(
    proxy: LinkProxy, names: Iterable[tuple[str, str]], **overrides: Any
) -> OpcuaSourceConfig:
    base: dict[str, Any] = {
        "endpoint": proxy.url,
        "timeout_s": 2.0,
        "watchdog_interval_s": 0.3,
        "publishing_interval_ms": 20,
        "reconnect_base_s": 0.05,
        "reconnect_cap_s": 0.3,
        "nodes": [
            {"id": binding, "node": f"ns=2;s={name}", "sampling_interval_ms": 0}
            for binding, name in names
        ],
    }
    base.update(overrides)
    return OpcuaSourceConfig.model_validate(base)


class Clock:
    """Strictly increasing source times from now on (the device's clock)."""

    def __init__(self) -> None:
        self.last = datetime.now(UTC)

    def next(self) -> datetime:
        self.last = max(datetime.now(UTC), self.last + timedelta(milliseconds=1))
        return self.last


async def history_holds(srv: UaServer, name: str, source_time: datetime) -> None:
    """Wait (bounded) until the server's history of ``name`` has the value written at ``source_time``."""
    assert srv.server is not None
    storage = srv.server.iserver.history_manager.storage
    for _ in range(500):
        dvs, _ = await storage.read_node_history(srv.node_id(name), None, None, 0)
        if any(dv.SourceTimestamp == source_time for dv in dvs):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the history of {name} never got the value of {source_time}")


async def lose_link(proxy: LinkProxy, emit: Collect, bindings: Iterable[str]) -> None:
    await proxy.cut()
    for b in bindings:
        await wait_until(
            lambda b=b: any(s.status == GAP_STATUS for s in emit.of(b)), f"the gap mark of {b}"
        )


def has(emit: Collect, binding: str, value: float) -> bool:
    return any(s.value == value for s in emit.of(binding))


def after_gap(samples: list[Sample]) -> list[Sample]:
    gap = next(i for i, s in enumerate(samples) if s.status == GAP_STATUS)
    return samples[gap + 1 :]


def backfilled(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if s.fields.get("backfill")]


async def test_values_written_during_an_outage_are_backfilled_once_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    async with served(max_nodes_per_history_read=2) as (srv, proxy):
        emit = Collect()
        cfg = config(proxy, [("bore", "Bore"), ("d1", "D1"), ("d2", "D2")])
        source = OpcuaSource(cfg, "station-1")
        clock = Clock()
        async with running(source, emit) as task:
            await wait_until(lambda: all(emit.of(b) for b in ("bore", "d1", "d2")), "initials")
            before = clock.next()
            await srv.set("Bore", 1.0, source_time=before)
            await srv.set("D2", 7.0, source_time=before)
            await wait_until(
                lambda: has(emit, "bore", 1.0) and has(emit, "d2", 7.0), "values before the loss"
            )
            await lose_link(proxy, emit, ("bore", "d1", "d2"))
            # Written while the gateway is cut off; D2 does not change.
            written = [("Bore", 2.0), ("D1", 5.0), ("Bore", 3.0), ("Bore", 3.5), ("D1", 6.0)]
            times = []
            for name, value in written:
                times.append(clock.next())
                await srv.set(name, value, source_time=times[-1])
            await history_holds(srv, "Bore", times[3])
            await history_holds(srv, "D1", times[4])
            proxy.restore()
            await wait_until(lambda: source.stats.backfilled >= len(written), "the backfill")
            after = clock.next()
            await srv.set("Bore", 4.0, source_time=after)
            await srv.set("D2", 8.0, source_time=after)
            await wait_until(
                lambda: has(emit, "bore", 4.0) and has(emit, "d2", 8.0), "live values after"
            )
            assert not task.done()

    # Every outage value exactly once, oldest first, across nodes in source-time order,
    # mapped like subscription samples (quality, both timestamps) and marked.
    filled = backfilled(emit.samples)
    assert [(s.binding, s.value) for s in filled] == [
        ("bore", 2.0),
        ("d1", 5.0),
        ("bore", 3.0),
        ("bore", 3.5),
        ("d1", 6.0),
    ]
    assert [s.source_time_us for s in filled] == [us(t) for t in times]
    assert all(s.quality is Quality.GOOD and s.status == "" and s.server_time_us for s in filled)
    assert all(s.time_us == s.source_time_us for s in filled)

    bore = emit.of("bore")
    # Before the loss: the initial value and 1.0; then the gap mark, the backfill, and only
    # then the rebuilt subscription: its initial value (3.5 of times[3]) was backfilled
    # already and is not emitted again.
    tail = after_gap(bore)
    assert [(s.value, bool(s.fields.get("backfill"))) for s in tail] == [
        (2.0, True),
        (3.0, True),
        (3.5, True),
        (4.0, False),
    ]
    assert tail[-1].source_time_us == us(after)
    assert sum(s.value == 1.0 for s in bore) == 1
    # D2 did not change: its value from before the loss is not repeated after the reconnect.
    assert [s.value for s in after_gap(emit.of("d2"))] == [8.0]
    assert [s.value for s in after_gap(emit.of("d1"))] == [5.0, 6.0]

    assert source.stats.backfilled == 5 and source.stats.backfill_failed == 0
    assert source.stats.backfill_truncated == 0
    assert source.stats.backfill_duplicates >= 3  # the three rebuilt initial values
    assert source.stats.gaps == 1 and source.stats.reconnects == 1
    # The history was read newest first, from just after the last value emitted, asking
    # one more value than kept, chunked by MaxNodesPerHistoryReadData.
    reads = [c for c in srv.history_calls if not c.release]
    assert reads and all(len(c.nodes) <= 2 for c in reads)
    assert sorted(n for c in reads for n in c.nodes) == ["Bore", "D1", "D2"]
    assert all(c.start > c.end and c.per_node == cfg.backfill_max_values + 1 for c in reads)
    messages = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert sum("backfilled 5 values" in m for m in messages) == 1
    assert not [
        r
        for r in caplog.records
        if r.name == LOG and "backfill" in r.getMessage() and r.levelno >= logging.WARNING
    ]


async def test_backfill_keeps_the_newest_values_up_to_backfill_max_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    # Two values per answer: the source follows continuation points, then releases.
    async with served(history_page=2) as (srv, proxy):
        emit = Collect()
        cfg = config(proxy, [("bore", "Bore")], backfill_max_values=3)
        source = OpcuaSource(cfg, "station-1")
        clock = Clock()
        async with running(source, emit):
            await wait_until(lambda: bool(emit.of("bore")), "the initial value")
            await lose_link(proxy, emit, ["bore"])
            times = []
            for k in range(6):
                times.append(clock.next())
                await srv.set("Bore", 10.0 + k, source_time=times[-1])
            await history_holds(srv, "Bore", times[-1])
            proxy.restore()
            await wait_until(lambda: source.stats.backfill_truncated >= 1, "the cut backfill")
            await srv.set("Bore", 20.0, source_time=clock.next())
            await wait_until(lambda: has(emit, "bore", 20.0), "a live value after")

    tail = after_gap(emit.of("bore"))
    # The newest three of six, oldest first, then live; the first three are lost (the gap
    # mark before them says so).
    assert [s.value for s in tail] == [13.0, 14.0, 15.0, 20.0]
    assert [s.source_time_us for s in tail[:3]] == [us(t) for t in times[3:]]
    assert all(s.fields.get("backfill") for s in tail[:3])
    assert source.stats.backfilled == 3 and source.stats.backfill_truncated == 1
    assert source.stats.backfill_failed == 0
    calls = srv.history_calls
    assert any(any(c.continued) for c in calls if not c.release)  # a continuation point followed
    assert any(c.release for c in calls)  # and the open one released
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == LOG and r.levelno == logging.WARNING and "backfill" in r.getMessage()
    ]
    assert len(warnings) == 1 and "bore" in warnings[0]
    assert "backfill_max_values=3" in warnings[0]


async def test_nodes_without_history_are_counted_failures_that_keep_their_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    # Flatness is not historized (AccessLevel without HistoryRead); D3 is, but the server
    # refuses its history reads as a server without history for a node would.
    refusal = ua.StatusCodes.BadHistoryOperationUnsupported
    async with served(history_refusals={"D3": refusal}) as (srv, proxy):
        emit = Collect()
        names = [("bore", "Bore"), ("flat", "Flatness"), ("d3", "D3")]
        source = OpcuaSource(config(proxy, names), "station-1")
        clock = Clock()
        async with running(source, emit) as task:
            await wait_until(lambda: all(emit.of(b) for b, _ in names), "initial values")
            await lose_link(proxy, emit, [b for b, _ in names])
            t = clock.next()
            await srv.set("Bore", 2.0, source_time=t)
            await srv.set("Flatness", 0.5, source_time=t)
            await srv.set("D3", 9.0, source_time=t)
            await history_holds(srv, "Bore", t)
            proxy.restore()
            await wait_until(lambda: source.stats.backfill_failed >= 2, "the failed backfills")
            later = clock.next()
            for name in ("Bore", "Flatness", "D3"):
                await srv.set(name, 3.0, source_time=later)
            await wait_until(
                lambda: all(has(emit, b, 3.0) for b, _ in names), "the source keeps running"
            )
            assert not task.done()

    assert source.stats.backfill_failed == 2 and source.stats.backfilled == 1
    assert [s.value for s in backfilled(emit.samples)] == [2.0]
    for binding in ("flat", "d3"):
        samples = emit.of(binding)
        gaps = [s for s in samples if s.status == GAP_STATUS]
        assert len(gaps) == 1 and gaps[0].quality is Quality.BAD and math.isnan(gaps[0].value)
        assert gaps[0].fields == {"gap": True}
        # No history: the rebuilt subscription's initial value (written during the outage)
        # still arrives, then live values; nothing is marked as backfill.
        assert [s.value for s in after_gap(samples)] == [0.5 if binding == "flat" else 9.0, 3.0]
        assert not backfilled(samples)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == LOG and r.levelno == logging.WARNING and "backfill" in r.getMessage()
    ]
    assert len(warnings) == 2  # once per node and reconnect, saying what and which node
    flat = next(m for m in warnings if "flat" in m)
    assert "ns=2;s=Flatness" in flat and "HistoryRead" in flat
    d3 = next(m for m in warnings if "d3" in m)
    assert "ns=2;s=D3" in d3 and "BadHistoryOperationUnsupported" in d3


async def test_backfill_off_keeps_the_old_behaviour() -> None:
    async with served() as (srv, proxy):
        emit = Collect()
        cfg = config(proxy, [("bore", "Bore"), ("d2", "D2")], backfill=False)
        source = OpcuaSource(cfg, "station-1")
        clock = Clock()
        async with running(source, emit):
            await wait_until(lambda: bool(emit.of("bore")) and bool(emit.of("d2")), "initials")
            await lose_link(proxy, emit, ["bore", "d2"])
            for value in (2.0, 3.0):
                await srv.set("Bore", value, source_time=clock.next())
            await history_holds(srv, "Bore", clock.last)
            proxy.restore()
            await wait_until(lambda: source.stats.state == "connected", "the reconnect")
            await wait_until(lambda: has(emit, "bore", 3.0), "the rebuilt initial value")
            await wait_until(lambda: len(after_gap(emit.of("d2"))) == 1, "D2's initial value")

    # Only the rebuilt subscription's initial value: 2.0 is lost, D2's unchanged value
    # comes again, and the server's history is never asked.
    assert [s.value for s in after_gap(emit.of("bore"))] == [3.0]
    d2 = emit.of("d2")
    assert after_gap(d2)[0].source_time_us == d2[0].source_time_us
    assert not backfilled(emit.samples) and srv.history_calls == []
    stats = source.stats
    assert (stats.backfilled, stats.backfill_failed, stats.backfill_duplicates) == (0, 0, 0)
    assert stats.gaps == 1


async def test_a_device_clock_ahead_of_the_gateway_loses_nothing() -> None:
    # The history is read up to the rebuilt subscription's initial values (device time),
    # not up to the gateway's clock, which is ten minutes behind the device here.
    ahead = timedelta(minutes=10)
    async with served() as (srv, proxy):
        emit = Collect()
        source = OpcuaSource(config(proxy, [("bore", "Bore")]), "station-1")
        clock = Clock()
        async with running(source, emit):
            await wait_until(lambda: bool(emit.of("bore")), "the initial value")
            await srv.set("Bore", 1.0, source_time=clock.next() + ahead)
            await wait_until(lambda: has(emit, "bore", 1.0), "a value before the loss")
            await lose_link(proxy, emit, ["bore"])
            times = [clock.next() + ahead for _ in range(3)]
            for k, t in enumerate(times):
                await srv.set("Bore", 2.0 + k, source_time=t)
            await history_holds(srv, "Bore", times[-1])
            proxy.restore()
            await wait_until(lambda: source.stats.backfilled >= 3, "the backfill")
            await srv.set("Bore", 9.0, source_time=clock.next() + ahead)
            await wait_until(lambda: has(emit, "bore", 9.0), "a live value after")

    tail = after_gap(emit.of("bore"))
    assert [(s.value, bool(s.fields.get("backfill"))) for s in tail] == [
        (2.0, True),
        (3.0, True),
        (4.0, True),
        (9.0, False),
    ]
    assert [s.source_time_us for s in tail[:3]] == [us(t) for t in times]
