"""OpcuaSource against a real asyncua server on 127.0.0.1 (started in the test's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto import cert_gen
from asyncua.server.user_managers import CertificateUserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from connectors.base import Backoff, ConnectorError, Quality, Sample
from connectors.opcua import OpcuaSource, OpcuaSourceConfig
from connectors.opcua.source import GAP_STATUS
from tests.connectors.opcua.uaserver import NS_URI, PasswordUsers, UaServer, wait_until
from tests.servers import cancel_and_wait

pytestmark = pytest.mark.integration


class Collect:
    """The ``emit`` callback: keeps every sample in arrival order."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    async def __call__(self, batch: Sequence[Sample]) -> None:
        self.samples.extend(batch)

    def of(self, binding: str) -> list[Sample]:
        return [s for s in self.samples if s.binding == binding]


@pytest.fixture
async def server() -> AsyncIterator[UaServer]:
    srv = UaServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def config(srv: UaServer, **overrides: Any) -> OpcuaSourceConfig:
    base: dict[str, Any] = {
        "endpoint": srv.url,
        "timeout_s": 2.0,
        "watchdog_interval_s": 0.3,
        "publishing_interval_ms": 20,
        "reconnect_base_s": 0.05,
        "reconnect_cap_s": 0.3,
    }
    base.update(overrides)
    return OpcuaSourceConfig.model_validate(base)


@contextlib.asynccontextmanager
async def running(source: OpcuaSource, emit: Collect) -> AsyncIterator[asyncio.Task[None]]:
    source.backoff = Backoff(base=0.05, cap=0.3, rng=random.Random(1))
    task = asyncio.create_task(source.run(emit))
    try:
        yield task
    finally:
        await cancel_and_wait(task)


def us(dt: datetime) -> int:
    return round(dt.timestamp() * 1_000_000)


async def test_subscription_delivers_every_write_with_quality_and_source_time(
    server: UaServer,
) -> None:
    emit = Collect()
    cfg = config(
        server,
        nodes=[{"id": "bore", "node": f"nsu={NS_URI};s=Bore", "sampling_interval_ms": 0}],
    )
    source = OpcuaSource(cfg, "station-1")
    async with running(source, emit):
        await wait_until(lambda: len(emit.of("bore")) >= 1, "the initial value")
        t0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        # Two parts measuring the same are two samples: identical value, new source time.
        await server.set("Bore", 10.0, source_time=t0)
        await server.set("Bore", 10.0, source_time=t0 + timedelta(seconds=1))
        await server.set("Bore", 10.5, source_time=t0 + timedelta(seconds=2))
        await wait_until(lambda: len(emit.of("bore")) >= 4, "three written values")
    tail = emit.of("bore")[-3:]
    assert [s.value for s in tail] == [10.0, 10.0, 10.5]
    assert [s.quality for s in tail] == [Quality.GOOD] * 3
    assert [s.source_time_us for s in tail] == [us(t0 + timedelta(seconds=k)) for k in range(3)]
    assert all(s.time_us == s.source_time_us and s.server_time_us for s in tail)
    assert all(s.status == "" for s in tail)
    assert source.stats.state == "stopped"
    assert source.stats.samples == len(emit.samples)


