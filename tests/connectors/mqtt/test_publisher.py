"""MqttLink (publishing with confirmation) against a real Debian mosquitto.

Subscribers are plain paho clients in their own network thread; every wait is
bounded in time and no timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import ConnectorError
from connectors.mqtt.client import MqttLink, Outgoing, PublishRefusedError
from connectors.mqtt.config import MqttPublisherConfig
from tests.servers import HOST, Server, free_port, mosquitto, require_binary, run_server

pytestmark = pytest.mark.integration

WAIT_S = 15.0


@dataclass(frozen=True)
class Received:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None


class Subscriber:
    """A paho MQTT 5 subscriber (test side) that reconnects by itself and re-subscribes.

    ``persistent`` keeps its session at the broker, so messages published while
    it is away (a broker restart) are queued for it.
    """

    def __init__(
        self, port: int, topic: str, *, client_id: str = "", persistent: bool = False
    ) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sub-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self._client.reconnect_delay_set(0.1, 0.5)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self._client.connect(HOST, port, 30, clean_start=not persistent, properties=props)
        self._client.loop_start()
        assert self._subscribed.wait(WAIT_S), "no SUBACK"

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        ct = getattr(msg.properties, "ContentType", None) if msg.properties else None
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), ct))

    async def get(self, timeout: float = WAIT_S) -> Received:
        """The next message (fails the test after ``timeout``)."""
        try:
            return await asyncio.to_thread(self.messages.get, True, timeout)
        except queue.Empty:
            pytest.fail(f"no message within {timeout} s")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def subscriber(port: int, topic: str, **kw: object) -> Iterator[Subscriber]:
    """A :class:`Subscriber`, closed afterwards."""
    sub = Subscriber(port, topic, **kw)  # type: ignore[arg-type]
    try:
        yield sub
    finally:
        sub.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    with mosquitto(tmp_path) as server:
        yield server


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Server]:
    """mosquitto that lets anonymous clients publish only below ``ok/``."""
    binary = require_binary("mosquitto")
    port = free_port()
    (tmp_path / "acl").write_text("topic readwrite ok/#\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\nacl_file {tmp_path}/acl\n"
        "log_dest stdout\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    with run_server([binary, "-c", str(conf)], port, tmp_path) as server:
        yield server


def cfg(port: int, **kw: object) -> MqttPublisherConfig:
    return MqttPublisherConfig.model_validate(
        {"host": HOST, "port": port, "connect_timeout_s": 5, "publish_timeout_s": 5, **kw}
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_publish_many_confirms_in_order_with_flags(broker: Server, protocol: str) -> None:
    with subscriber(broker.port, "t/#") as sub:
        link = MqttLink(cfg(broker.port, protocol=protocol, max_inflight=3), "pub-1")
        try:
            assert await link.connect() is False
            msgs = [Outgoing(f"t/alarm/{i}", f'{{"i":{i}}}'.encode(), 1, False) for i in range(20)]
            msgs.append(Outgoing("t/state/x", b'{"state":"out_of_control"}', 1, True))
            await link.publish_many(msgs)
        finally:
            await link.close()
        got = [await sub.get() for _ in msgs]
    assert [(m.topic, m.payload) for m in got] == [(m.topic, m.payload) for m in msgs]
    assert all(m.qos == 1 and not m.retain for m in got)  # live copies carry no RETAIN flag
    want_ct = "application/json" if protocol == "5" else None
    assert {m.content_type for m in got} == {want_ct}
    with subscriber(broker.port, "t/state/#") as late:
        retained = await late.get()
    assert (retained.topic, retained.payload, retained.retain) == (
        "t/state/x",
        b'{"state":"out_of_control"}',
        True,
    )


async def test_graceful_close_publishes_final_status_and_no_will(broker: Server) -> None:
    will = Outgoing("gw/status", b'{"status":"offline","how":"will"}', 1, True)
    with subscriber(broker.port, "gw/status") as sub:
        link = MqttLink(cfg(broker.port), "pub-2", will=will)
        await link.connect()
        await link.publish_many([Outgoing("gw/status", b'{"status":"online"}', 1, True)])
        await link.close(graceful_payload=b'{"status":"offline","how":"graceful"}')
        # A marker published after the close: the Will, if any, would arrive before it.
        marker = MqttLink(cfg(broker.port), "marker")
        await marker.connect()
        await marker.publish_many([Outgoing("gw/status", b"marker", 1, False)])
        await marker.close()
        got = [(await sub.get()).payload for _ in range(3)]
    assert got == [
        b'{"status":"online"}',
        b'{"status":"offline","how":"graceful"}',
        b"marker",
    ]


async def test_commands_reach_the_callback(broker: Server) -> None:
    seen: list[tuple[str, bytes]] = []
    link = MqttLink(cfg(broker.port), "pub-3", on_message=lambda t, p: seen.append((t, p)))
    try:
        await link.connect()
        assert await link.subscribe("cmd/+/ack", 1) == 1
        await link.publish_many([Outgoing("cmd/a/ack", b'{"alarm_id":"A"}', 1, False)])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
    finally:
        await link.close()
    assert seen == [("cmd/a/ack", b'{"alarm_id":"A"}')]


async def test_refused_message_is_named_and_the_others_confirmed(acl_broker: Server) -> None:
    link = MqttLink(cfg(acl_broker.port), "pub-4")
    try:
        await link.connect()
        msgs = [Outgoing("ok/1", b"{}"), Outgoing("denied/2", b"{}"), Outgoing("ok/3", b"{}")]
        with pytest.raises(PublishRefusedError) as err:
            await link.publish_many(msgs)
        assert not err.value.retryable
        assert list(err.value.refused) == [1]
        assert "denied/2" in str(err.value)
        await link.publish_many([Outgoing("ok/4", b"{}")])  # the link is still usable
    finally:
        await link.close()


async def test_no_broker_is_retryable() -> None:
    link = MqttLink(cfg(free_port()), "pub-5")
    try:
        with pytest.raises(ConnectorError) as err:
            await link.connect()
        assert err.value.retryable
    finally:
        await link.close()


async def test_lost_broker_fails_the_batch_retryably(broker: Server) -> None:
    lost: list[str] = []
    link = MqttLink(cfg(broker.port), "pub-6", on_lost=lost.append)
    try:
        await link.connect()
        broker.stop()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost
        with pytest.raises(ConnectorError) as err:
            await link.publish_many([Outgoing("t/x", b"{}")])
        assert err.value.retryable
    finally:
        await link.close()


def test_publisher_config_defaults_and_checks() -> None:
    c = MqttPublisherConfig()
    assert (c.host, c.port, c.protocol, c.client_id, c.max_inflight) == (
        "127.0.0.1",
        1883,
        "5",
        None,
        100,
    )
    with pytest.raises(ValueError, match="password_env needs a username"):
        MqttPublisherConfig(password_env="X")
    with pytest.raises(ValueError, match="extra"):
        MqttPublisherConfig.model_validate({"hots": "x"})


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_session_persists_and_queues_commands_while_away(
    broker: Server, protocol: str
) -> None:
    c = cfg(broker.port, protocol=protocol)
    first = MqttLink(c, "pub-persist")
    try:
        assert await first.connect() is False
        await first.subscribe("cmd/#", 1)
    finally:
        await first.close()
    sender = MqttLink(cfg(broker.port), "sender")
    try:
        await sender.connect()
        await sender.publish_many([Outgoing("cmd/x", b'{"alarm_id":"A"}', 1, False)])
    finally:
        await sender.close()
    seen: list[tuple[str, bytes]] = []
    second = MqttLink(c, "pub-persist", on_message=lambda t, p: seen.append((t, p)))
    try:
        assert await second.connect() is True
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
    finally:
        await second.close()
    assert seen == [("cmd/x", b'{"alarm_id":"A"}')]
