"""MqttSource against a real Debian mosquitto (tests.servers.mosquitto), published to with paho.

Every loop here is bounded in count and time; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import ConnectorError, Quality, Sample
from connectors.mqtt.client import MqttClient
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.source import MqttSource
from tests.connectors.mqtt import spb
from tests.servers import HOST, Server, cancel_and_wait, free_port, mosquitto

pytestmark = pytest.mark.integration

WAIT_S = 20.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    with mosquitto(tmp_path) as server:
        yield server


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Server]:
    """The same broker; ``tests.servers.mosquitto`` keeps it able to save its database as root."""
    with mosquitto(tmp_path) as server:
        yield server


def config(port: int, subscriptions: list[dict[str, Any]], **kw: Any) -> MqttSourceConfig:
    return MqttSourceConfig.model_validate(
        {
            "host": HOST,
            "port": port,
            "client_id": kw.pop("client_id", f"gw-{uuid.uuid4().hex[:8]}"),
            "keepalive": 10,
            "connect_timeout_s": 5,
            "reconnect_base_s": 0.1,
            "reconnect_cap_s": 0.5,
            "subscriptions": subscriptions,
            **kw,
        }
    )


def publish(
    port: int,
    messages: Sequence[tuple[str, bytes]],
    *,
    qos: int = 1,
    v5: bool = True,
    retain: bool = False,
) -> None:
    """Publish with a plain paho client and wait until the broker has every message."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    c.max_inflight_messages_set(200)
    try:
        c.connect(HOST, port)
        c.loop_start()
        deadline = time.monotonic() + WAIT_S
        while not c.is_connected():
            assert time.monotonic() < deadline, "publisher could not connect"
            time.sleep(0.01)
        infos = [c.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=WAIT_S)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


