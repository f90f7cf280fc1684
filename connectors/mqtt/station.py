"""A simulated station publishing JSON batches of inspection results over MQTT (``shopspc simulate``).

Every ``batch_parts`` parts (at ``rate`` parts per second) it publishes one
message (QoS 1) to ``topic``, at least ten values per message::

    {"station": "vision", "count": 10,
     "results": [{"char": "width", "v": 3.21, "t": 1764144000125, "serial": "V-000001",
                  "operator": "A. Weber", "program": "VIS-3", "lot": "L-0001",
                  "gauge_id": "CAM-2"}, ...]}

``t`` is epoch milliseconds. :func:`connector_config` is the ``kind: mqtt``
section (batch layout) that reads it. It needs a broker; it never is one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from connectors.base import Backoff, ConnectorError
from connectors.mqtt.client import MqttPublisher

__all__ = ["CONTEXT_KEYS", "MIN_VALUES_PER_MESSAGE", "MqttStation", "connector_config"]

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("operator", "program", "lot", "gauge_id")
MIN_VALUES_PER_MESSAGE = 10


class Part(Protocol):
    """One simulated part: what the station needs of it."""

    serial: str
    values: Mapping[str, float]
    context: Mapping[str, str]
    time: datetime


def connector_config(
    host: str, port: int, topic: str, client_id: str = "shopspc-demo-gateway"
) -> dict[str, Any]:
    """The ``kind: mqtt`` source section (without ``kind``) that reads this station."""
    return {
        "host": host,
        "port": port,
        "client_id": client_id,
        "keepalive": 10,
        "qos": 1,
        "connect_timeout_s": 5,
        "reconnect_base_s": 0.2,
        "reconnect_cap_s": 5,
        "subscriptions": [
            {
                "topic": topic,
                "format": "json",
                "batch": {
                    "items_path": "results",
                    "value_path": "v",
                    "binding_path": "char",
                    "serial_path": "serial",
                    "timestamp_path": "t",
                    "context": {k: k for k in CONTEXT_KEYS},
                },
                "timestamp_unit": "ms",
            }
        ],
    }


class MqttStation:
    """The simulated MQTT station (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        characteristics: Sequence[str],
        next_part: Callable[[], Part],
        *,
        rate: float = 5.0,
        name: str = "vision",
        batch_parts: int | None = None,
    ) -> None:
        if not characteristics:
            raise ValueError("the MQTT station needs at least one characteristic")
        self.topic = topic
        self.characteristics = list(characteristics)
        self.next_part = next_part
        self.rate = rate
        self.name = name
        self.batch_parts = batch_parts or math.ceil(MIN_VALUES_PER_MESSAGE / len(characteristics))
        self.address = f"{host}:{port}"
        self.messages = 0
        self.parts = 0
        self.started = asyncio.Event()
        # A client id per process: a second simulator must not take over this one's session.
        self._publisher = MqttPublisher(host, port, f"shopspc-sim-{name}-{os.getpid()}")

    def payload(self, parts: Sequence[Part]) -> bytes:
        """The JSON message for a batch of parts."""
        results = [
            {
                "char": c,
                "v": float(p.values[c]),
                "t": int(p.time.timestamp() * 1000),
                "serial": p.serial,
                **{k: str(p.context.get(k, "")) for k in CONTEXT_KEYS},
            }
            for p in parts
            for c in self.characteristics
        ]
        doc = {"station": self.name, "count": len(results), "results": results}
        return json.dumps(doc, separators=(",", ":")).encode()

    async def run(self) -> None:
        """Publish batches until cancelled; the connection is closed on the way out."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                await self._publisher.connect()
                break
            except ConnectorError as err:
                if backoff.attempt == 0:
                    log.warning("mqtt station %s: %s (retrying)", self.address, err.message)
                await asyncio.sleep(backoff.next_delay())
        self.started.set()
        loop = asyncio.get_running_loop()
        period = self.batch_parts / self.rate
        next_at = loop.time()
        failing = False
        try:
            while True:
                parts = [self.next_part() for _ in range(self.batch_parts)]
                try:
                    await self._publisher.publish(self.topic, self.payload(parts))
                except ConnectorError as err:
                    if not failing:
                        log.warning("mqtt station %s: %s", self.address, err.message)
                        failing = True
                else:
                    if failing:
                        log.warning("mqtt station %s: publishing again", self.address)
                        failing = False
                    self.messages += 1
                    self.parts += len(parts)
                next_at = max(next_at + period, loop.time())
                await asyncio.sleep(next_at - loop.time())
        finally:
            await self._publisher.close()
