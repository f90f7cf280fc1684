"""Stopping a station's server while a connection is being accepted (connectors/ports.py).

asyncio makes an accepted connection's transport one loop turn after the
accept; Python 3.11 leaves it half made, its socket open, when the server
closes in that turn. The tests hold a plain client socket open (connected by
the kernel, not yet accepted by the loop), give the loop ``turns`` turns so the
stop lands before, during and after the accept, and require that the client
sees the server close its side, and that nothing is left for the collector.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from connectors.ports import stop_server
from tests.servers import free_port

TURNS = [0, 1, 2, 3, 4]


async def closed_by_peer(sock: socket.socket, within: float = 3.0) -> bool:
    """True when the server closed its side of ``sock`` within ``within`` seconds."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            data = sock.recv(64)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        except ConnectionResetError:
            return True
        return data == b""
    return False


async def accepting(port: int, turns: int) -> socket.socket:
    """A client the kernel has connected, after ``turns`` loop turns of the server."""
    client = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.05)  # the connection waits in the backlog; the loop has not run
    for _ in range(turns):
        await asyncio.sleep(0)
    return client


async def closes_the_accepted_client(
    port: int, turns: int, stop: Callable[[], Awaitable[None]]
) -> None:
    """A client connects, the server's loop gets ``turns`` turns, ``stop`` closes the client."""
    client = await accepting(port, turns)
    try:
        await asyncio.wait_for(stop(), 10)
        assert await closed_by_peer(client)
    finally:
        client.close()
    gc.collect()  # a half-made transport would warn here (warnings are errors)


class Tracked(asyncio.Protocol):
    """A protocol whose server knows its transports, as a server library does."""

    def __init__(self, known: set[asyncio.BaseTransport]) -> None:
        self.known = known

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.known.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@pytest.mark.parametrize("turns", TURNS)
async def test_a_plain_asyncio_server_closes_a_connection_accepted_as_it_stops(turns: int) -> None:
    known: set[asyncio.BaseTransport] = set()
    port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: Tracked(known), "127.0.0.1", port
    )

    async def library_stop() -> None:  # what pymodbus and asyncua do: close what they know
        server.close()
        for transport in known:
            transport.close()

    client = await accepting(port, turns)
    try:
        await stop_server(server, library_stop)
        assert await closed_by_peer(client)
        assert all(t.is_closing() for t in known)  # none when the stop came before the accept
    finally:
        client.close()
    gc.collect()  # a half-made transport would warn here (warnings are errors)


@pytest.mark.integration
@pytest.mark.parametrize("turns", TURNS)
async def test_the_modbus_station_server_closes_a_connection_accepted_as_it_stops(
    turns: int,
) -> None:
    from connectors.modbus.client import StationServer

    port = free_port()
    server = StationServer("127.0.0.1", port)
    await server.start()
    await closes_the_accepted_client(port, turns, server.stop)


@pytest.mark.integration
@pytest.mark.parametrize("turns", TURNS)
async def test_the_opcua_station_server_closes_a_connection_accepted_as_it_stops(
    turns: int,
) -> None:
    from connectors.opcua.client import StationServer

    port = free_port()
    server = StationServer(f"opc.tcp://127.0.0.1:{port}/", "urn:shopspc:test", "test")
    await server.start("st", {"st.x": 0.0}, writable=[])
    # asyncua waits for the connections it missed to end: with this client open, forever
    await closes_the_accepted_client(port, turns, server.stop)
