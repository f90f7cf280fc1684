"""A real asyncua OPC UA server on 127.0.0.1 for the connector's integration tests.

It runs in the test's event loop, on a free port from :func:`tests.servers.free_port`,
with a small address space of a measuring station, and records every Read request a
client sends (so tests can check chunking and one-request block reads). Variables can
be historized (asyncua's in-memory history) and every HistoryRead request is recorded.
:class:`LinkProxy` is a TCP relay a test cuts to lose the link while the server (and
its history) stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.history import HistoryDict

from connectors.opcua.client import stop_ua_server
from tests.servers import HOST, free_port

NS_URI = "urn:shopspc:test:station"
DOUBLES = ("Bore", "Flatness", "D1", "D2", "D3", "P1", "P2", "P3", "P4", "P5")

for noisy in ("asyncua", "asyncua.server", "asyncua.client"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


class PasswordUsers:
    """asyncua user manager: exactly one user name and password are accepted."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username == self.username and password == self.password:
            return User(role=UserRole.User)
        return None


@dataclass(frozen=True)
class HistoryCall:
    """One HistoryRead request as the server received it."""

    nodes: list[str]  # variable names, in request order
    continued: list[bool]  # per node: did it carry a continuation point
    release: bool  # ReleaseContinuationPoints
    start: datetime
    end: datetime
    per_node: int  # NumValuesPerNode


