"""MqttClient's receive buffer without a broker: overflow policy, ordering, loss of connection.

paho runs in the event loop (connectors/mqtt/client.py), so its callbacks are called
directly here, as the loop would.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import ConnectorError
from connectors.mqtt.client import MqttClient, _Client, _OnLoop
from connectors.mqtt.config import MqttSourceConfig


def make_client(**kw: Any) -> MqttClient:
    cfg = MqttSourceConfig.model_validate(
        {
            "host": "127.0.0.1",
            "client_id": "unit",
            "subscriptions": [{"topic": "t/+", "binding": "b", "value_path": "v"}],
            **kw,
        }
    )
    client = MqttClient(cfg, "unit")
    client._bind(asyncio.get_running_loop())
    return client


def msg(n: int, qos: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=f"t/{n}", payload=str(n).encode(), qos=qos, retain=False, mid=n)


def deliver(client: MqttClient, *messages: SimpleNamespace) -> None:
    # paho runs in the event loop: its callbacks are plain calls there
    for m in messages:
        client._on_message(None, None, m)


async def test_batches_keep_arrival_order_and_stamp_receive_time() -> None:
    client = make_client()
    try:
        deliver(client, *(msg(i, qos=1) for i in range(5)))
        got = await client.receive(3)
        assert [m.topic for m in got] == ["t/0", "t/1", "t/2"]
        rest = await client.receive(10)
        assert [m.payload for m in rest] == [b"3", b"4"]
        assert all(m.received_us > 1_700_000_000_000_000 for m in got + rest)
        assert [m.mid for m in rest] == [3, 4]
    finally:
        await client.close()


async def test_a_full_buffer_stops_reading_until_the_source_takes_messages() -> None:
    client = make_client(queue_size=2, queue_block_s=60)
    try:
        deliver(client, msg(1), msg(2))
        assert not client._io.paused
        deliver(client, msg(3))  # already parsed when the buffer was found full: kept
        assert client._io.paused and client.dropped == 0
        assert [m.topic for m in await client.receive(10)] == ["t/1", "t/2", "t/3"]
        assert not client._io.paused
    finally:
        await client.close()


async def test_qos0_is_dropped_only_after_the_buffer_stayed_full_for_queue_block_s() -> None:
    client = make_client(queue_size=2, queue_block_s=0.05)
    try:
        deliver(client, msg(1), msg(2), msg(3))
        assert client._io.paused
        for _ in range(100):
            if not client._io.paused:
                break
            await asyncio.sleep(0.01)
        assert not client._io.paused  # reading resumed to drop QoS 0
        deliver(client, msg(4), msg(5), msg(6, qos=1))
        assert client.dropped == 2  # the newest QoS 0 ones; QoS 1 is never dropped
        got = await client.receive(10)
        assert [m.topic for m in got] == ["t/1", "t/2", "t/3", "t/6"]
        deliver(client, msg(7))  # room again
        assert [m.topic for m in await client.receive(10)] == ["t/7"]
        assert client.dropped == 2
    finally:
        await client.close()


async def test_qos1_is_kept_while_the_buffer_is_full() -> None:
    client = make_client(queue_size=2, queue_block_s=0)
    try:
        deliver(client, *(msg(i, 1) for i in range(1, 6)))
        await asyncio.sleep(0.01)
        deliver(client, msg(6, 1))
        got = await client.receive(10)
        assert [m.topic for m in got] == [f"t/{i}" for i in range(1, 7)]
        assert client.dropped == 0
    finally:
        await client.close()


def test_reads_take_what_the_socket_has_in_one_recv() -> None:
    assert callable(getattr(paho.Client, "_sock_recv", None))  # the hook _Client overrides
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        client = _Client(CallbackAPIVersion.VERSION2, client_id="unit")
        client._sock = a
        b.sendall(b"\x30\x05hello")
        assert client._sock_recv(1) == b"\x30"
        assert client.buffered()
        assert client._sock_recv(1) == b"\x05"
        assert client._sock_recv(5) == b"hello"
        assert not client.buffered()
        with pytest.raises(BlockingIOError):
            client._sock_recv(1)
        b.close()
        assert client._sock_recv(1) == b""  # end of stream: paho sees the connection lost
    finally:
        a.close()
        b.close()


async def test_lost_connection_after_the_buffered_messages() -> None:
    client = make_client()
    try:
        deliver(client, msg(1, 1), msg(2, 1))
        client._set_lost("connection lost (test)")
        assert [m.topic for m in await client.receive(10)] == ["t/1", "t/2"]
        with pytest.raises(ConnectorError, match="connection lost") as e:
            await client.receive(10)
        assert e.value.retryable
        with pytest.raises(ConnectorError):
            await client.receive(10)
    finally:
        await client.close()


async def test_lost_connection_fails_a_pending_connect() -> None:
    client = make_client()
    try:
        client._connack = asyncio.get_running_loop().create_future()
        client._set_lost("connection lost (test)")
        with pytest.raises(ConnectorError) as e:
            await client._connack
        assert e.value.retryable
    finally:
        await client.close()


def _publish_packet(
    topic: bytes, payload: bytes, qos: int, retain: bool, mid: int, props: bytes, v5: bool
) -> tuple[int, bytearray]:
    header = 0x30 | (qos << 1) | int(retain)
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        n, size = b"", len(props)
        while True:
            size, digit = divmod(size, 128)
            n += bytes((digit | (0x80 if size else 0),))
            if not size:
                break
        body += n + props
    return header, bytearray(body + payload)


_PROPS = st.sampled_from(
    [
        b"",
        b"\x03\x00\x10application/json",  # content type
        b"\x01\x01",  # payload format indicator
        b"\x26\x00\x01k\x00\x01v" * 20,  # user properties (over 127 bytes: 2-byte length)
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    mid=st.integers(1, 65535),
    props=_PROPS,
    v5=st.booleans(),
)
def test_the_fast_publish_path_decodes_what_paho_decodes(
    topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: bytes, v5: bool
) -> None:
    """The source's PUBLISH decoding gives what paho's own gives, for both protocols."""
    header, packet = _publish_packet(topic.encode(), payload, qos, retain, mid, props, v5)
    proto = paho.MQTTv5 if v5 else paho.MQTTv311
    fast: list[tuple] = []
    slow: list[tuple] = []
    a = _Client(CallbackAPIVersion.VERSION2, client_id="a", protocol=proto, manual_ack=True)
    a.fast_publish = lambda *fields: fast.append(fields)
    b = _Client(CallbackAPIVersion.VERSION2, client_id="b", protocol=proto, manual_ack=True)
    b.on_message = lambda c, u, m: slow.append(
        (m.topic, bytes(m.payload), m.qos, bool(m.retain), m.mid if m.qos else 0)
    )
    for c in (a, b):
        c._in_packet = {"command": header, "packet": bytearray(packet)}
        assert c._handle_publish() == paho.MQTT_ERR_SUCCESS
    assert fast == slow and len(fast) == 1


def test_a_malformed_publish_takes_pahos_path() -> None:
    a = _Client(CallbackAPIVersion.VERSION2, client_id="a", manual_ack=True)
    got: list[tuple] = []
    a.fast_publish = lambda *fields: got.append(fields)
    a._in_packet = {"command": 0x32, "packet": bytearray(b"\x00\x09ab")}  # topic runs past the end
    with pytest.raises(Exception, match=r"(?i)malformed|unpack|struct"):
        a._handle_publish()
    assert got == []


def test_acks_of_a_batch_are_one_write() -> None:
    a, b = socket.socketpair()
    try:
        client = _Client(CallbackAPIVersion.VERSION2, client_id="unit", manual_ack=True)
        client._sock = a
        sends: list[int] = []
        send = client._sock_send

        def counted(buf: Any) -> int:
            sends.append(len(buf))
            return send(buf)

        client._sock_send = counted  # type: ignore[method-assign]
        client.ack_many([1, 258, 65535])  # no event loop registered: paho writes at once
        assert sends == [12]
        assert b.recv(100) == b"\x40\x02\x00\x01\x40\x02\x01\x02\x40\x02\xff\xff"
    finally:
        a.close()
        b.close()


class _Writers:
    """Counts the writers an _OnLoop registers with the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.added = 0
        self.removed = 0
        add, remove = loop.add_writer, loop.remove_writer

        def add_writer(*args: Any) -> None:
            self.added += 1
            add(*args)

        def remove_writer(*args: Any) -> bool:
            self.removed += 1
            return remove(*args)

        loop.add_writer = add_writer  # type: ignore[method-assign]
        loop.remove_writer = remove_writer  # type: ignore[method-assign]


