"""A real pymodbus 3.16 server over TCP on 127.0.0.1 (in-process asyncio task) for the source tests.

The server counts every request it receives (function, address, count), so
tests can compare what was actually sent with the coalescing plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from connectors.base import Sample
from connectors.modbus.client import shutdown_server
from tests.servers import HOST, cancel_and_wait, free_port

UNIT = 1
N_BITS = 64  # coils/discrete inputs 0..63
N_REGS = 300  # holding/input registers 0..299; 300+ is an illegal address


@dataclass
class Received:
    """One request as the server saw it."""

    function: int
    address: int
    count: int


async def _never_answer(*_args: object) -> None:
    # With ignore_missing_devices the server then sends nothing: a unit that is off.
    raise NoSuchIdException("unit is silent")


def _device(unit: int = UNIT, *, silent: bool = False) -> SimDevice:
    return SimDevice(
        unit,
        action=_never_answer if silent else None,
        simdata=(
            [SimData(0, count=N_BITS, values=False, datatype=DataType.BITS)],
            [SimData(0, count=N_BITS, values=False, datatype=DataType.BITS)],
            [SimData(0, count=N_REGS, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=N_REGS, values=0, datatype=DataType.REGISTERS)],
        ),
    )


@dataclass
class SimServer:
    """A pymodbus server that can be stopped and started again on the same port."""

    port: int
    serial_port: str | None = None
    received: list[Received] = field(default_factory=list)
    units: tuple[int, ...] = (UNIT,)
    silent_units: tuple[int, ...] = ()
    _server: ModbusTcpServer | ModbusSerialServer | None = None
    _devices: list[SimDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._devices = [_device(u) for u in self.units]
        self._devices += [_device(u, silent=True) for u in self.silent_units]

    def _trace(self, sending: bool, pdu):
        if not sending:
            self.received.append(
                Received(pdu.function_code, pdu.address, getattr(pdu, "count", 0) or 0)
            )
        return pdu

    async def start(self) -> None:
        """Listen (again); the register contents survive a restart."""
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                self._devices,
                port=self.serial_port,
                baudrate=115200,
                trace_pdu=self._trace,
                ignore_missing_devices=True,
            )
        else:
            self._server = ModbusTcpServer(
                self._devices, address=(HOST, self.port), trace_pdu=self._trace
            )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        if self._server is not None:
            await shutdown_server(self._server)
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def set(
        self,
        function: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
        unit: int = UNIT,
    ) -> None:
        """Write into the data store (function 1/2 take bools, 3/4 take registers)."""
        assert self._server is not None
        fc = {1: 15, 2: 2, 3: 16, 4: 4}[function]
        await self._server.async_setValues(unit, fc, address, list(values))

    async def get(self, function: int, address: int, count: int = 1, unit: int = UNIT) -> list:
        """Read from the data store without sending a request."""
        assert self._server is not None
        return await self._server.async_getValues(unit, function, address, count)


class PtyBridge:
    """Two pseudo-terminal pairs joined by the event loop: a null-modem cable in software.

    The client opens ``client_path``, the server ``server_path``; bytes written on
    one side come out on the other. Our own slave fds stay open so a master never
    sees EIO while a side is closed (e.g. during a server restart).
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        ends = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            flags = fcntl.fcntl(master, fcntl.F_GETFL)
            fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self._fds += [master, slave]
            ends.append((master, os.ttyname(slave)))
        (self._m1, self.client_path), (self._m2, self.server_path) = ends

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        os.write(dst, data)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._m1, self._copy, self._m1, self._m2)
        loop.add_reader(self._m2, self._copy, self._m2, self._m1)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._m1)
        loop.remove_reader(self._m2)
        for fd in self._fds:
            os.close(fd)


@pytest.fixture
async def rtu_server() -> AsyncIterator[tuple[SimServer, str]]:
    """A pymodbus RTU server on one end of a pty null modem; yields it and the client's tty path.

    Units 1 and 2 answer; unit 9 never does (a device that is switched off).
    """
    bridge = PtyBridge()
    bridge.start()
    server = SimServer(0, serial_port=bridge.server_path, units=(1, 2), silent_units=(9,))
    await server.start()
    try:
        yield server, bridge.client_path
    finally:
        await server.stop()
        bridge.close()


@pytest.fixture
async def modbus_server() -> AsyncIterator[SimServer]:
    """A running pymodbus TCP server on a free loopback port."""
    server = SimServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded in time) until it is true, else fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def wait_until_async(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Await ``check()`` (bounded in time) until it returns true, else fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(source) -> AsyncIterator[list[list[Sample]]]:
    """Run ``source.run`` in a task; yield the batches it emits; cancel it on exit."""
    batches: list[list[Sample]] = []

    async def emit(batch: Sequence[Sample]) -> None:
        batches.append(list(batch))

    task = asyncio.create_task(source.run(emit))
    try:
        yield batches
    finally:
        await cancel_and_wait(task)
