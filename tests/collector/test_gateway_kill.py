"""``shopspc run`` killed with SIGKILL at random moments while a station bursts planted violations,
and a gateway whose wall clock jumps: MES still sees every alarm raised exactly once, in seq order.

The kill test runs the real console script as a subprocess against a real mosquitto;
its source and the MES subscriber keep persistent sessions (fixed client ids, QoS 1).
Every wait is bounded; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import collector.pipeline as pipeline
from collector.alarms import alarm_id
from collector.pipeline import Gateway
from connectors.base import Quality, Sample
from tests.collector.gateway_runner import (
    CHAR,
    PATH,
    PREFIX,
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
from tests.servers import Server, mosquitto

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261126
PARTS = 360
EVERY = 6  # part k with k % EVERY == 3 is beyond the UCL
CHUNK = 30
SOURCE_ID = "gw-kill-source"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    d = tmp_path / "broker"
    d.mkdir()
    with mosquitto(d) as server:
        yield server


def planted(k: int) -> bool:
    return k % EVERY == 3


def value(k: int) -> float:
    return 14.0 + (k % 7) / 10 if planted(k) else calm(k)


def start_gateway(config: Path, log: Path) -> subprocess.Popen:
    shopspc = Path(sys.executable).with_name("shopspc")
    argv = [str(shopspc)] if shopspc.exists() else [sys.executable, "-m", "collector.cli"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "run", "--config", str(config), "--drain-deadline", "2"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def starts(view: View) -> int:
    """How many gateway processes announced themselves online (each has its own start time)."""
    return len({s["start_time"] for s in view.status if s["status"] == "online"})


def last_start(view: View) -> str:
    """Start time of the newest gateway process that announced itself online."""
    return max(s["start_time"] for s in view.status if s["status"] == "online")


def ensure_dead(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.integration
async def test_kill_9_at_random_moments_loses_and_doubles_no_alarm(
    broker: Server, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "gw"
    config = tmp_path / "gw.yaml"
    config.write_text(
        json.dumps(
            config_dict(
                broker.port,
                data_dir=str(data_dir),
                rules=("N1",),
                clear_after=1,
                source_client_id=SOURCE_ID,
            )
        )
    )
    log = tmp_path / "gateway.log"
    # the source's persistent session exists before the first start: nothing published is lost
    Subscriber(broker.port, "plant/+/+/meas", client_id=SOURCE_ID, persistent=True).close()
    sub = Subscriber(broker.port, f"{PREFIX}/#", client_id="mes-kill", persistent=True)
    view = View()
    poll = lambda: view.take(sub.messages)  # noqa: E731
    want = [k for k in range(PARTS) if planted(k)]
    proc = start_gateway(config, log)
    kills = 0
    try:
        async with asyncio.timeout(50), Station(broker.port, "station-kill") as st:

            async def produce() -> None:
                for start in range(0, PARTS, CHUNK):
                    await st.parts([(k, value(k)) for k in range(start, start + CHUNK)])
                    await asyncio.sleep(0.5)  # the burst spans the kills

            producer = asyncio.create_task(produce())
            for round_ in range(3):
                await until(lambda n=round_: starts(view) > n, "gateway online", poll=poll)
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
                kills += 1
                proc = start_gateway(config, log)
            await producer
            await until(
                lambda: (
                    starts(view) > 3
                    and {a["part_serial"] for a in view.events("raised")}
                    >= {serial(k) for k in want}
                    and len(view.events("cleared")) >= len(want)
                ),
                "every planted alarm raised and cleared",
                timeout=30,
                poll=poll,
            )
            # one more part for the last instance: a restart publishes no_data until a point
            await st.parts([(PARTS, calm(PARTS))])
            await until(
                lambda: (
                    starts(view) > 3
                    and view.states[-1]["state"] == "in_control"
                    and view.states[-1]["time"] >= last_start(view)
                ),
                "the last instance judged a point",
                poll=poll,
            )
            os.kill(proc.pid, signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
            poll()
        # a late subscriber: the last part was in control, the gateway stopped gracefully
        late = Subscriber(broker.port, f"{PREFIX}/#")
        lview = View()
        try:
            await until(
                lambda: lview.states and lview.status,
                "retained state and status",
                poll=lambda: lview.take(late.messages),
            )
        finally:
            late.close()
    finally:
        ensure_dead(proc)
        sub.close()
    assert kills == 3
    assert lview.states[-1]["_retain"] and lview.states[-1]["state"] == "in_control"
    assert lview.status[-1]["_retain"] and lview.status[-1]["status"] == "offline"
    assert proc.returncode == 0, log.read_text()[-3000:]

    unique = view.unique()
    raised = [a for a in unique if a["event"] == "raised"]
    limits_id = raised[0]["limits_id"]
    expected = [alarm_id(PATH, "N1", limits_id, part_time(k), serial(k), chart="x") for k in want]
    # every planted alarm raised once, in part order, nothing else raised
    assert [a["alarm_id"] for a in raised] == expected
    # never two raises of one (characteristic, chart, rule) without a clear between
    open_ = None
    for a in unique:
        if a["event"] == "raised":
            assert open_ is None, f"{a['alarm_id']} raised while {open_} active"
            open_ = a["alarm_id"]
        elif a["event"] == "cleared":
            assert a["alarm_id"] == open_
            open_ = None
    # seq: strictly increasing and contiguous once duplicates are removed
    seqs = [a["seq"] for a in unique]
    assert seqs == list(range(1, len(seqs) + 1))
    # in arrival order MES never sees a gap: each seq is a re-delivery or the next one
    top = 0
    for a in view.alarms:
        assert a["seq"] <= top + 1, f"seq {a['seq']} arrived after {top}"
        top = max(top, a["seq"])
    # a re-delivered copy is the same message
    first = {(a["alarm_id"], a["event"]): a for a in unique}
    assert all(a == first[(a["alarm_id"], a["event"])] for a in view.alarms)
    # the gateway's own journal agrees with what MES saw
    with contextlib.closing(
        sqlite3.connect(f"file:{data_dir / 'alarms.db'}?mode=ro", uri=True)
    ) as db:
        rows = db.execute(
            "SELECT seq, alarm_id, event FROM journal WHERE published = 1 ORDER BY seq"
        ).fetchall()
    assert rows == [(a["seq"], a["alarm_id"], a["event"]) for a in unique]


HOUR_US = 3_600_000_000


class Clock:
    """The gateway's wall clock, set by the test."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def feed(gw: Gateway, *parts: tuple[int, float]) -> None:
    samples = [
        Sample(CHAR, v, Quality.GOOD, part_time(k), source_time_us=part_time(k), serial=serial(k))
        for k, v in parts
    ]
    gw.process([("st", samples)])