def _on_loop(a: socket.socket) -> tuple[_Client, _OnLoop]:
    a.setblocking(False)
    client = _Client(CallbackAPIVersion.VERSION2, client_id="unit", manual_ack=True)
    io = _OnLoop(client, "unit")
    io.bind(asyncio.get_running_loop())
    client._sock = a
    io._attach(a)
    return client, io


async def test_a_write_the_socket_takes_whole_needs_no_writer() -> None:
    a, b = socket.socketpair()
    try:
        writers = _Writers(asyncio.get_running_loop())
        client, io = _on_loop(a)
        for mid in range(1, 50):
            client.ack_many([mid])  # paho asks for a writer ...
            io.flush()  # ... and the write is done before the selector would be asked
            await asyncio.sleep(0)
        assert b.recv(1000) == b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in range(1, 50))
        assert (writers.added, writers.removed) == (0, 0)
        client.ack_many([7])  # not flushed: written in the next turn, still without a writer
        await asyncio.sleep(0)
        assert b.recv(100) == b"\x40\x02\x00\x07"
        assert writers.added == 0 and not client.want_write()
    finally:
        io._detach(a)
        a.close()
        b.close()


async def test_a_write_larger_than_the_socket_buffer_waits_for_the_selector() -> None:
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        writers = _Writers(loop)
        client, io = _on_loop(a)
        mids = list(range(1, 65536)) * 4  # about 1 MiB of PUBACKs in one queued packet
        want = b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in mids)
        client.ack_many(mids)
        got = bytearray()
        async with asyncio.timeout(30):
            while len(got) < len(want):
                got += await loop.sock_recv(b, 65536)
        assert bytes(got) == want
        for _ in range(3):
            await asyncio.sleep(0)
        assert writers.added == 1 and writers.removed == 1  # asked once, released when done
        assert not client.want_write()
    finally:
        io._detach(a)
        a.close()
        b.close()