async def test_status_codes_become_sample_quality_never_a_crash(server: UaServer) -> None:
    emit = Collect()
    cfg = config(
        server,
        nodes=[
            {"id": "bore", "node": server.node("Bore"), "sampling_interval_ms": 0},
            {
                "id": "program",
                "node": server.node("Program"),
                "mode": "poll",
                "poll_interval_s": 0.05,
            },
            {
                "id": "ghost",
                "node": server.node("NoSuchNode"),
                "mode": "poll",
                "poll_interval_s": 0.05,
            },
            {"id": "ghost-sub", "node": server.node("NoSuchNode")},
        ],
        # The acknowledge node is read-only on this server: the write is refused.
        triggers=[
            {
                "id": "result",
                "ready_node": server.node("Ready"),
                "ack_node": server.node("Flatness"),
                "block": [{"id": "d1", "node": server.node("D1")}],
                "sampling_interval_ms": 0,
            }
        ],
    )
    source = OpcuaSource(cfg, "station-1")
    async with running(source, emit) as task:
        await wait_until(lambda: len(emit.of("bore")) >= 1, "the initial value")
        await server.set("Ready", True, vtype=ua.VariantType.Boolean)
        await wait_until(lambda: source.stats.errors >= 1, "the refused acknowledge")
        assert f"write {server.node('Flatness')}: Bad" in source.stats.last_error
        assert source.triggers == 0 and len(emit.of("d1")) == 1
        await server.set("Bore", 5.0, status=ua.StatusCodes.UncertainLastUsableValue)
        await server.set("Bore", 6.0, status=ua.StatusCodes.BadSensorFailure)
        await server.set("Bore", 7.0)
        await wait_until(lambda: len(emit.of("bore")) >= 4, "three status changes")
        await wait_until(lambda: emit.of("program") and emit.of("ghost"), "polled bad reads")
        assert not task.done()
    uncertain, bad, good = emit.of("bore")[-3:]
    assert (uncertain.quality, uncertain.value, uncertain.status) == (
        Quality.UNCERTAIN,
        5.0,
        "UncertainLastUsableValue",
    )
    assert bad.quality is Quality.BAD and math.isnan(bad.value) and bad.status == "BadSensorFailure"
    assert (good.quality, good.value, good.status) == (Quality.GOOD, 7.0, "")
    program = emit.of("program")[0]
    assert program.quality is Quality.BAD and math.isnan(program.value)
    assert program.status == "NonNumeric(str)" and program.fields["raw"] == "P-7"
    ghost = emit.of("ghost")[0]
    assert ghost.quality is Quality.BAD and ghost.status == "BadNodeIdUnknown"
    [ghost_sub] = emit.of("ghost-sub")
    assert ghost_sub.quality is Quality.BAD and ghost_sub.status == "BadNodeIdUnknown"
    assert source.stats.bad_samples >= 4


async def test_requests_are_chunked_by_operation_limits_and_polls_use_server_time() -> None:
    srv = UaServer(max_nodes_per_read=2, max_monitored_items_per_call=2)
    await srv.start()
    try:
        emit = Collect()
        names = ["P1", "P2", "P3", "P4", "P5"]
        device = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        stamped = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
        for k, name in enumerate(names):
            await srv.set(name, float(k + 1), source_time=device, server_time=stamped)
        cfg = config(
            srv,
            timestamp="server",
            nodes=[
                {"id": n.lower(), "node": srv.node(n), "mode": "poll", "poll_interval_s": 0.05}
                for n in names
            ]
            + [{"id": d.lower(), "node": srv.node(d)} for d in ("D1", "D2", "D3")],
        )
        source = OpcuaSource(cfg, "station-1")
        async with running(source, emit):
            await wait_until(lambda: all(len(emit.of(n.lower())) >= 2 for n in names), "two polls")
            await wait_until(lambda: all(emit.of(d) for d in ("d1", "d2", "d3")), "subscribed")
    finally:
        await srv.stop()
    ours = [r for r in srv.reads if any(f"s={n}" in node for n in names for node in r)]
    assert len(ours) >= 6  # two polls of five nodes, at most two per request
    assert max(len(r) for r in ours) <= 2
    assert [emit.of(n.lower())[0].value for n in names] == [1.0, 2.0, 3.0, 4.0, 5.0]
    polls = [s for n in names for s in emit.of(n.lower())]
    assert all(s.quality is Quality.GOOD for s in polls)
    # Server time was chosen; the device's own time is kept as a field.
    assert all(s.source_time_us is None and s.time_us == us(stamped) for s in polls)
    assert all(s.fields["device_time_us"] == us(device) for s in polls)
    assert source.read_requests >= 6
    assert srv.item_creates == [2, 1]  # three monitored items, at most two per call


