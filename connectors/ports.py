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

from connectors.base import ConnectorError

__all__ = ["check_listening", "check_port_free"]

_CONNECT_CHECK_S = 5.0


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