@dataclass
class UaServer:
    """One asyncua server; :meth:`restart` brings it back on the same port with the same nodes.

    ``historize`` names variables whose every change the server keeps in its (in-memory)
    history; ``history_page`` caps the values per HistoryRead answer (more → a
    continuation point); ``history_refusals`` maps names to the Bad status their
    history reads answer (as a server that does not keep a node's history would).
    """

    port: int = field(default_factory=free_port)
    max_nodes_per_read: int | None = None
    max_monitored_items_per_call: int | None = None
    users: Any = None
    identity_tokens: list[type] | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    policies: list[ua.SecurityPolicyType] | None = None
    historize: tuple[str, ...] = ()
    history_page: int | None = None
    history_refusals: dict[str, int] = field(default_factory=dict)
    max_nodes_per_history_read: int | None = None
    reads: list[list[str]] = field(default_factory=list)
    item_creates: list[int] = field(default_factory=list)
    history_calls: list[HistoryCall] = field(default_factory=list)
    server: Server | None = None
    idx: int = 2

    @property
    def url(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}/"

    def node(self, name: str) -> str:
        """The ``ns=…;s=…`` node id string of a test variable."""
        return f"ns={self.idx};s={name}"

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.idx)

    async def start(self) -> None:
        server = Server(user_manager=self.users)
        if self.history_page is not None:
            storage = HistoryDict(max_history_data_response_size=self.history_page)
            server.iserver.history_manager.set_storage(storage)
        await server.init()
        server.set_endpoint(self.url)
        if self.policies is not None:
            server.set_security_policy(self.policies)
        if self.identity_tokens is not None:
            server.set_identity_tokens(self.identity_tokens)
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        self.idx = await server.register_namespace(NS_URI)
        station = await server.nodes.objects.add_object(ua.NodeId("Station", self.idx), "Station")
        for name in DOUBLES:
            await station.add_variable(self.node_id(name), name, 0.0, ua.VariantType.Double)
        await station.add_variable(self.node_id("Ready"), "Ready", False, ua.VariantType.Boolean)
        ack = await station.add_variable(self.node_id("Ack"), "Ack", False, ua.VariantType.Boolean)
        await ack.set_writable()
        await station.add_variable(self.node_id("Serial"), "Serial", "", ua.VariantType.String)
        await station.add_variable(self.node_id("Program"), "Program", "P-7", ua.VariantType.String)
        limits = ua.ObjectIds
        for node, limit in (
            (
                limits.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                self.max_nodes_per_read,
            ),
            (
                limits.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
                self.max_monitored_items_per_call,
            ),
            (
                limits.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
                self.max_nodes_per_history_read,
            ),
        ):
            if limit is not None:
                await server.write_attribute_value(
                    ua.NodeId(node), ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32))
                )
        server.subscribe_server_callback(CallbackType.PreRead, self._record_read)
        server.subscribe_server_callback(CallbackType.ItemSubscriptionCreated, self._record_items)
        manager = server.iserver.history_manager
        answer = manager.read_history

        async def read_history(params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
            return self._refuse(params, await answer(params))

        manager.read_history = read_history  # type: ignore[method-assign]
        await server.start()
        self.server = server
        for name in self.historize:
            await server.historize_node_data_change(
                server.get_node(self.node_id(name)), period=None
            )

    def _refuse(
        self, params: ua.HistoryReadParameters, results: list[ua.HistoryReadResult]
    ) -> list[ua.HistoryReadResult]:
        """Record the request; answer the refused names with their Bad status and no data."""
        names = [str(rv.NodeId.Identifier) for rv in params.NodesToRead]
        details = params.HistoryReadDetails
        self.history_calls.append(
            HistoryCall(
                nodes=names,
                continued=[bool(rv.ContinuationPoint) for rv in params.NodesToRead],
                release=params.ReleaseContinuationPoints,
                start=details.StartTime,
                end=details.EndTime,
                per_node=details.NumValuesPerNode,
            )
        )
        for name, result in zip(names, results, strict=True):
            if name in self.history_refusals:
                result.StatusCode = ua.StatusCode(self.history_refusals[name])
                result.HistoryData = ua.HistoryData()
                result.ContinuationPoint = None
        return results

    def _record_read(self, event: Any, _dispatcher: Any) -> None:
        if event.is_external:
            self.reads.append([rv.NodeId.to_string() for rv in event.request_params.NodesToRead])

    def _record_items(self, event: Any, _dispatcher: Any) -> None:
        if event.is_external:
            self.item_creates.append(len(event.request_params.ItemsToCreate))

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        await stop_ua_server(server)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def set(
        self,
        name: str,
        value: Any,
        *,
        vtype: ua.VariantType = ua.VariantType.Double,
        status: int = ua.StatusCodes.Good,
        source_time: datetime | None = None,
        server_time: datetime | None = None,
    ) -> None:
        """Write a DataValue as the device would (value, status, timestamps)."""
        assert self.server is not None
        now = datetime.now(UTC)
        dv = ua.DataValue(
            ua.Variant(value, vtype),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=source_time or now,
            ServerTimestamp=server_time or now,
        )
        await self.server.write_attribute_value(self.node_id(name), dv)

    def get(self, name: str) -> Any:
        assert self.server is not None
        return self.server.read_attribute_value(self.node_id(name)).Value.Value

    def reads_of(self, name: str) -> list[list[str]]:
        """The recorded Read requests that included the variable ``name``."""
        wanted = self.node_id(name).to_string()
        return [r for r in self.reads if wanted in r]


class LinkProxy:
    """A TCP relay in front of a server: :meth:`cut` loses the link, :meth:`restore` lets it back.

    While cut, every relayed connection is aborted and new ones are closed at once, so a
    client sees a real transport loss and failing reconnects while the server keeps
    running (and keeps its history).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = True
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"opc.tcp://{HOST}:{self.port}/"

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._accept, HOST, self.port)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers = [writer]
        try:
            if not self.up:
                return
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
            writers.append(up_writer)
            self._writers.update(writers)
            pipes = [
                asyncio.create_task(_pipe(reader, up_writer)),
                asyncio.create_task(_pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in writers:
                self._writers.discard(w)
                w.transport.abort()

    async def cut(self) -> None:
        """Abort every relayed connection and refuse new ones until :meth:`restore`."""
        self.up = False
        for w in list(self._writers):
            w.transport.abort()

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        await self.cut()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            await listener.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded in time and count) until it holds, else fail with ``what``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
