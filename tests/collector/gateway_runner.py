"""Shared pieces of the end-to-end alarm tests: a gateway configuration on a real broker,
a station that publishes planted values over MQTT, and a subscriber's view of the alarm topics.

The station publishes one JSON message per part on ``plant/{line}/{station}/meas``::

    {"v": 10.2, "ts": "2026-11-18T11:06:40.123456Z", "sn": "P-0001", "op": "alice",
     "lot": "LOT-7", "prog": "PRG-12"}

and process-state codes on ``plant/{line}/{station}/state`` (``{"s": 0}`` idle, ``1`` running).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from collector.alarms import rfc3339
from collector.config import GatewayConfig, parse_config
from connectors.mqtt.client import MqttLink, Outgoing
from connectors.mqtt.config import MqttPublisherConfig
from tests.servers import HOST

PREFIX = "shopspc/v1"
GW_ID = "gw-e2e"
SITE, AREA, LINE, STATION, CHAR = "S1", "A1", "L1", "ST1", "bore"
PATH = f"{SITE}/{AREA}/{LINE}/{STATION}/{CHAR}"
MEAS_TOPIC = f"plant/{LINE}/{STATION}/meas"
STATE_TOPIC = f"plant/{LINE}/{STATION}/state"
# source times: fixed, with microseconds, one part every 1.000123 s
T0_US = 1_795_000_000_123_456
STEP_US = 1_000_123
CENTER, SIGMA = 10.0, 1.0
WAIT_S = 20.0


def part_time(k: int) -> int:
    """Source time (µs) of part ``k``."""
    return T0_US + k * STEP_US


def serial(k: int) -> str:
    """Part serial of part ``k``."""
    return f"P-{k:05d}"


def config_dict(
    port: int,
    *,
    data_dir: str = "var/unused",
    rules: Sequence[str] = ("N1", "N2"),
    clear_after: int = 3,
    process_state: bool = False,
    source_client_id: str = "gw-e2e-source",
    sinks: dict[str, Any] | None = None,
    alarms_mqtt: bool = True,
) -> dict[str, Any]:
    """The gateway configuration (a plain dict; JSON text is valid YAML for the loader)."""
    alarms: dict[str, Any] = {
        "clear_after": clear_after,
        "flood": {"max_alarms": 100_000, "window_s": 60},
        "prefix": PREFIX,
    }
    if alarms_mqtt:
        alarms["mqtt"] = {
            "host": HOST,
            "port": port,
            "client_id": f"{GW_ID}-alarms",
            "keepalive_s": 5,
            "connect_timeout_s": 3,
            "publish_timeout_s": 3,
            "reconnect_base_s": 0.05,
            "reconnect_cap_s": 0.3,
            "stop_drain_s": 5,
        }
    if process_state:
        alarms["process_state"] = [
            {
                "line": LINE,
                "station": STATION,
                "source": "st",
                "binding": "ps",
                "map": {"0": "idle", "1": "running"},
            }
        ]
    return {
        "version": 1,
        "gateway": {"id": GW_ID, "data_dir": data_dir, "http": ""},
        "sources": {
            "st": {
                "kind": "mqtt",
                "host": HOST,
                "port": port,
                "client_id": source_client_id,
                "keepalive": 5,
                "connect_timeout_s": 3,
                "reconnect_base_s": 0.05,
                "reconnect_cap_s": 0.3,
                "subscriptions": [
                    {
                        "topic": "plant/+/+/meas",
                        "binding": CHAR,
                        "value_path": "v",
                        "timestamp_path": "ts",
                        "serial_path": "sn",
                        "context": {"operator": "op", "lot": "lot", "program": "prog"},
                    },
                    {"topic": "plant/+/+/state", "binding": "ps", "value_path": "s"},
                ],
            }
        },
        "sinks": sinks or {},
        "alarms": alarms,
        "characteristics": [
            {
                "id": CHAR,
                "site": SITE,
                "area": AREA,
                "line": LINE,
                "station": STATION,
                "unit": "mm",
                "chart": "imr",
                "rules": list(rules),
                "rules_dispersion": "none",
                "severity": {"N1": "critical", "default": "minor"},
                "limits": {"center": CENTER, "sigma": SIGMA},
                "value": {"source": "st", "binding": CHAR},
                "context": {
                    "operator": {"source": "st", "binding": "operator"},
                    "machine": {"static": "MC-7"},
                    "material_lot": {"source": "st", "binding": "lot"},
                    "method": {"source": "st", "binding": "program"},
                    "environment": {"temperature": {"static": 21.5}},
                    "gauge": {"id": {"static": "G-42"}},
                },
            }
        ],
    }


def load(cfg: dict[str, Any]) -> tuple[GatewayConfig, dict[str, Any]]:
    """Validate a configuration dict with the gateway's own loader."""
    return parse_config(json.dumps(cfg), "e2e.yaml")


