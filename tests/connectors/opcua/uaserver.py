"""A real asyncua OPC UA server on 127.0.0.1 for the connector's integration tests.

It runs in the test's event loop, on a free port from :func:`tests.servers.free_port`,
with a small address space of a measuring station, and records every Read request a
client sends (so tests can check chunking and one-request block reads).
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


@dataclass
class UaServer:
    """One asyncua server; :meth:`restart` brings it back on the same port with the same nodes."""

    port: int = field(default_factory=free_port)
    max_nodes_per_read: int | None = None
    max_monitored_items_per_call: int | None = None
    users: Any = None
    identity_tokens: list[type] | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    policies: list[ua.SecurityPolicyType] | None = None
    reads: list[list[str]] = field(default_factory=list)
    item_creates: list[int] = field(default_factory=list)
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
        ):
            if limit is not None:
                await server.write_attribute_value(
                    ua.NodeId(node), ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32))
                )
        server.subscribe_server_callback(CallbackType.PreRead, self._record_read)
        server.subscribe_server_callback(CallbackType.ItemSubscriptionCreated, self._record_items)
        await server.start()
        self.server = server

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


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded in time and count) until it holds, else fail with ``what``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