def test_wall_clock_jumps_keep_seq_and_identity_and_shelve_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back 1 h, then forward 1 h: seq strictly increasing, no re-raise, the shelve expires
    only once wall time passes its expiry (the manager reads time only through the pipeline)."""
    w0 = part_time(0) + 10 * HOUR_US
    clock = Clock(w0)
    monkeypatch.setattr(pipeline, "_now_us", clock)
    cfg, models = load(config_dict(1883, rules=("N1",), clear_after=3))
    gw = Gateway(cfg, models, data_dir=tmp_path / "gw", sources=[])  # never run: no broker
    try:
        feed(gw, (0, calm(0)), (1, 14.0))
        (a,) = [j for j in gw.alarms.journal() if j["event"] == "raised"]
        gw.command(PATH, {"alarm_id": a["alarm_id"], "user": "lead", "minutes": 30}, "shelve")
        clock.now_us = w0 - HOUR_US  # the wall clock is set back an hour
        gw.tick_alarms(clock())
        feed(gw, (2, 14.2))  # still the same alarm: updated, not raised again
        gw.tick_alarms(clock())
        shelved_early = gw.alarms.active()[0]["shelved_until"]
        feed(gw, (3, calm(3)), (4, calm(4)), (5, calm(5)))  # clears A
        feed(gw, (6, 14.4))  # B, raised at a shelved point: held
        clock.now_us = w0 - HOUR_US + 29 * 60_000_000  # 29 min later: before the expiry
        gw.tick_alarms(clock())
        held_events = [j["event"] for j in gw.alarms.journal() if j["published"]]
        clock.now_us = w0 + HOUR_US  # forward: past the expiry
        gw.tick_alarms(clock())
        journal = gw.alarms.journal()
        entries = gw.alarms.outbox.peek("mqtt", 1000)
    finally:
        gw.close()
    assert shelved_early == w0 + 30 * 60_000_000  # the jump back moved nothing
    published = [j for j in journal if j["published"]]
    assert held_events == ["raised", "shelved", "cleared"]
    assert [j["event"] for j in published] == [
        "raised",
        "shelved",
        "cleared",
        "unshelved",
        "raised",
    ]
    assert [j["seq"] for j in published] == [1, 2, 3, 4, 5]
    unshelved = published[3]
    assert unshelved["user"] == "system" and unshelved["alarm_id"] == a["alarm_id"]
    assert unshelved["time_us"] == w0 + HOUR_US
    raised = [j for j in journal if j["event"] == "raised"]
    b = published[4]["alarm_id"]
    # B: recorded held at raise time, published once at the expiry; A never raised again
    assert [(r["alarm_id"], r["published"]) for r in raised] == [
        (a["alarm_id"], 1),
        (b, 0),
        (b, 1),
    ]
    assert published[4]["payload"]["part_serial"] == serial(6)
    assert [j["event"] for j in journal if j["alarm_id"] == a["alarm_id"]].count("raised") == 1
    # what MES gets from the outbox: alarm events in seq order, whatever the wall clock did
    alarms = [json.loads(e.payload)["payload"] for e in entries]
    alarms = [p for p in alarms if p.get("schema") == "shopspc.alarm/1"]
    assert [p["seq"] for p in alarms] == [1, 2, 3, 4, 5]
    times = [p["event_time"] for p in alarms]
    assert times[2] < times[1]  # the clear happened "before" the shelve on the wall clock