def part(k: int, value: float, **over: Any) -> bytes:
    """The station's message for part ``k``."""
    doc = {
        "v": value,
        "ts": rfc3339(part_time(k)),
        "sn": serial(k),
        "op": "alice",
        "lot": "LOT-7",
        "prog": "PRG-12",
    }
    doc.update(over)
    return json.dumps(doc).encode()


# in control for N1/N2 with centre 10, σ 1: never 9 in a row on one side, never beyond 3σ
CALM = (10.4, 9.6, 10.7, 9.5, 10.2, 9.8, 10.3, 9.4)


def calm(k: int) -> float:
    """An in-control value for part ``k``."""
    return CALM[k % len(CALM)]


class Station:
    """Publishes parts and process states over MQTT (QoS 1, waits for PUBACK)."""

    def __init__(self, port: int, client_id: str = "station-e2e") -> None:
        self._link = MqttLink(
            MqttPublisherConfig(host=HOST, port=port, connect_timeout_s=5, publish_timeout_s=10),
            client_id,
        )

    async def __aenter__(self) -> Station:
        await self._link.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._link.close()

    async def parts(self, values: Sequence[tuple[int, float]], **over: Any) -> None:
        """Publish (k, value) parts in order."""
        await self._link.publish_many(
            [Outgoing(MEAS_TOPIC, part(k, v, **over), 1, False) for k, v in values]
        )

    async def state(self, code: int) -> None:
        """Publish a process-state code (0 idle, 1 running)."""
        await self._link.publish_many([Outgoing(STATE_TOPIC, json.dumps({"s": code}).encode())])

    async def raw(self, topic: str, payload: bytes) -> None:
        """Publish anything (commands)."""
        await self._link.publish_many([Outgoing(topic, payload, 1, False)])


@dataclass
class View:
    """What a subscriber to ``{prefix}/#`` saw, split by topic kind (arrival order)."""

    alarms: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)

    def take(self, messages: Any) -> None:
        """Move every message queued in a ``Subscriber`` into the lists."""
        while not messages.empty():
            m = messages.get_nowait()
            if m.topic.startswith(f"{PREFIX}/cmd/"):
                continue
            doc = json.loads(m.payload)
            doc["_qos"], doc["_ct"] = m.qos, m.content_type
            if "/alarm/" in m.topic:
                doc["_topic"] = m.topic
                self.alarms.append(doc)
            elif "/state/" in m.topic:
                doc["_topic"], doc["_retain"] = m.topic, m.retain
                self.states.append(doc)
            elif "/gateway/" in m.topic:
                doc["_retain"] = m.retain
                self.status.append(doc)

    def events(self, event: str, rule: str | None = None) -> list[dict[str, Any]]:
        """Alarm events of one kind (and rule)."""
        return [
            a for a in self.alarms if a["event"] == event and (rule is None or a["rule"] == rule)
        ]

    def unique(self) -> list[dict[str, Any]]:
        """The de-duplicating subscriber's view: first copy of each (alarm_id, event)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for a in self.alarms:
            key = (a["alarm_id"], a["event"])
            if key not in seen:
                seen.add(key)
                out.append(a)
        return out


async def until(
    cond: Callable[[], bool],
    what: str,
    timeout: float = WAIT_S,
    poll: Callable[[], None] | None = None,
) -> None:
    """Wait (bounded in time) until ``cond()``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if poll is not None:
            poll()
        if cond():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
