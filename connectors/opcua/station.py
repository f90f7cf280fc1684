"""A simulated CMM/vision station serving inspection results over OPC UA (``shopspc simulate``).

The station is an asyncua server on 127.0.0.1 with one object ``<name>``:

* ``<name>.Result.<characteristic>`` (Double): one value per characteristic,
* ``<name>.Result.Serial`` (String): the part serial,
* ``<name>.Context.Operator``, ``.Program``, ``.Lot``, ``.GaugeId`` (String),
* ``<name>.Result.Ready`` (Boolean, set by the station) and ``<name>.Result.Ack``
  (Boolean, written by the gateway, reset by the station).

Handshake per part: write the block, serial and context with one source
timestamp → set Ready → wait for Ack (bounded by ``ack_timeout_s``) → reset Ack
and Ready → wait for the next part time. A missing ack is logged once (and
its return once), counted in ``unacked``, and the station moves on, so it
never stalls. :func:`connector_config` is the ``kind: opcua`` source section
that reads it exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from connectors.opcua.client import StationServer
from connectors.ports import check_listening, check_port_free

__all__ = [
    "CONTEXT_NODES",
    "NAMESPACE_URI",
    "OpcuaStation",
    "Part",
    "check_listening",
    "check_port_free",
    "connector_config",
]

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:shopspc:simulated:station"
CONTEXT_NODES = {"operator": "Operator", "program": "Program", "lot": "Lot", "gauge_id": "GaugeId"}
"""Context key of a part → node name under ``<name>.Context``."""

_POLL_S = 0.01


class Part(Protocol):
    """One simulated part: what a station needs of it."""

    serial: str
    values: Mapping[str, float]
    context: Mapping[str, str]
    time: datetime


def _node(name: str, leaf: str) -> str:
    return f"nsu={NAMESPACE_URI};s={name}.{leaf}"


def connector_config(
    port: int, characteristics: Sequence[str], name: str = "CMM", host: str = "127.0.0.1"
) -> dict[str, Any]:
    """The ``kind: opcua`` source section (without ``kind``) that reads this station.

    Block binding ids are the characteristic ids and ``<name lowercased>.<context key>``.
    """
    prefix = name.lower()
    block = [{"id": c, "node": _node(name, f"Result.{c}")} for c in characteristics]
    block += [
        {"id": f"{prefix}.{key}", "node": _node(name, f"Context.{leaf}")}
        for key, leaf in CONTEXT_NODES.items()
    ]
    return {
        "endpoint": f"opc.tcp://{host}:{port}/",
        "timeout_s": 5,
        "publishing_interval_ms": 50,
        "reconnect_base_s": 0.2,
        "reconnect_cap_s": 5,
        "triggers": [
            {
                "id": f"{prefix}-result",
                "ready_node": _node(name, "Result.Ready"),
                "ack_node": _node(name, "Result.Ack"),
                "serial_node": _node(name, "Result.Serial"),
                "sampling_interval_ms": 10,
                "block": block,
            }
        ],
    }


class OpcuaStation:
    """The simulated OPC UA inspection station (see the module docstring).

    ``next_part()`` is called once per part; ``rate`` is parts per second (an
    upper bound: the station also waits for the gateway's ack).
    """

    def __init__(
        self,
        port: int,
        characteristics: Sequence[str],
        next_part: Callable[[], Part],
        *,
        rate: float = 5.0,
        name: str = "CMM",
        host: str = "127.0.0.1",
        ack_timeout_s: float = 5.0,
    ) -> None:
        self.port = port
        self.characteristics = list(characteristics)
        self.next_part = next_part
        self.rate = rate
        self.name = name
        self.ack_timeout_s = ack_timeout_s
        self.host = host
        self.url = f"opc.tcp://{host}:{port}/"
        self.where = f"opcua station {host}:{port}"
        self.parts = 0
        self.acked = 0
        self.unacked = 0
        self.started = asyncio.Event()
        self._server = StationServer(self.url, NAMESPACE_URI, f"shopspc simulated {name}")

    def _n(self, leaf: str) -> str:
        return f"{self.name}.{leaf}"

    async def run(self) -> None:
        """Serve parts until cancelled; the server is stopped on the way out.

        Raises a non-retryable :class:`ConnectorError` naming the port when it
        cannot listen (another program holds the port) or, once started, the
        port does not accept connections; ``started`` is set only after both checks.
        """
        check_port_free(self.where, self.host, self.port, "the source's endpoint")
        variables: dict[str, bool | int | float | str] = {
            self._n(f"Result.{c}"): 0.0 for c in self.characteristics
        }
        variables[self._n("Result.Serial")] = ""
        variables.update({self._n(f"Context.{leaf}"): "" for leaf in CONTEXT_NODES.values()})
        variables[self._n("Result.Ready")] = False
        variables[self._n("Result.Ack")] = False
        await self._server.start(self.name, variables, writable=[self._n("Result.Ack")])
        try:
            await check_listening(self.where, self.host, self.port)
            self.started.set()
            await self._serve()
        finally:
            await self._server.stop()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        waiting_logged = False
        next_at = loop.time()
        while True:
            part = self.next_part()
            values: dict[str, bool | int | float | str] = {
                self._n(f"Result.{c}"): float(part.values[c]) for c in self.characteristics
            }
            values[self._n("Result.Serial")] = part.serial
            for key, leaf in CONTEXT_NODES.items():
                values[self._n(f"Context.{leaf}")] = str(part.context.get(key, ""))
            await self._server.write(values, part.time.astimezone(UTC))
            await self._server.write({self._n("Result.Ready"): True})
            self.parts += 1
            if await self._wait_ack(loop.time() + self.ack_timeout_s):
                self.acked += 1
                if waiting_logged:
                    log.info("%s: gateway acknowledges again", self.url)
                    waiting_logged = False
            else:
                self.unacked += 1
                if not waiting_logged:
                    log.info("%s: no ack within %s s, moving on", self.url, self.ack_timeout_s)
                    waiting_logged = True
            await self._server.write({self._n("Result.Ack"): False})
            await self._server.write({self._n("Result.Ready"): False})
            # Ready stays low for a while so the gateway's subscription sees the falling edge.
            next_at = max(next_at + period, loop.time() + 2 * _POLL_S)
            await asyncio.sleep(next_at - loop.time())

    async def _wait_ack(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if self._server.read(self._n("Result.Ack")):
                return True
            await asyncio.sleep(_POLL_S)
        return False
