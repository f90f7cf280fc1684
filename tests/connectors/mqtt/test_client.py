"""MqttClient's receive buffer without a broker: overflow policy, ordering, loss of connection.

paho's callbacks are called from a worker thread, as its network thread would.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.base import ConnectorError
from connectors.mqtt.client import MqttClient
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
    client._loop = asyncio.get_running_loop()
    return client


def msg(n: int, qos: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=f"t/{n}", payload=str(n).encode(), qos=qos, retain=False, mid=n)


async def deliver(client: MqttClient, *messages: SimpleNamespace) -> None:
    def run() -> None:
        for m in messages:
            client._on_message(None, None, m)

    await asyncio.to_thread(run)


async def test_batches_keep_arrival_order_and_stamp_receive_time() -> None:
    client = make_client()
    try:
        await deliver(client, *(msg(i, qos=1) for i in range(5)))
        got = await client.receive(3)
        assert [m.topic for m in got] == ["t/0", "t/1", "t/2"]
        rest = await client.receive(10)
        assert [m.payload for m in rest] == [b"3", b"4"]
        assert all(m.received_us > 1_700_000_000_000_000 for m in got + rest)
        assert [m.mid for m in rest] == [3, 4]
    finally:
        await client.close()


async def test_qos0_overflow_drops_newest_and_counts() -> None:
    client = make_client(queue_size=2, queue_block_s=0.01)
    try:
        await deliver(client, msg(1), msg(2), msg(3), msg(4))
        assert client.dropped == 2
        got = await client.receive(10)
        assert [m.topic for m in got] == ["t/1", "t/2"]
        await deliver(client, msg(5))  # room again
        assert [m.topic for m in await client.receive(10)] == ["t/5"]
        assert client.dropped == 2
    finally:
        await client.close()


async def test_qos1_waits_for_room_instead_of_dropping() -> None:
    client = make_client(queue_size=2, queue_block_s=0.01)
    try:
        await deliver(client, msg(1, 1), msg(2, 1))
        blocked = asyncio.ensure_future(deliver(client, msg(3, 1)))
        await asyncio.sleep(0.1)
        assert not blocked.done()  # waiting for room, not dropped
        assert [m.topic for m in await client.receive(1)] == ["t/1"]
        await asyncio.wait_for(blocked, 10)
        assert [m.topic for m in await client.receive(10)] == ["t/2", "t/3"]
        assert client.dropped == 0
    finally:
        await client.close()


async def test_close_releases_a_waiting_network_thread() -> None:
    client = make_client(queue_size=1)
    await deliver(client, msg(1, 1))
    blocked = asyncio.ensure_future(deliver(client, msg(2, 1)))
    await asyncio.sleep(0.05)
    await client.close()
    await asyncio.wait_for(blocked, 10)
    assert client.dropped == 1  # not acknowledged: the broker redelivers it next time


async def test_lost_connection_after_the_buffered_messages() -> None:
    client = make_client()
    try:
        await deliver(client, msg(1, 1), msg(2, 1))
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