class _FakeIo:
    """Stands in for ``_OnLoop``: ``close`` waits like a full send buffer does."""

    def __init__(self) -> None:
        self.aborted = 0
        self.closing = asyncio.Event()

    def call(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def abort(self, _: object = None) -> None:
        self.aborted += 1

    async def close(self) -> None:
        try:
            self.closing.set()
            await asyncio.sleep(10)
        finally:
            self.abort()


async def test_a_close_cancelled_twice_still_closes_the_socket_of_a_late_connect() -> None:
    """Stopping a source cancels again while it closes: the socket is closed anyway, also the
    one a connect still running in its worker thread opens after the cancellation."""
    from connectors.mqtt.client import _close_after_opening

    loop = asyncio.get_running_loop()
    opening: asyncio.Future[None] = loop.create_future()
    io = _FakeIo()
    task = asyncio.create_task(_close_after_opening(opening, io))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()  # while waiting for the connect
    await asyncio.sleep(0)
    assert io.closing.is_set() and not task.done()
    task.cancel()  # again, while closing
    with pytest.raises(asyncio.CancelledError):
        await task
    assert io.aborted == 1  # the close's own end
    opening.set_result(None)  # the connect thread finishes later
    await asyncio.sleep(0)
    assert io.aborted == 2  # what it opened is closed too
