"""End to end: the running gateway (in-process) against a real mosquitto, as MES sees it.

Values come over MQTT from a station the test drives with planted patterns; a
subscriber to ``shopspc/v1/#`` checks every field of the alarm contract
(``contracts/alarms-mqtt.md``), the retained state and status topics, ack and
operator commands, process-state suppression, limits changes, a broker restart
and a dead series sink. Every wait is bounded; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.alarms import alarm_id
from collector.outbox import BACKSTOP_CHECKPOINT_PAGES
from collector.pipeline import Gateway
from connectors.base import ConnectorStats, Quality, Sample
from spc.limits import LimitsRecord
from spc.rules import RULE_TEXT
from tests.collector.gateway_runner import (
    AREA,
    CHAR,
    GW_ID,
    LINE,
    PATH,
    PREFIX,
    SITE,
    STATION,
    WAIT_S,
    Station,
    View,
    calm,
    config_dict,
    load,
    part_time,
    serial,
    until,
)
from tests.connectors.mqtt.test_publisher import Subscriber
from tests.servers import Server, free_port, mosquitto

pytestmark = pytest.mark.integration

RFC3339_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    d = tmp_path / "broker"
    d.mkdir()
    with mosquitto(d) as server:
        yield server


@contextlib.contextmanager
def watching(port: int, **kw: Any) -> Iterator[tuple[Subscriber, View]]:
    sub = Subscriber(port, f"{PREFIX}/#", **kw)
    try:
        yield sub, View()
    finally:
        sub.close()


@contextlib.asynccontextmanager
async def gateway(
    broker: Server,
    tmp_path: Path,
    name: str = "gw",
    gw_kw: dict[str, Any] | None = None,
    **kw: Any,
) -> AsyncIterator[Gateway]:
    """A running Gateway on the broker; stopped gracefully (and awaited, bounded) afterwards."""
    cfg, models = load(config_dict(broker.port, **kw))
    gw = Gateway(cfg, models, data_dir=tmp_path / name, limits_poll_s=0.2, **(gw_kw or {}))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await until(
            lambda: (
                task.done()
                or (
                    all(s.stats.state == "connected" for s in gw.sources)
                    and all(n.stats.state == "connected" for n in gw.notifiers)
                )
            ),
            "gateway source and alarm publisher connected",
        )
        if task.done():
            task.result()
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def sample_us(text: str) -> int:
    t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round((t - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)


def check_alarm_fields(a: dict[str, Any], gw: Gateway, k: int, rule: str) -> None:
    """Every contract field of a ``raised`` event for part ``k`` violating ``rule``."""
    limits_id = gw.records[0].id
    assert a["schema"] == "shopspc.alarm/1"
    assert a["_qos"] == 1 and a["_ct"] == "application/json"
    assert a["event"] == "raised"
    assert a["_topic"] == f"{PREFIX}/alarm/{PATH}"
    assert isinstance(a["seq"], int) and a["seq"] >= 1
    assert (a["gateway_id"], a["site"], a["area"], a["line"], a["station"]) == (
        GW_ID,
        SITE,
        AREA,
        LINE,
        STATION,
    )
    assert a["characteristic"] == CHAR and a["chart"] == "x"
    assert a["rule"] == rule and a["rule_text"] == RULE_TEXT[rule]
    assert isinstance(a["rule_text"], str) and a["rule_text"]
    assert a["severity"] == ("critical" if rule == "N1" else "minor")
    assert a["center"] == 10.0 and a["sigma"] == 1.0
    assert a["lcl"] == pytest.approx(7.0) and a["ucl"] == pytest.approx(13.0)
    assert isinstance(a["value"], float)
    assert a["limits_id"] == limits_id and limits_id.startswith("L-")
    assert RFC3339_US.match(a["sample_time"]) and RFC3339_US.match(a["event_time"])
    assert sample_us(a["sample_time"]) == part_time(k)  # the source timestamp we published
    assert a["part_serial"] == serial(k)
    assert a["alarm_id"] == alarm_id(PATH, rule, limits_id, part_time(k), serial(k), chart="x")
    assert isinstance(a["samples"], list)
    assert isinstance(a["context"], dict)
    assert a["context"]["operator"] == "alice" and a["context"]["machine"] == "MC-7"
    assert a["context"]["method"] == "PRG-12"


async def test_alarm_events_carry_every_contract_field(broker: Server, tmp_path: Path) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            # 0..9 calm, 10 beyond UCL (N1), 11..13 calm (clears N1), 14..22 nine above centre (N2)
            await st.parts([(k, calm(k)) for k in range(10)])
            await st.parts([(10, 14.2)])
            await until(lambda: view.events("raised", "N1"), "N1 raised", poll=poll)
            await st.parts([(k, calm(k)) for k in range(11, 14)])
            await until(lambda: view.events("cleared", "N1"), "N1 cleared", poll=poll)
            await until(lambda: view.states[-1]["state"] == "in_control", "in_control", poll=poll)
            await st.parts([(k, 10.5) for k in range(14, 23)])
            await until(lambda: view.events("raised", "N2"), "N2 raised", poll=poll)
        # graceful stop: offline retained status
        await until(
            lambda: any(s["status"] == "offline" for s in view.status), "offline", poll=poll
        )

    n1 = view.events("raised", "N1")
    n2 = view.events("raised", "N2")
    assert len(n1) == 1 and len(n2) == 1
    check_alarm_fields(n1[0], gw, 10, "N1")
    check_alarm_fields(n2[0], gw, 22, "N2")
    assert n1[0]["value"] == 14.2 and n2[0]["value"] == 10.5
    assert n1[0]["samples"] == [serial(10)]  # N1's window is the one point
    assert n2[0]["samples"] == [serial(k) for k in range(14, 23)]  # N2: nine in a row
    seqs = [a["seq"] for a in view.alarms]
    assert seqs == sorted(set(seqs)) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # the retained state: out_of_control naming the alarm, then in_control after the clear
    mine = [s for s in view.states if s["_topic"] == f"{PREFIX}/state/{PATH}"]
    ooc = [s for s in mine if s["state"] == "out_of_control"]
    assert ooc and ooc[0]["active_alarms"] == [n1[0]["alarm_id"]]
    assert ooc[0]["limits_id"] == gw.records[0].id
    after = mine[mine.index(ooc[0]) + 1 :]
    assert [s["state"] for s in after][:2] == ["in_control", "out_of_control"], after
    assert after[1]["active_alarms"] == [n2[0]["alarm_id"]]
    # live copies carry no RETAIN flag; the late subscriber below gets the retained one
    assert all(s["_retain"] is False for s in mine)
    assert view.status[0]["status"] == "online" and view.status[-1]["status"] == "offline"
    online = view.status[0]
    assert online["schema"] == "shopspc.gateway/1" and online["gateway_id"] == GW_ID
    assert online["version"] and RFC3339_US.match(online["start_time"])
    assert sample_us(online["start_time"]) == gw.start_time_us
    assert all(s["_qos"] == 1 for s in view.status + view.states)
    assert view.status[-1]["gateway_id"] == GW_ID
    # a late subscriber gets the retained state and status
    with watching(broker.port) as (late, lview):
        await until(
            lambda: lview.states and lview.status,
            "retained",
            poll=lambda: lview.take(late.messages),
        )
    assert lview.states[-1]["_retain"] and lview.status[-1]["_retain"]
    assert lview.status[-1]["status"] == "offline"
    assert lview.states[-1]["state"] == "out_of_control"  # N2 still active at the stop
    assert lview.states[-1]["active_alarms"] == [n2[0]["alarm_id"]]


async def test_one_active_alarm_per_rule_then_cleared_after_clear_after(
    broker: Server, tmp_path: Path
) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            await st.parts([(k, calm(k)) for k in range(4)])
            await st.parts([(4, 14.0), (5, 9.6), (6, 14.5), (7, 13.8)])  # N1 three times
            await until(lambda: gw.stats.points >= 8, "8 points judged", poll=poll)
            await st.parts([(k, calm(k)) for k in range(8, 10)])  # two calm: not yet cleared
            await until(lambda: gw.stats.points >= 10, "10 points judged", poll=poll)
            raised_before_clear = list(view.events("raised"))
            await st.parts([(10, calm(10))])  # the third calm point in a row clears
            await until(lambda: view.events("cleared"), "cleared", poll=poll)
            await st.parts([(11, 14.1)])  # a violation after the clear: a new alarm
            await until(lambda: len(view.events("raised")) == 2, "second alarm", poll=poll)
            journal = gw.alarms.journal(limit=100)
    raised = view.events("raised")
    assert len(raised_before_clear) == 1 and raised[0] == raised_before_clear[0]
    cleared = view.events("cleared")
    assert len(cleared) == 1 and cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    assert cleared[0]["count"] == 3 and cleared[0]["last_value"] == 13.8
    assert sample_us(cleared[0]["clear_sample_time"]) == part_time(10)
    assert raised[1]["alarm_id"] != raised[0]["alarm_id"]
    assert raised[1]["part_serial"] == serial(11)
    assert [a["seq"] for a in view.alarms] == list(range(1, 4))
    assert [j["event"] for j in journal if j["alarm_id"] == raised[0]["alarm_id"]] == [
        "raised",
        "updated",
        "updated",
        "cleared",
    ]


async def test_ack_over_mqtt_and_refused_commands(broker: Server, tmp_path: Path) -> None:
    ack_topic = f"{PREFIX}/cmd/{PATH}/ack"
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            pub = gw.notifiers[0]
            await st.parts([(0, calm(0)), (1, 14.0)])
            await until(lambda: view.events("raised"), "raised", poll=poll)
            aid = view.events("raised")[0]["alarm_id"]
            good = {
                "alarm_id": aid,
                "user": "mes-op7",
                "comment": "insert worn",
                "cause": "machine:MC-TOOL-WEAR",
                "action": "TOOL-CHANGE",
            }
            await st.raw(ack_topic, b"{not json")  # malformed: the publisher refuses it
            await st.raw(ack_topic, json_bytes({**good, "user": ""}))  # no user
            await st.raw(ack_topic, json_bytes({**good, "shift": 2}))  # unknown key
            await st.raw(ack_topic, json_bytes({**good, "cause": "machine:NOPE"}))
            other = f"{PREFIX}/cmd/{SITE}/{AREA}/{LINE}/{STATION}/other/ack"
            await st.raw(other, json_bytes(good))  # the alarm is not on that path
            await until(
                lambda: gw.stats.bad_commands == 5 and pub.stats.bad_commands == 1,
                "refused commands counted",
                poll=poll,
            )
            assert not view.events("acknowledged")
            await st.raw(ack_topic, json_bytes(good))
            await until(lambda: view.events("acknowledged"), "acknowledged", poll=poll)
            await st.raw(ack_topic, json_bytes(good))  # a second ack: idempotent, no event
            await st.parts([(2, calm(2))])
            await until(
                lambda: gw.stats.points >= 3 and gw.stats.commands >= 6, "marker", poll=poll
            )
            pareto = gw.alarms.pareto()
    acks = view.events("acknowledged")
    assert len(acks) == 1
    ack = acks[0]
    assert ack["alarm_id"] == aid and ack["user"] == "mes-op7" and ack["comment"] == "insert worn"
    assert ack["source"] == "mqtt"
    assert ack["cause"]["category"] == "machine" and ack["cause"]["code"] == "MC-TOOL-WEAR"
    assert ack["action"]["code"] == "TOOL-CHANGE"
    assert (
        RFC3339_US.match(ack["event_time"]) and ack["sample_time"] == view.alarms[0]["sample_time"]
    )
    assert [a["seq"] for a in view.alarms] == [1, 2]
    assert pareto == [("machine", "MC-TOOL-WEAR", "Tool wear", 1)]


async def test_shelve_unshelve_and_out_of_service(broker: Server, tmp_path: Path) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            await st.parts([(0, calm(0)), (1, 14.0)])
            await until(lambda: view.events("raised"), "raised", poll=poll)
            aid = view.events("raised")[0]["alarm_id"]
            who = {"alarm_id": aid, "user": "lead-ann", "comment": "known drift"}
            ev = gw.command(PATH, {**who, "minutes": 30}, "shelve")
            assert ev is not None and ev["event"] == "shelved"
            await until(lambda: view.events("shelved"), "shelved", poll=poll)
            gw.command(PATH, who, "unshelve")
            await until(lambda: view.events("unshelved"), "unshelved", poll=poll)
            gw.command(
                PATH, {"in_service": False, "user": "lead-ann", "comment": "rework"}, "service"
            )
            await until(lambda: last_state(view)["state"] == "suspended", "suspended", poll=poll)
            await st.parts([(k, calm(k)) for k in range(2, 5)])  # clears the alarm
            await st.parts([(5, 14.3)])  # out of service: raises nothing
            await until(lambda: gw.stats.points >= 6, "points judged", poll=poll)
            suppressed = [j for j in gw.alarms.journal() if j["event"] == "suppressed"]
            gw.command(PATH, {"in_service": True, "user": "lead-ann"}, "service")
            await until(lambda: last_state(view)["state"] == "in_control", "back", poll=poll)
    # after the clear, a late subscriber gets in_control retained (and the offline status)
    with watching(broker.port) as (late, lview):
        await until(
            lambda: lview.states and lview.status,
            "retained",
            poll=lambda: lview.take(late.messages),
        )
    assert lview.states[-1]["_retain"] and lview.states[-1]["state"] == "in_control"
    assert lview.states[-1]["active_alarms"] == [] and lview.status[-1]["status"] == "offline"
    shelved = view.events("shelved")[0]
    assert shelved["user"] == "lead-ann" and shelved["comment"] == "known drift"
    assert RFC3339_US.match(shelved["shelved_until"])
    assert view.events("unshelved")[0]["alarm_id"] == aid
    assert len(view.events("raised")) == 1  # nothing raised out of service
    assert len(suppressed) == 1 and suppressed[0]["rule"] == "N1"
    states = [s["state"] for s in view.states if s["_topic"].endswith(PATH)]
    assert "suspended" in states
    susp = next(s for s in view.states if s["state"] == "suspended")
    assert susp["reason"].startswith("out_of_service")
    seqs = [a["seq"] for a in view.alarms]
    assert seqs == list(range(1, len(seqs) + 1))


def last_state(view: View) -> dict[str, Any]:
    mine = [s for s in view.states if s["_topic"] == f"{PREFIX}/state/{PATH}"]
    return mine[-1] if mine else {"state": None}


def json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


async def test_process_state_idle_suppresses_alarms(broker: Server, tmp_path: Path) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path, process_state=True) as gw, Station(broker.port) as st:
            await st.parts([(0, calm(0))])
            await until(lambda: last_state(view)["state"] == "in_control", "in_control", poll=poll)
            await st.state(0)  # idle
            await until(lambda: last_state(view)["state"] == "suspended", "suspended", poll=poll)
            await st.parts([(1, 14.0), (2, 9.6), (3, 14.4)])
            await until(lambda: gw.stats.points >= 4, "points judged", poll=poll)
            idle_raised = len(view.events("raised"))
            await st.state(1)  # running again
            await until(lambda: last_state(view)["state"] == "in_control", "running", poll=poll)
            await st.parts([(k, calm(k)) for k in range(4, 7)] + [(7, 14.2)])
            await until(lambda: view.events("raised"), "raised when running", poll=poll)
            journal = gw.alarms.journal()
    assert idle_raised == 0
    susp = next(s for s in view.states if s["state"] == "suspended")
    assert susp["reason"] == f"process_state: idle (line={LINE}/station={STATION})"
    supp = [j for j in journal if j["event"] == "suppressed"]
    assert len(supp) == 1 and supp[0]["count"] == 2
    raised = view.events("raised")
    assert len(raised) == 1 and raised[0]["part_serial"] == serial(7)


async def test_limits_change_while_running(broker: Server, tmp_path: Path) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            old = gw.records[0].id
            await st.parts([(0, calm(0)), (1, 14.0)])
            await until(lambda: view.events("raised"), "raised", poll=poll)
            rec = LimitsRecord(chart="imr", center=10.5, sigma=1.0, method="known", n_points=0)
            gw.limits_store.assign(
                PATH, rec, user="qe-bob", reason="new insert geometry", source="cli"
            )
            await until(
                lambda: (last_state(view).get("limits") or {}).get("limits_id") == rec.id,
                "state with the new limits",
                poll=poll,
            )
            await st.parts([(k, calm(k)) for k in range(2, 5)])  # clears
            await st.parts([(5, 7.3)])  # below the new LCL 7.5, inside the old 7.0: new limits only
            await until(lambda: len(view.events("raised")) == 2, "alarm on new limits", poll=poll)
    info = last_state(view)
    with watching(broker.port) as (late, lview):
        await until(lambda: lview.states, "retained", poll=lambda: lview.take(late.messages))
    retained = lview.states[-1]
    assert retained["_retain"] and retained["limits"]["limits_id"] == rec.id
    assert retained["limits"]["user"] == "qe-bob"
    state = next(s for s in view.states if (s.get("limits") or {}).get("limits_id") == rec.id)
    assert state["_retain"] is False and state["limits_id"] == rec.id
    assert (
        state["limits"]["user"] == "qe-bob" and state["limits"]["reason"] == "new insert geometry"
    )
    assert state["limits"]["source"] == "cli" and state["limits"]["center"] == 10.5
    first, second = view.events("raised")
    assert first["limits_id"] == old and second["limits_id"] == rec.id != old
    assert second["lcl"] == pytest.approx(7.5) and second["center"] == 10.5
    assert second["alarm_id"] == alarm_id(PATH, "N1", rec.id, part_time(5), serial(5), chart="x")
    assert info["limits_id"] == rec.id


class QueueSource:
    """An in-process source named like the configured one: emits what the test puts in its queue."""

    def __init__(self, name: str = "st") -> None:
        self.name = name
        self.kind = "manual"
        self.stats = ConnectorStats(state="connected")
        self.queue: asyncio.Queue[list[Sample]] = asyncio.Queue()

    async def run(self, emit: Any) -> None:
        while True:
            await emit(await self.queue.get())

    def put(self, *values: tuple[int, float]) -> None:
        self.queue.put_nowait(
            [
                Sample(CHAR, v, Quality.GOOD, part_time(k), part_time(k), serial=serial(k))
                for k, v in values
            ]
        )


async def test_alarms_raised_while_the_broker_is_down_arrive_in_order(
    broker: Server, tmp_path: Path
) -> None:
    cfg, models = load(config_dict(broker.port, clear_after=1, rules=("N1",)))
    src = QueueSource()
    gw = Gateway(cfg, models, data_dir=tmp_path / "gw", sources=[src])
    stop = asyncio.Event()
    sub = Subscriber(broker.port, f"{PREFIX}/alarm/#", client_id="mes-restart", persistent=True)
    view = View()
    poll = lambda: view.take(sub.messages)  # noqa: E731
    task = asyncio.create_task(gw.run(stop))
    try:
        await until(lambda: gw.notifiers and gw.notifiers[0].stats.state == "connected", "up")
        pub = gw.notifiers[0]
        src.put((0, calm(0)), (1, 14.0), (2, calm(2)))
        await until(lambda: len(view.alarms) == 2, "raised and cleared", poll=poll)
        await asyncio.to_thread(broker.stop)
        await until(lambda: pub.stats.state == "disconnected", "publisher lost the broker")
        for c in range(3):
            k = 3 + 2 * c
            src.put((k, 14.0 + c / 10), (k + 1, calm(k + 1)))
        await until(lambda: gw.stats.alarm_events == 8, "alarms committed while down")
        assert pub.stats.pending >= 0
        await asyncio.to_thread(broker.restart)
        await until(lambda: len(view.unique()) == 8, "all 8 events after the restart", poll=poll)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, WAIT_S)
        finally:
            sub.close()
    events = view.unique()
    assert [a["seq"] for a in events] == list(range(1, 9))
    assert [a["event"] for a in events] == ["raised", "cleared"] * 4
    raised = [a for a in events if a["event"] == "raised"]
    assert [a["part_serial"] for a in raised] == [serial(k) for k in (1, 3, 5, 7)]
    assert len({a["alarm_id"] for a in raised}) == 4  # none re-raised
    # at least once: a duplicate is an exact copy
    for a in view.alarms:
        assert a == next(
            b for b in events if (b["alarm_id"], b["event"]) == (a["alarm_id"], a["event"])
        )


async def test_alarms_do_not_wait_for_a_dead_series_sink(
    broker: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPSPC_E2E_TOKEN", "t0ken")
    dead = free_port()  # nothing listens there
    sinks = {
        "influx": {
            "kind": "influxdb",
            "api": "v2",
            "url": f"http://127.0.0.1:{dead}",
            "org": "o",
            "bucket": "b",
            "token_env": "SHOPSPC_E2E_TOKEN",
            "timeout_s": 1,
        }
    }
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with (
            gateway(
                broker, tmp_path, sinks=sinks, clear_after=1, gw_kw={"drain_deadline_s": 0.5}
            ) as gw,
            Station(broker.port) as st,
        ):
            await st.parts([(0, calm(0)), (1, 14.0)])
            await until(lambda: view.events("raised"), "raised with the sink down", poll=poll)
            await st.parts([(2, calm(2)), (3, 14.1)])
            await until(lambda: gw.stats.sink_errors >= 1, "the sink failed", poll=poll)
            await until(lambda: len(view.events("raised")) == 2, "second alarm", poll=poll)
            assert gw.stats.lines_written == 0
    assert [a["part_serial"] for a in view.events("raised")] == [serial(1), serial(3)]


def test_alarm_context_uses_the_contract_keys(tmp_path: Path) -> None:
    """The 5M1E snapshot of an alarm names its keys as contracts/alarms-mqtt.md does."""
    cfg, models = load(config_dict(1883))  # the broker is never contacted: process() only
    gw = Gateway(cfg, models, data_dir=tmp_path / "gw", sources=[])
    try:
        fields = {"operator": "alice", "lot": "LOT-7", "program": "PRG-12"}
        samples = [
            Sample(
                CHAR,
                v,
                Quality.GOOD,
                part_time(k),
                source_time_us=part_time(k),
                serial=serial(k),
                fields=fields,
            )
            for k, v in ((0, 10.2), (1, 14.0))
        ]
        gw.process([("st", samples)])
        raised = [j for j in gw.alarms.journal() if j["event"] == "raised"]
    finally:
        gw.close()
    assert len(raised) == 1
    context = raised[0]["payload"]["context"]
    assert context["operator"] == "alice" and context["machine"] == "MC-7"
    assert context["method"] == "PRG-12"
    assert context["material_lot"] == "LOT-7"
    assert context["environment"] == {"temperature": 21.5}
    assert context["gauge"] == {"id": "G-42"}


async def test_malformed_mqtt_ack_is_counted_by_the_gateway(broker: Server, tmp_path: Path) -> None:
    async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
        await st.raw(f"{PREFIX}/cmd/{PATH}/ack", b"{not json")
        await until(lambda: gw.notifiers[0].stats.bad_commands == 1, "refused by the publisher")
        bad = gw.stats.bad_commands
    assert bad == 1


async def test_a_restart_keeps_the_retained_in_control_state(
    broker: Server, tmp_path: Path
) -> None:
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            await st.parts([(k, calm(k)) for k in range(3)])
            await until(lambda: last_state(view)["state"] == "in_control", "in_control", poll=poll)
        async with gateway(broker, tmp_path) as gw:  # same data_dir, no new part
            assert gw.records
    with watching(broker.port) as (late, lview):
        await until(
            lambda: lview.states and lview.status,
            "retained",
            poll=lambda: lview.take(late.messages),
        )
    assert lview.states[-1]["state"] == "in_control"


async def test_samples_are_times_without_serials_and_context_is_the_samples(
    broker: Server, tmp_path: Path
) -> None:
    """Without part serials ``samples`` lists the pattern's source times; the 5M1E context is
    the one of the completing sample, not of later parts."""
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with gateway(broker, tmp_path) as gw, Station(broker.port) as st:
            await st.parts([(0, 10.4), (1, 9.6), (2, 9.5)], sn=None, op="alice")
            await st.parts([(k, 10.6) for k in range(3, 11)], sn=None, op="alice")
            await st.parts([(11, 10.6)], sn=None, op="bob", lot="LOT-8")  # N2 completes
            await until(lambda: view.events("raised"), "N2 raised", poll=poll)
            # a later part with another operator and lot
            await st.parts([(12, 10.6)], sn=None, op="carol", lot="LOT-9")
            await until(lambda: gw.stats.points >= 13, "13 points judged", poll=poll)
    (n2,) = view.events("raised")
    assert n2["rule"] == "N2" and "part_serial" not in n2
    assert [sample_us(t) for t in n2["samples"]] == [part_time(k) for k in range(3, 12)]
    assert all(RFC3339_US.match(t) for t in n2["samples"])
    assert n2["context"]["operator"] == "bob"
    assert "LOT-8" in n2["context"].values() and "LOT-9" not in n2["context"].values()
    ctx = n2["context"]
    assert ctx["environment"] == {"temperature": 21.5} and ctx["gauge"] == {"id": "G-42"}
    assert ctx["machine"] == "MC-7" and ctx["method"] == "PRG-12"
    assert n2["alarm_id"] == alarm_id(PATH, "N2", gw.records[0].id, part_time(11), None)


PARTS_ABC = ((0, 10.2, "alice", "LOT-7"), (1, 14.0, "bob", "LOT-8"), (2, 10.1, "carol", "LOT-9"))


def test_alarm_context_is_the_completing_samples_within_a_batch(tmp_path: Path) -> None:
    cfg, models = load(config_dict(1883))  # the broker is never contacted: process() only
    gw = Gateway(cfg, models, data_dir=tmp_path / "gw", sources=[])
    try:
        samples = [
            Sample(
                CHAR,
                v,
                Quality.GOOD,
                part_time(k),
                source_time_us=part_time(k),
                serial=serial(k),
                fields={"operator": op, "lot": lot},
            )
            for k, v, op, lot in PARTS_ABC
        ]
        gw.process([("st", samples)])  # one micro-batch, as an MQTT burst arrives
        raised = [j for j in gw.alarms.journal() if j["event"] == "raised"]
    finally:
        gw.close()
    assert len(raised) == 1 and raised[0]["payload"]["part_serial"] == serial(1)
    assert raised[0]["payload"]["context"]["operator"] == "bob"


def test_mes_publishers_hear_of_an_alarm_before_the_screens_and_the_console(
    tmp_path: Path,
) -> None:
    """The publishers' notify (an MQTT publish at once) comes first; the web stream, the
    metrics, the console printer (a rich print costs more than the publish) and the log's
    ALARM line after it."""
    order: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("ALARM"):
                order.append("log")

    class Publisher:
        def notify(self) -> None:
            order.append("publish")

    cfg, models = load(config_dict(1883))  # the broker is never contacted: process() only
    gw = Gateway(
        cfg,
        models,
        data_dir=tmp_path / "gw",
        sources=[],
        on_alarm=lambda a: order.append("console"),
    )
    gw.notifiers.append(Publisher())  # type: ignore[arg-type]
    gw.alarm_listeners.append(lambda out: order.append("screens"))
    handler = Handler()
    logging.getLogger("collector.alarms").addHandler(handler)
    try:
        samples = [
            Sample(CHAR, v, Quality.GOOD, part_time(k), source_time_us=part_time(k))
            for k, v in ((0, 10.2), (1, 14.0))
        ]
        gw.process([("st", samples)])
    finally:
        logging.getLogger("collector.alarms").removeHandler(handler)
        gw.close()
    assert order == ["publish", "screens", "console", "log"]


async def test_the_alarm_file_is_checkpointed_by_the_gateway_not_by_alarm_commits(
    broker: Server, tmp_path: Path
) -> None:
    copied: list[int] = []
    with watching(broker.port) as (sub, view):
        poll = lambda: view.take(sub.messages)  # noqa: E731
        async with (
            gateway(broker, tmp_path, gw_kw={"checkpoint_interval_s": 0.05}) as gw,
            Station(broker.port) as st,
        ):
            ob = gw.alarms.outbox
            real = ob.checkpoint

            def counted() -> tuple[int, int]:
                frames, n = real()
                copied.append(n)
                return frames, n

            ob.checkpoint = counted  # type: ignore[method-assign]
            assert ob.query("PRAGMA wal_autocheckpoint") == [(BACKSTOP_CHECKPOINT_PAGES,)]
            await st.parts([(k, calm(k)) for k in range(4)] + [(4, 14.0)])
            await until(lambda: view.events("raised"), "raised", poll=poll)
            # the raise's commit is copied into the main file by the gateway's checkpoints
            await until(lambda: any(copied), "a checkpoint that copied the raise", poll=poll)
    assert len(view.events("raised")) == 1