async def test_trigger_reads_the_block_in_one_request_and_acknowledges(server: UaServer) -> None:
    emit = Collect()
    cfg = config(
        server,
        triggers=[
            {
                "id": "result",
                "ready_node": server.node("Ready"),
                "ack_node": server.node("Ack"),
                "ack_reset": False,
                "serial_node": server.node("Serial"),
                "block": [{"id": d.lower(), "node": server.node(d)} for d in ("D1", "D2", "D3")],
                "sampling_interval_ms": 0,
            }
        ],
    )
    source = OpcuaSource(cfg, "station-1")
    async with running(source, emit):
        for part, base in (("SN-1", 1.0), ("SN-2", 2.0)):
            for k, d in enumerate(("D1", "D2", "D3")):
                await server.set(d, base + k / 10)
            await server.set("Serial", part, vtype=ua.VariantType.String)
            await server.set("Ready", True, vtype=ua.VariantType.Boolean)
            await wait_until(lambda: server.get("Ack") is True, f"the ack of {part}")
            # The device drops ready; the source resets the ack for the next part.
            await server.set("Ready", False, vtype=ua.VariantType.Boolean)
            await wait_until(lambda: server.get("Ack") is False, f"the ack reset of {part}")
    for binding, values in (("d1", [1.0, 2.0]), ("d2", [1.1, 2.1]), ("d3", [1.2, 2.2])):
        got = emit.of(binding)
        assert [s.value for s in got] == values
        assert [s.serial for s in got] == ["SN-1", "SN-2"]
        assert all(s.fields["trigger"] == "result" for s in got)
    block_reads = server.reads_of("D1")
    assert len(block_reads) == 2  # one Read per part, holding serial and the whole block
    assert all(len(r) == 4 for r in block_reads)
    assert source.triggers == 2


async def test_event_trigger_reads_the_block_per_event(server: UaServer) -> None:
    emit = Collect()
    cfg = config(
        server,
        triggers=[
            {
                "id": "result-event",
                "event_node": "i=2253",  # the Server object
                "ack_node": server.node("Ack"),
                "block": [{"id": "p1", "node": server.node("P1")}],
            }
        ],
    )
    source = OpcuaSource(cfg, "station-1")
    assert server.server is not None
    generator = await server.server.get_event_generator()
    async with running(source, emit):
        await server.set("P1", 1.0)
        # The event subscription may not exist yet when the first event fires: repeat
        # (bounded) until the first block has been read.
        for _ in range(100):
            await generator.trigger(message="part 1 done")
            await asyncio.sleep(0.05)
            if emit.of("p1"):
                break
        await wait_until(lambda: server.get("Ack") is True, "the ack of part 1")
        await server.set("Ack", False, vtype=ua.VariantType.Boolean)
        await server.set("P1", 2.0)
        await generator.trigger(message="part 2 done")
        await wait_until(lambda: any(s.value == 2.0 for s in emit.of("p1")), "part 2")
        await wait_until(lambda: server.get("Ack") is True, "the ack of part 2")
    values = [s.value for s in emit.of("p1")]
    assert values[0] == 1.0 and values[-1] == 2.0 and set(values) == {1.0, 2.0}
    assert all(s.fields["trigger"] == "result-event" for s in emit.of("p1"))
    assert source.triggers >= 2


async def test_server_restart_marks_a_gap_then_rebuilds_the_subscription(
    server: UaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.opcua.source")
    emit = Collect()
    cfg = config(
        server,
        nodes=[
            {"id": "bore", "node": server.node("Bore"), "sampling_interval_ms": 0},
            {"id": "flat", "node": server.node("Flatness"), "mode": "poll", "poll_interval_s": 0.1},
        ],
    )
    source = OpcuaSource(cfg, "station-1")
    async with running(source, emit) as task:
        await server.set("Bore", 1.5)
        await wait_until(lambda: any(s.value == 1.5 for s in emit.of("bore")), "a value")
        await server.stop()
        await wait_until(
            lambda: any(s.status == GAP_STATUS for s in emit.of("bore")), "the gap mark"
        )
        assert source.stats.state == "disconnected"
        await server.start()
        await wait_until(lambda: source.stats.state == "connected", "the reconnect")
        await server.set("Bore", 2.5)
        await wait_until(lambda: any(s.value == 2.5 for s in emit.of("bore")), "a value after")
        assert not task.done()
    bore = emit.of("bore")
    gap = next(i for i, s in enumerate(bore) if s.status == GAP_STATUS)
    assert bore[gap].quality is Quality.BAD and math.isnan(bore[gap].value)
    assert any(s.value == 1.5 for s in bore[:gap])
    assert any(s.value == 2.5 and s.quality is Quality.GOOD for s in bore[gap:])
    assert any(s.status == GAP_STATUS for s in emit.of("flat"))
    assert source.stats.reconnects == 1 and source.gaps == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "connectors.opcua.source"]
    # Losing and regaining the server is logged once each way, however many attempts failed.
    assert sum("connection lost" in m or "cannot connect" in m for m in messages) == 1
    assert sum("connection regained" in m for m in messages) == 1


