"""Loopback port checks for the simulated stations: taken before start, listening after.

A simulated station (an asyncua or pymodbus server) must fail with a message
that names the port when another program holds it, instead of starting in the
background and leaving the demo silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable

from connectors.base import ConnectorError

__all__ = ["check_listening", "check_port_free", "stop_server"]

_CONNECT_CHECK_S = 5.0
_CLOSE_WAIT_S = 2.0
# Loop turns a connection accepted just before accepting stopped needs to reach its
# protocol: one for the task that makes its transport, one for connection_made, one spare.
_ACCEPT_TURNS = 3


def _probe(host: str, port: int) -> OSError | None:
    """Bind and listen on host:port as a server would; the error when that is not possible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, addr in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as s:
            # As asyncua and pymodbus do: a connection of an earlier run in TIME_WAIT is no conflict,
            # while another program's listener is one (Linux refuses that bind even so).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
                s.listen(1)
            except OSError as exc:
                return exc
    return None


def check_port_free(where: str, host: str, port: int, hint: str) -> None:
    """Raise a non-retryable :class:`ConnectorError` when a server could not listen on host:port.

    ``hint`` says where the port is chosen (``the device's transport port``); a
    port another program listens on is named as such.
    """
    exc = _probe(host, port)
    if exc is None:
        return
    if exc.errno == errno.EADDRINUSE:
        message = (
            f"cannot listen: port {port} is already in use by another program; "
            f"stop it or choose another port ({hint})"
        )
    else:
        message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    raise ConnectorError(where, message, retryable=False) from exc


async def check_listening(where: str, host: str, port: int) -> None:
    """Raise a non-retryable :class:`ConnectorError` unless host:port accepts a connection now."""
    try:
        async with asyncio.timeout(_CONNECT_CHECK_S):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise ConnectorError(
            where, f"the server started but does not accept connections: {exc}", retryable=False
        ) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def stop_server(
    listener: asyncio.AbstractServer | None,
    stop: Callable[[], Awaitable[None]],
    within: float = _CLOSE_WAIT_S,
) -> None:
    """Stop a server library's listener without leaving an accepted connection open.

    asyncio accepts a connection in one loop turn and makes its transport in a
    task of its own. Python 3.11 leaves that transport half made when the server
    closes in between (``Server._attach`` asserts the server is open): its socket
    is never closed, the peer never sees the close, and the garbage collector
    finds an unclosed transport later. So the listening sockets stop accepting
    first (their reader is removed, the server stays open), connections already
    accepted get the turns they need to reach the library's protocol, and only
    then does the library's ``stop`` close the server and every connection it
    knows. Then this waits (at most ``within`` seconds) until every accepted
    connection has released its socket: 3.11's ``Server.wait_closed`` returns at
    once on a closed server, so its count of live connections is read.
    """
    if listener is not None:
        loop = asyncio.get_running_loop()
        for sock in listener.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(_ACCEPT_TURNS):
            await asyncio.sleep(0)
    await stop()
    if listener is None:
        return
    deadline = loop.time() + within
    while getattr(listener, "_active_count", 0) > 0 and loop.time() < deadline:
        await asyncio.sleep(0.005)
