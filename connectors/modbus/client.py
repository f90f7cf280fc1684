"""The one module that imports pymodbus (3.16): connect, read bits/registers, write a coil/register.

Every pymodbus failure leaves here as a :class:`ConnectorError` whose ``where``
names the device, function and address. Two subclasses tell the source what
to do next: :class:`ModbusExceptionError` (the device answered with a Modbus
exception; the link is fine) and :class:`ModbusLinkError` (timeout, refused or
lost connection; reconnect).
"""

from __future__ import annotations

import asyncio

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.server import ModbusBaseServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from connectors.base import ConnectorError
from connectors.modbus.config import DeviceConfig, RtuTransport
from connectors.ports import stop_server

__all__ = [
    "FUNCTION_NAMES",
    "ModbusClient",
    "ModbusExceptionError",
    "ModbusLine",
    "ModbusLinkError",
    "StationServer",
    "shutdown_server",
]

FUNCTION_NAMES = {
    1: "coils",
    2: "discrete_inputs",
    3: "holding",
    4: "input",
    5: "write_coil",
    6: "write_register",
}

# Modbus exception codes: name, and whether asking again later can help.
_EXCEPTIONS: dict[int, tuple[str, bool]] = {
    1: ("ILLEGAL_FUNCTION", False),
    2: ("ILLEGAL_DATA_ADDRESS", False),
    3: ("ILLEGAL_DATA_VALUE", False),
    4: ("SERVER_DEVICE_FAILURE", True),
    5: ("ACKNOWLEDGE", True),
    6: ("SERVER_DEVICE_BUSY", True),
    7: ("NEGATIVE_ACKNOWLEDGE", True),
    8: ("MEMORY_PARITY_ERROR", True),
    10: ("GATEWAY_PATH_UNAVAILABLE", True),
    11: ("GATEWAY_TARGET_NO_RESPONSE", True),
}


class ModbusExceptionError(ConnectorError):
    """The device answered with a Modbus exception response (``code``); the link is up."""

    def __init__(self, where: str, code: int) -> None:
        name, retryable = _EXCEPTIONS.get(code, (f"EXCEPTION_{code}", True))
        super().__init__(where, f"exception {code} {name}", retryable=retryable)
        self.code = code


class ModbusLinkError(ConnectorError):
    """No usable answer: timeout, refused, lost connection or garbled response (retryable).

    ``timeout`` is True when the link is up but the device did not answer; on a
    serial line that concerns only the addressed unit, not the port.
    """

    def __init__(self, where: str, message: str, *, timeout: bool = False) -> None:
        super().__init__(where, message, retryable=True)
        self.timeout = timeout


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation pymodbus swallowed.

    Python 3.11's ``asyncio.wait_for`` (inside pymodbus) loses a cancellation
    that arrives while the wrapped call finishes (fixed in 3.12); the device
    loop would then sleep and retry forever. These calls run in the per-device
    leaf tasks, which host no TaskGroup, so ``Task.cancelling()`` is reliable
    there (3.11's TaskGroup can leave its *parent's* count raised).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModbusLine:
    """One TCP connection or serial port, used by one device or (RS-485) several units.

    Line settings (timeout, retries, serial parameters) come from the device it
    is built from. pymodbus's own reconnect loop is switched off
    (``reconnect_delay=0``): the source decides when to reconnect, with
    :class:`~connectors.base.Backoff`. pymodbus serialises the requests.
    """

    def __init__(self, device: DeviceConfig) -> None:
        t = device.transport
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient
        self.serial = isinstance(t, RtuTransport)
        if isinstance(t, RtuTransport):
            self._client = AsyncModbusSerialClient(
                t.port,
                baudrate=t.baudrate,
                parity=t.parity,
                stopbits=t.stopbits,
                bytesize=t.bytesize,
                timeout=device.timeout,
                retries=device.retries,
                reconnect_delay=0,
                name=t.port,
            )
            self.endpoint = t.port
        else:
            self._client = AsyncModbusTcpClient(
                t.host,
                port=t.port,
                timeout=device.timeout,
                retries=device.retries,
                reconnect_delay=0,
                name=device.name,
            )
            self.endpoint = f"{t.host}:{t.port}"
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """True while the transport is open."""
        return self._client.connected

    async def connect(self, where: str) -> None:
        """Open the line unless open; raises :class:`ModbusLinkError` (with ``where``) when it cannot."""
        async with self._connecting:
            if self._client.connected:
                return
            try:
                ok = await self._client.connect()
            except (TimeoutError, ModbusException, OSError) as exc:
                self._client.close()
                _raise_if_cancelling()
                raise ModbusLinkError(where, f"cannot connect to {self.endpoint}: {exc}") from exc
            _raise_if_cancelling()
            if not ok:
                self._client.close()
                raise ModbusLinkError(where, f"cannot connect to {self.endpoint}")

    def close(self) -> None:
        """Close the line (idempotent)."""
        self._client.close()