async def test_username_password_accepted_and_wrong_password_is_not_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = UaServer(
        users=PasswordUsers("operator", "s3cret"), identity_tokens=[ua.UserNameIdentityToken]
    )
    await srv.start()
    try:
        monkeypatch.setenv("OPCUA_TEST_PASSWORD", "s3cret")
        emit = Collect()
        cfg = config(
            srv,
            username="operator",
            password_env="OPCUA_TEST_PASSWORD",
            nodes=[{"id": "bore", "node": srv.node("Bore")}],
        )
        async with running(OpcuaSource(cfg, "station-1"), emit):
            await wait_until(lambda: len(emit.of("bore")) >= 1, "a value as operator")

        monkeypatch.setenv("OPCUA_TEST_PASSWORD", "wrong")
        source = OpcuaSource(cfg, "station-1")
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(source.run(Collect()), 15)
        assert not info.value.retryable
        assert "BadUserAccessDenied" in str(info.value) or "Identity" in str(info.value)
        assert source.stats.state == "stopped"
    finally:
        await srv.stop()


async def self_signed(tmp: Path, name: str, uri: str, server: bool = False) -> tuple[Path, Path]:
    """A self-signed certificate (DER) and key (PEM) made by asyncua's cert_gen."""
    key, cert = tmp / f"{name}-key.pem", tmp / f"{name}-cert.der"
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        uses.append(ExtendedKeyUsageOID.SERVER_AUTH)
    await cert_gen.setup_self_signed_certificate(key, cert, uri, "localhost", uses, {})
    return cert, key


async def streams(srv: UaServer, cfg: OpcuaSourceConfig, value: float) -> None:
    """The source connects with ``cfg`` and delivers ``value`` once the server has it."""
    emit = Collect()
    async with running(OpcuaSource(cfg, "s"), emit):
        await wait_until(lambda: len(emit.of("bore")) >= 1, "the initial value")
        await srv.set("Bore", value)
        await wait_until(lambda: any(s.value == value for s in emit.of("bore")), "a value")


async def test_basic256sha256_sign_and_encrypt_with_certificate_users(tmp_path: Path) -> None:
    server_cert, server_key = await self_signed(
        tmp_path, "server", "urn:freeopcua:python:server", server=True
    )
    client_cert, client_key = await self_signed(tmp_path, "client", "urn:shopspc:gateway")
    user_cert, user_key = await self_signed(tmp_path, "user", "urn:shopspc:operator")
    other_cert, other_key = await self_signed(tmp_path, "other", "urn:shopspc:stranger")
    users = CertificateUserManager()
    await users.add_user(user_cert, name="operator")
    srv = UaServer(
        certificate=server_cert,
        private_key=server_key,
        users=users,
        identity_tokens=[ua.X509IdentityToken],
        policies=[
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
        ],
    )
    await srv.start()

    def secure(mode: str, user: tuple[Path, Path], pin: bool) -> OpcuaSourceConfig:
        return config(
            srv,
            security_policy="Basic256Sha256",
            security_mode=mode,
            certificate_file=str(client_cert),
            private_key_file=str(client_key),
            server_certificate_file=str(server_cert) if pin else None,
            user_certificate_file=str(user[0]),
            user_private_key_file=str(user[1]),
            nodes=[{"id": "bore", "node": srv.node("Bore"), "sampling_interval_ms": 0}],
        )

    try:
        # SignAndEncrypt with a pinned server certificate; Sign with the one from GetEndpoints.
        for mode, pin, value in (("SignAndEncrypt", True, 3.25), ("Sign", False, 4.5)):
            await streams(srv, secure(mode, (user_cert, user_key), pin), value)

        # A user certificate the server does not know: rejected, not retryable.
        stranger = OpcuaSource(secure("SignAndEncrypt", (other_cert, other_key), True), "s")
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(stranger.run(Collect()), 15)
        assert not info.value.retryable

        # The same server refuses an unsecured client: no such endpoint, not retryable.
        plain = OpcuaSource(config(srv, nodes=[{"id": "bore", "node": srv.node("Bore")}]), "s")
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(plain.run(Collect()), 15)
        assert not info.value.retryable
    finally:
        await srv.stop()
