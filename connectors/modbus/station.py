"""A simulated Modbus TCP gauge (``shopspc simulate``): float32 CDAB results with a ready/ack handshake.

Layout of unit 1 (zero-based addresses):

* coil 0: result ready (the gauge sets it), coil 1: ack (the gateway writes 1,
  and 0 again once ready has cleared),
* holding 0–1: part counter (uint32, CDAB), the part serial,
* holding 2–3, 4–5: characteristic 1 and 2 (float32, CDAB).

Handshake per part: write the registers → set ready → wait for ack = 1 →
clear ready → wait for ack = 0 (the gateway's reset) → next part. Each wait
is bounded by ``ack_timeout_s``; a missing ack is logged once (and its return
once), counted in ``unacked``, and the gauge clears the coils itself and moves
on. :func:`connector_config` is the ``kind: modbus`` section that reads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from connectors.modbus.client import StationServer
from connectors.modbus.decode import encode_value
from connectors.ports import check_listening, check_port_free

__all__ = [
    "ACK_COIL",
    "READY_COIL",
    "SERIAL_REGISTER",
    "ModbusStation",
    "check_listening",
    "check_port_free",
    "connector_config",
]

log = logging.getLogger(__name__)

READY_COIL = 0
ACK_COIL = 1
SERIAL_REGISTER = 0
FIRST_VALUE_REGISTER = 2
ORDER = "CDAB"
_POLL_S = 0.01


class Part(Protocol):
    """One simulated part: what the gauge needs of it."""

    number: int
    values: Mapping[str, float]


def _check(characteristics: Sequence[str]) -> None:
    if not 1 <= len(characteristics) <= 2:
        raise ValueError("the simulated gauge has 1 or 2 characteristics")


def connector_config(
    port: int,
    characteristics: Sequence[str],
    name: str = "gauge",
    host: str = "127.0.0.1",
    poll_interval: float = 0.05,
) -> dict[str, Any]:
    """The ``kind: modbus`` source section (without ``kind``) that reads this gauge."""
    _check(characteristics)
    block: list[dict[str, Any]] = [
        {
            "id": f"{name}.serial",
            "function": "holding",
            "address": SERIAL_REGISTER,
            "data_type": "uint32",
            "order": ORDER,
        }
    ]
    block += [
        {
            "id": c,
            "function": "holding",
            "address": FIRST_VALUE_REGISTER + 2 * i,
            "data_type": "float32",
            "order": ORDER,
        }
        for i, c in enumerate(characteristics)
    ]
    return {
        "devices": [
            {
                "name": name,
                "transport": {"type": "tcp", "host": host, "port": port},
                "unit_id": 1,
                "timeout": 1.0,
                "retries": 0,
                "poll_interval": poll_interval,
                "reconnect_min": 0.2,
                "reconnect_max": 5.0,
                "triggers": [
                    {
                        "name": f"{name}-result",
                        "ready": {"function": "coils", "address": READY_COIL, "value": 1},
                        "block": block,
                        "serial_point": f"{name}.serial",
                        "ack": {"function": "coil", "address": ACK_COIL, "value": 1, "reset": 0},
                    }
                ],
            }
        ]
    }


class ModbusStation:
    """The simulated Modbus gauge (see the module docstring); ``rate`` is parts per second."""

    def __init__(
        self,
        port: int,
        characteristics: Sequence[str],
        next_part: Callable[[], Part],
        *,
        rate: float = 5.0,
        host: str = "127.0.0.1",
        ack_timeout_s: float = 5.0,
    ) -> None:
        _check(characteristics)
        self.port = port
        self.characteristics = list(characteristics)
        self.next_part = next_part
        self.rate = rate
        self.ack_timeout_s = ack_timeout_s
        self.host = host
        self.address = f"{host}:{port}"
        self.where = f"modbus station {host}:{port}"
        self.parts = 0
        self.acked = 0
        self.unacked = 0
        self.started = asyncio.Event()
        self._server = StationServer(host, port)

    async def run(self) -> None:
        """Serve parts until cancelled; the server is stopped on the way out.

        Raises a non-retryable :class:`ConnectorError` naming the port when it
        cannot listen (another program holds the port) or, once started, the
        port does not accept connections; ``started`` is set only after both checks.
        """
        check_port_free(self.where, self.host, self.port, "the device's transport port")
        await self._server.start()
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
            regs = encode_value(part.number & 0xFFFFFFFF, "uint32", ORDER)
            for c in self.characteristics:
                regs += encode_value(float(part.values[c]), "float32", ORDER)
            await self._server.set_registers(SERIAL_REGISTER, regs)
            await self._server.set_coils(READY_COIL, [True])
            self.parts += 1
            ok = await self._wait_ack(True)
            await self._server.set_coils(READY_COIL, [False])
            ok = ok and await self._wait_ack(False)
            if ok:
                self.acked += 1
                if waiting_logged:
                    log.info("modbus gauge %s: gateway acknowledges again", self.address)
                    waiting_logged = False
            else:
                self.unacked += 1
                await self._server.set_coils(ACK_COIL, [False])
                if not waiting_logged:
                    log.info(
                        "modbus gauge %s: handshake not completed within %s s, moving on",
                        self.address,
                        self.ack_timeout_s,
                    )
                    waiting_logged = True
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _wait_ack(self, wanted: bool) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        while loop.time() < deadline:
            if await self._server.coil(ACK_COIL) == wanted:
                return True
            await asyncio.sleep(_POLL_S)
        return False