class Collector:
    """The ``emit`` callable: keeps every sample and wakes waiters."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.batches = 0
        self._changed = asyncio.Event()

    async def __call__(self, batch: Sequence[Sample]) -> None:
        self.samples.extend(batch)
        self.batches += 1
        self._changed.set()

    async def wait(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)


async def until(pred: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(source: MqttSource, emit: Collector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(emit))
    try:
        await until(lambda: source.stats.state == "connected" or task.done())
        if task.done():
            task.result()
        yield task
    finally:
        await cancel_and_wait(task)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_format_decoded(broker: Server, protocol: str) -> None:
    cfg = config(
        broker.port,
        [
            {
                "topic": "plant/+/gauge/+",
                "binding": "{1}.{3}",
                "value_path": "value",
                "timestamp_path": "ts",
                "serial_path": "sn",
                "context": {"lot": "meta.lot"},
            },
            {
                "topic": "plant/line1/station2",
                "bindings": [{"id": "od", "path": "d.od"}, {"id": "id", "path": "d.id"}],
                "timestamp_path": "time",
                "timestamp_unit": "us",
            },
            {
                "topic": "plant/line1/cmm/#",
                "batch": {"items_path": "r", "value_path": "v", "binding_path": "c"},
            },
            {"topic": "plant/line1/force", "format": "value", "binding": "force", "qos": 0},
            {
                "topic": "spBv1.0/plant1/DDATA/+/+",
                "format": "sparkplug_b",
                "metrics": {"Bore": "{4}.bore"},
            },
        ],
        protocol=protocol,
    )
    source = MqttSource(cfg, "line1")
    got = Collector()
    async with running(source, got) as task:
        ddata = spb.payload(
            [spb.metric("Bore", timestamp=1_764_144_000_001, datatype=spb.DOUBLE, value=7.25)],
            seq=3,
        )
        messages = [
            (
                "plant/line1/gauge/bore",
                json.dumps(
                    {
                        "value": 12.503,
                        "ts": "2025-11-26T08:00:00.5Z",
                        "sn": "P1",
                        "meta": {"lot": "L7"},
                    }
                ).encode(),
            ),
            (
                "plant/line1/station2",
                b'{"d": {"od": 49.98, "id": 30.01}, "time": 1764144000000001}',
            ),
            ("plant/line1/cmm/r1", b'{"r": [{"c": "w", "v": 1}, {"c": "h", "v": 2.5}]}'),
            ("plant/line1/force", b"1234.5"),
            ("spBv1.0/plant1/DDATA/edge1/dev9", ddata),
        ]
        await asyncio.to_thread(publish, broker.port, messages, v5=protocol == "5")
        await got.wait(lambda: len(got.samples) >= 7)
        assert not task.done()
    by = {s.binding: s for s in got.samples}
    assert set(by) == {"line1.bore", "od", "id", "w", "h", "force", "dev9.bore"}
    bore = by["line1.bore"]
    assert (bore.value, bore.serial, dict(bore.fields)) == (12.503, "P1", {"lot": "L7"})
    assert bore.source_time_us == 1_764_144_000_500_000
    assert bore.gateway_time_us > 1_764_144_000_000_000
    assert (by["od"].value, by["id"].value) == (49.98, 30.01)
    assert by["od"].source_time_us == 1_764_144_000_000_001
    assert (by["w"].value, by["h"].value, by["force"].value) == (1.0, 2.5, 1234.5)
    assert by["dev9.bore"].value == 7.25
    assert by["dev9.bore"].source_time_us == 1_764_144_000_001_000
    assert by["dev9.bore"].fields["seq"] == 3
    assert all(s.quality is Quality.GOOD for s in got.samples)
    assert source.stats.messages == 5
    assert source.stats.errors == 0
    assert source.stats.samples == 7
    assert source.stats.state == "stopped"


async def test_malformed_payloads_are_bad_samples_and_source_keeps_running(broker: Server) -> None:
    cfg = config(
        broker.port,
        [
            {"topic": "g/+", "binding": "{1}", "value_path": "v"},
            {"topic": "sp/#", "format": "sparkplug_b", "metrics": {"m": "m"}},
        ],
    )
    source = MqttSource(cfg, "bad")
    got = Collector()
    async with running(source, got) as task:
        await asyncio.to_thread(
            publish,
            broker.port,
            [
                ("g/a", b"{not json"),
                ("g/b", b'{"v": "twelve"}'),
                ("g/c", b'{"w": 1}'),
                ("g/d", b'{"v": NaN}'),
                ("sp/x", b"\xff\xff\xff"),
                ("g/e", b'{"v": 5}'),
            ],
        )
        await got.wait(lambda: any(s.binding == "e" for s in got.samples))
        assert not task.done()
    by = {s.binding: s for s in got.samples}
    assert set(by) == {"a", "b", "c", "d", "e"}
    for name in "abcd":
        assert by[name].quality is Quality.BAD
        assert math.isnan(by[name].value)
        assert by[name].status
    assert by["e"].value == 5.0
    assert by["e"].quality is Quality.GOOD
    assert source.stats.bad_samples == 4
    assert source.stats.errors == 5  # four bad values and the undecodable Sparkplug payload
    assert source.stats.last_error


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_broker_restart_loses_nothing(
    persistent_broker: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.mqtt.source")
    broker = persistent_broker
    cfg = config(
        broker.port, [{"topic": "r/+", "binding": "{1}", "value_path": "n"}], protocol=protocol
    )
    source = MqttSource(cfg, "restart")
    got = Collector()

    def numbers() -> set[int]:
        return {int(s.value) for s in got.samples}

    def batch(lo: int, hi: int) -> list[tuple[str, bytes]]:
        return [("r/x", json.dumps({"n": i}).encode()) for i in range(lo, hi)]

    async with running(source, got) as task:
        await asyncio.to_thread(publish, broker.port, batch(0, 50))
        await got.wait(lambda: len(numbers()) == 50)
        await asyncio.to_thread(broker.restart)
        # Published right after the restart, most likely before the gateway is back:
        # the broker queues them in the persisted session.
        await asyncio.to_thread(publish, broker.port, batch(50, 100))
        await got.wait(lambda: len(numbers()) == 100)
        await until(lambda: source.stats.state == "connected")
        await asyncio.to_thread(publish, broker.port, batch(100, 120))
        await got.wait(lambda: len(numbers()) == 120)
        assert not task.done()
    assert numbers() == set(range(120))
    assert source.stats.reconnects >= 1
    assert source.stats.errors >= 1  # the lost connection
    assert source.stats.bad_samples == 0
    said = [r.getMessage() for r in caplog.records if r.name == "connectors.mqtt.source"]
    assert sum("broker lost" in m for m in said) == 1  # once each way, however many retries
    assert sum("broker regained (session kept: True)" in m for m in said) == 1
    last_save = (broker.workdir / "server.log").read_text().rsplit("Saving in-memory database", 1)
    assert "Error saving" not in last_save[-1]  # the restart really went through persistence


async def test_messages_published_while_gateway_is_away_arrive(broker: Server) -> None:
    cfg = config(
        broker.port, [{"topic": "q/+", "binding": "{1}", "value_path": "n"}], client_id="gw-away"
    )
    first = Collector()
    async with running(MqttSource(cfg, "away"), first):
        await asyncio.to_thread(publish, broker.port, [("q/a", b'{"n": -1}')])
        await first.wait(lambda: len(first.samples) == 1)
    # the gateway is down now; its session (same client id) keeps queueing QoS 1
    await asyncio.to_thread(
        publish, broker.port, [("q/a", json.dumps({"n": i}).encode()) for i in range(30)]
    )
    second = Collector()
    async with running(MqttSource(cfg, "away"), second):
        await second.wait(lambda: len(second.samples) >= 30)
    assert sorted(int(s.value) for s in second.samples) == list(range(30))


async def test_burst_of_2000_messages(broker: Server) -> None:
    cfg = config(broker.port, [{"topic": "b/+", "binding": "{1}", "value_path": "n"}])
    source = MqttSource(cfg, "burst")
    got = Collector()
    n = 2000
    async with running(source, got):
        await asyncio.to_thread(
            publish, broker.port, [("b/x", json.dumps({"n": i}).encode()) for i in range(n)]
        )
        await got.wait(lambda: len(got.samples) >= n, timeout=40)
    assert sorted(int(s.value) for s in got.samples) == list(range(n))
    assert source.stats.messages == n
    assert source.stats.dropped == 0
    assert got.batches <= n


async def test_unreachable_broker_is_retried_not_raised() -> None:
    cfg = config(free_port(), [{"topic": "x", "binding": "x", "value_path": "v"}])
    source = MqttSource(cfg, "down")
    task = asyncio.create_task(source.run(Collector()))
    try:
        await until(lambda: source.stats.errors >= 3 or task.done())
        assert not task.done()
        assert source.stats.state == "disconnected"
        assert "connect" in source.stats.last_error
    finally:
        await cancel_and_wait(task)


async def test_missing_password_variable_is_not_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHOPSPC_TEST_NO_SUCH_PW", raising=False)
    cfg = config(
        free_port(),
        [{"topic": "x", "binding": "x", "value_path": "v"}],
        username="u",
        password_env="SHOPSPC_TEST_NO_SUCH_PW",
    )
    with pytest.raises(ConnectorError, match="SHOPSPC_TEST_NO_SUCH_PW") as e:
        await MqttSource(cfg, "pw").run(Collector())
    assert not e.value.retryable


async def test_socket_has_tcp_nodelay_and_session_persists(broker: Server) -> None:
    cfg = config(
        broker.port, [{"topic": "n", "binding": "n", "value_path": "v"}], client_id="gw-nd"
    )
    client = MqttClient(cfg, "test")
    try:
        assert await client.connect() is False  # first time: no session yet
        sock = client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert await client.subscribe([("n", 1)]) == [1]
    finally:
        await client.close()
    again = MqttClient(cfg, "test")
    try:
        assert await again.connect() is True  # the broker kept our session
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("protocol", "retained", "expected"),
    [("5", "skip", {2.0}), ("3.1.1", "skip", {2.0}), ("5", "accept", {1.0, 2.0})],
)
async def test_retained_last_value_is_skipped_unless_accepted(
    broker: Server, protocol: str, retained: str, expected: set[float]
) -> None:
    await asyncio.to_thread(publish, broker.port, [("k/a", b'{"v": 1}')], retain=True)
    cfg = config(
        broker.port,
        [{"topic": "k/+", "binding": "{1}", "value_path": "v"}],
        protocol=protocol,
        retained=retained,
    )
    source = MqttSource(cfg, "retained")
    got = Collector()
    async with running(source, got):
        await asyncio.to_thread(publish, broker.port, [("k/a", b'{"v": 2}')])
        await got.wait(lambda: any(s.value == 2.0 for s in got.samples))
    assert {s.value for s in got.samples} == expected
    if protocol == "3.1.1":  # MQTT 5 asks the broker not to send it at all
        assert source.stats.retained_skipped == 1


class SlowCollector(Collector):
    """An ``emit`` that stalls now and then, so the receive buffer fills up."""

    async def __call__(self, batch: Sequence[Sample]) -> None:
        if self.batches % 10 == 0:
            await asyncio.sleep(0.05)
        await super().__call__(batch)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_slow_emit_with_a_tiny_buffer_loses_no_qos1(broker: Server, protocol: str) -> None:
    cfg = config(
        broker.port,
        [{"topic": "s/+", "binding": "{1}", "value_path": "n"}],
        protocol=protocol,
        queue_size=4,
        queue_block_s=0.01,
        max_batch=3,
    )
    source = MqttSource(cfg, "slow")
    got = SlowCollector()
    n = 300
    async with running(source, got):
        await asyncio.to_thread(
            publish, broker.port, [("s/x", json.dumps({"n": i}).encode()) for i in range(n)]
        )
        await got.wait(lambda: len(got.samples) >= n, timeout=40)
    assert sorted(int(s.value) for s in got.samples) == list(range(n))
    assert source.stats.dropped == 0


async def test_sparkplug_aliases_from_dbirth_through_the_broker(broker: Server) -> None:
    cfg = config(
        broker.port,
        [
            {
                "topic": "spBv1.0/plant1/+/edge1/+",
                "format": "sparkplug_b",
                "metrics": {"Gauge/Bore": "{4}.bore"},
            }
        ],
    )
    source = MqttSource(cfg, "spb")
    got = Collector()
    birth = spb.payload(
        [spb.metric("Gauge/Bore", alias=5, datatype=spb.FLOAT, value=0.5)],
        timestamp=1_764_144_000_000,
        seq=0,
    )
    data = [
        spb.payload([spb.metric(alias=5, datatype=spb.FLOAT, value=float(i))], seq=i)
        for i in range(1, 6)
    ]
    async with running(source, got):
        await asyncio.to_thread(
            publish,
            broker.port,
            [("spBv1.0/plant1/DBIRTH/edge1/g1", birth)]
            + [("spBv1.0/plant1/DDATA/edge1/g1", d) for d in data],
        )
        await got.wait(lambda: len(got.samples) >= 6)
    assert [s.value for s in got.samples] == [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert {s.binding for s in got.samples} == {"g1.bore"}
    assert [s.fields["seq"] for s in got.samples] == list(range(6))