class ModbusClient:
    """One device (unit) on a :class:`ModbusLine`: reads and writes with its unit id.

    Without ``line`` the device gets a line of its own.
    """

    def __init__(
        self, device: DeviceConfig, source_name: str = "modbus", line: ModbusLine | None = None
    ) -> None:
        self.device = device
        self.prefix = f"{source_name} {device.name} unit {device.unit_id}"
        self.line = line if line is not None else ModbusLine(device)
        self.endpoint = self.line.endpoint
        self._client = self.line._client

    @property
    def connected(self) -> bool:
        """True while the line is open."""
        return self.line.connected

    @property
    def serial(self) -> bool:
        """True on a serial (RTU) line."""
        return self.line.serial

    async def connect(self) -> None:
        """Open the line unless open; raises :class:`ModbusLinkError` when it cannot."""
        await self.line.connect(self.prefix)

    def close(self) -> None:
        """Close the line (idempotent; closes it for every device on a shared line)."""
        self.line.close()

    def _where(self, function: int, address: int) -> str:
        return f"{self.prefix} {FUNCTION_NAMES.get(function, function)} {address}"

    async def _call(self, function: int, address: int, coro_factory):
        where = self._where(function, address)
        try:
            try:
                response = await coro_factory()
            finally:
                _raise_if_cancelling()
        except ConnectionException as exc:
            raise ModbusLinkError(where, f"not connected: {exc.string}") from exc
        except ModbusIOException as exc:
            # No response after the configured retries (or a mismatched one).
            raise ModbusLinkError(where, f"no response: {exc.string}", timeout=True) from exc
        except ModbusException as exc:
            raise ModbusLinkError(where, exc.string) from exc
        except (TimeoutError, OSError) as exc:
            raise ModbusLinkError(where, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # A garbled frame can surface as any exception inside pymodbus; it must
            # become a failed request (and a reconnect), never a crashed source.
            raise ModbusLinkError(where, f"unexpected {type(exc).__name__}: {exc}") from exc
        if response is None:
            raise ModbusLinkError(where, "no response")
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise ModbusExceptionError(where, int(code))
        return response

    async def read(self, function: int, address: int, count: int) -> list[int]:
        """Read ``count`` bits (functions 1, 2: as 0/1) or registers (3, 4) starting at ``address``."""
        c = self._client
        unit = self.device.unit_id
        calls = {
            1: c.read_coils,
            2: c.read_discrete_inputs,
            3: c.read_holding_registers,
            4: c.read_input_registers,
        }
        if function not in calls:
            raise ConnectorError(
                self._where(function, address), "not a read function", retryable=False
            )
        call = calls[function]
        response = await self._call(
            function, address, lambda: call(address, count=count, device_id=unit)
        )
        values = (
            [1 if b else 0 for b in response.bits[:count]]
            if function in (1, 2)
            else list(response.registers)
        )
        if len(values) < count:
            raise ModbusLinkError(
                self._where(function, address), f"short response: {len(values)} of {count} values"
            )
        return values[:count]

    async def write(self, function: int, address: int, value: int) -> None:
        """Write one coil (function 5, any non-zero value is on) or one register (6)."""
        c = self._client
        unit = self.device.unit_id
        if function == 5:
            await self._call(
                function, address, lambda: c.write_coil(address, bool(value), device_id=unit)
            )
        elif function == 6:
            await self._call(
                function,
                address,
                lambda: c.write_register(address, int(value) & 0xFFFF, device_id=unit),
            )
        else:
            raise ConnectorError(
                self._where(function, address), "not a write function", retryable=False
            )


# -- for the simulated station (connectors/modbus/station.py) ----------------------------
# `shopspc simulate` serves a gauge; this keeps pymodbus's server API here too.


class StationServer:
    """A pymodbus TCP server with one unit: ``bits`` coils and ``registers`` holding registers."""

    def __init__(
        self, host: str, port: int, unit: int = 1, bits: int = 16, registers: int = 32
    ) -> None:
        self.host = host
        self.port = port
        self.unit = unit
        self._device = SimDevice(
            unit,
            simdata=(
                [SimData(0, count=bits, values=False, datatype=DataType.BITS)],
                [SimData(0, count=bits, values=False, datatype=DataType.BITS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen on host:port."""
        server = ModbusTcpServer([self._device], address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except (OSError, RuntimeError) as exc:  # pymodbus: RuntimeError when it cannot listen
            await server.shutdown()
            raise ConnectorError(
                f"modbus station {self.host}:{self.port}", f"cannot listen: {exc}", retryable=False
            ) from exc
        self._server = server

    async def set_coils(self, address: int, values: list[bool]) -> None:
        """Set coils as the device would (no request)."""
        assert self._server is not None
        await self._server.async_setValues(self.unit, 15, address, values)

    async def set_registers(self, address: int, values: list[int]) -> None:
        """Set holding registers as the device would (no request)."""
        assert self._server is not None
        await self._server.async_setValues(self.unit, 16, address, values)

    async def coil(self, address: int) -> bool:
        """The current value of one coil."""
        assert self._server is not None
        return bool((await self._server.async_getValues(self.unit, 1, address, 1))[0])

    async def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await shutdown_server(server)


async def shutdown_server(server: ModbusBaseServer) -> None:
    """Shut a pymodbus server down, closing every connection (see :func:`stop_server`)."""
    # pymodbus keeps the asyncio server as a TCP listener's transport.
    listener = server.transport if isinstance(server.transport, asyncio.Server) else None
    await stop_server(listener, server.shutdown)
