"""The MQTT source acknowledges a message only once its batch is committed, in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from connectors.base import ConnectorError
from connectors.mqtt.client import Message
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.source import _UNCOMMITTED_BATCHES, MqttSource


class FakeClient:
    """Hands out prepared batches, records acks, then reports the connection lost."""

    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches
        self.acked: list[int] = []
        self.dropped = 0
        self.gone = asyncio.Event()

    async def receive(self, max_messages: int) -> list[Message]:
        if self.batches:
            return self.batches.pop(0)
        await self.gone.wait()
        raise ConnectorError("fake", "connection lost", retryable=True)

    def ack(self, messages: list[Message]) -> None:
        self.acked += [m.mid for m in messages]


def _msg(mid: int, topic: str = "line/a") -> Message:
    return Message(topic, json.dumps({"v": mid}).encode(), 1, False, 0, mid)


def _source() -> MqttSource:
    cfg = MqttSourceConfig.model_validate(
        {
            "host": "127.0.0.1",
            "client_id": "acks",
            "subscriptions": [
                {"topic": "line/+", "format": "json", "value_path": "v", "binding": "x"}
            ],
        }
    )
    return MqttSource(cfg, "acks")


async def test_acks_wait_for_the_commit_and_keep_the_arrival_order() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []

    async def emit(samples: Any) -> None:
        raise AssertionError("the source must use emit.nowait when the gateway offers it")

    async def nowait(samples: Any) -> asyncio.Future[None]:
        fut = loop.create_future()
        futures.append(fut)
        return fut

    emit.nowait = nowait  # type: ignore[attr-defined]
    # batch 2 has no samples (an unmatched topic): its ack waits for batch 1 all the same
    client = FakeClient([[_msg(1), _msg(2)], [_msg(3, "other/x")], [_msg(4)]])
    source = _source()
    pump = asyncio.create_task(source._pump(client, emit))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while len(futures) < 2:
            await asyncio.sleep(0)
    assert client.acked == []  # received and queued, nothing committed yet
    futures[1].set_result(None)  # the later batch commits first
    await asyncio.sleep(0)
    assert client.acked == []  # ... but PUBACKs keep the PUBLISH order
    futures[0].set_result(None)
    await asyncio.sleep(0)
    assert client.acked == [1, 2, 3, 4]
    client.gone.set()
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectorError):
            await pump


async def test_a_failed_commit_is_never_acknowledged() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []

    async def emit(samples: Any) -> None:
        raise AssertionError

    async def nowait(samples: Any) -> asyncio.Future[None]:
        futures.append(loop.create_future())
        return futures[-1]

    emit.nowait = nowait  # type: ignore[attr-defined]
    client = FakeClient([[_msg(1)], [_msg(2)]])
    pump = asyncio.create_task(_source()._pump(client, emit))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while len(futures) < 2:
            await asyncio.sleep(0)
    futures[0].cancel()  # the gateway stopped before committing: redelivered next session
    futures[1].set_result(None)
    await asyncio.sleep(0)
    assert client.acked == [2] or client.acked == []
    assert 1 not in client.acked
    client.gone.set()
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectorError):
            await pump


async def test_receiving_waits_while_too_many_batches_are_uncommitted() -> None:
    """The backlog of uncommitted batches is bounded: then receiving waits for the oldest."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []
    limit = _UNCOMMITTED_BATCHES

    async def emit(samples: Any) -> None:
        raise AssertionError

    async def nowait(samples: Any) -> asyncio.Future[None]:
        futures.append(loop.create_future())
        return futures[-1]

    emit.nowait = nowait  # type: ignore[attr-defined]
    client = FakeClient([[_msg(k)] for k in range(1, limit + 2)])
    pump = asyncio.create_task(_source()._pump(client, emit))  # type: ignore[arg-type]
    for _ in range(10 * limit):
        await asyncio.sleep(0)
    assert len(futures) == limit and len(client.batches) == 1  # the last batch not taken yet
    futures[0].set_result(None)
    async with asyncio.timeout(5):
        while len(futures) < limit + 1:
            await asyncio.sleep(0)
    assert client.acked == [1]
    for f in futures[1:]:
        f.set_result(None)
    await asyncio.sleep(0)
    assert client.acked == list(range(1, limit + 2))
    client.gone.set()
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectorError):
            await pump
