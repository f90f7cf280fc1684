"""OPC UA connector pieces that need no server: config, DataValue → Sample, error mapping."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime

import pytest
from asyncua import ua
from pydantic import ValidationError

from connectors.base import Backoff, ConnectorError, Quality, Sample, source_class
from connectors.opcua import OpcuaSource, OpcuaSourceConfig
from connectors.opcua.client import OpcuaClient, datavalue_to_sample, status_name, translate_error
from connectors.opcua.config import TimestampChoice
from tests.servers import cancel_and_wait, free_port

T_SRC = datetime(2026, 5, 6, 7, 8, 9, 250000, tzinfo=UTC)
T_SRV = datetime(2026, 5, 6, 7, 8, 10, tzinfo=UTC)
US_SRC = int(T_SRC.timestamp()) * 1_000_000 + 250000
US_SRV = int(T_SRV.timestamp()) * 1_000_000


def minimal(**extra) -> dict:
    return {
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"id": "a", "node": "ns=2;s=A"}],
        **extra,
    }


def test_kind_is_registered() -> None:
    assert source_class("opcua") is OpcuaSource


def test_config_defaults_subscribe_without_deadband_and_queue_above_one() -> None:
    cfg = OpcuaSourceConfig.model_validate(minimal())
    node = cfg.nodes[0]
    assert (node.mode, node.deadband, node.queue_size) == ("subscribe", None, 10)
    assert cfg.timestamp is TimestampChoice.SOURCE


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown_key": 1},
        {"endpoint": "http://127.0.0.1:4840"},
        {"nodes": [{"id": "a", "node": "Line1.Bore"}]},
        {"nodes": [{"id": "a", "node": "ns=2;s=A", "queue_size": 1}]},
        {"nodes": [{"id": "a", "node": "ns=2;s=A"}, {"id": "a", "node": "ns=2;s=B"}]},
        {"security_policy": "Basic256Sha256"},
        {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt"},
        {"password_env": "PW"},
        {"nodes": []},
    ],
)
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OpcuaSourceConfig.model_validate(minimal(**bad))


def test_config_accepts_uri_form_and_triggers() -> None:
    cfg = OpcuaSourceConfig.model_validate(
        minimal(
            nodes=[{"id": "a", "node": "nsu=urn:plc:line1;s=Gauge.A", "mode": "poll"}],
            triggers=[
                {
                    "id": "t",
                    "ready_node": "ns=2;s=Ready",
                    "ack_node": "ns=2;s=Ack",
                    "block": [{"id": "d1", "node": "ns=2;i=1001"}],
                }
            ],
        )
    )
    assert cfg.triggers[0].ack_value is True


BLOCK = [{"id": "d1", "node": "ns=2;s=D1"}]


@pytest.mark.parametrize(
    "trigger",
    [
        {"ready_node": "ns=2;s=R", "event_node": "i=2253", "ack_node": "ns=2;s=A"},
        {},
        {"ready_node": "ns=2;s=R"},
        {"event_node": "i=2253", "ack_reset": False},
        {"event_node": "Server"},
    ],
)
def test_trigger_config_rejects(trigger: dict) -> None:
    with pytest.raises(ValidationError):
        OpcuaSourceConfig.model_validate(minimal(triggers=[{"id": "t", "block": BLOCK, **trigger}]))


def test_event_trigger_needs_no_ack() -> None:
    cfg = OpcuaSourceConfig.model_validate(
        minimal(triggers=[{"id": "t", "block": BLOCK, "event_node": "i=2253"}])
    )
    assert cfg.triggers[0].ack_node is None and cfg.triggers[0].event_type == "i=2041"


def dv(value, vtype=ua.VariantType.Double, status=ua.StatusCodes.Good, src=T_SRC, srv=T_SRV):
    return ua.DataValue(
        ua.Variant(value, vtype),
        StatusCode=ua.StatusCode(status),
        SourceTimestamp=src,
        ServerTimestamp=srv,
    )


def test_good_value_keeps_both_times_and_prefers_source() -> None:
    s = datavalue_to_sample("a", dv(1.25), TimestampChoice.SOURCE, 5)
    assert (s.value, s.quality, s.status) == (1.25, Quality.GOOD, "")
    assert (s.source_time_us, s.server_time_us, s.time_us) == (US_SRC, US_SRV, US_SRC)


def test_server_choice_moves_device_time_to_a_field() -> None:
    s = datavalue_to_sample("a", dv(1.0), TimestampChoice.SERVER, 5)
    assert (s.source_time_us, s.time_us, s.fields["device_time_us"]) == (None, US_SRV, US_SRC)


def test_timestamp_fallbacks() -> None:
    only_server = datavalue_to_sample("a", dv(1.0, src=None), TimestampChoice.SOURCE, 5)
    assert only_server.time_us == US_SRV
    only_source = datavalue_to_sample("a", dv(1.0, srv=None), TimestampChoice.SERVER, 5)
    assert only_source.time_us == US_SRC
    neither = datavalue_to_sample("a", dv(1.0, src=None, srv=None), TimestampChoice.SERVER, 5)
    assert neither.time_us == 5


def test_status_severity_maps_to_quality() -> None:
    unc = datavalue_to_sample(
        "a", dv(2.0, status=ua.StatusCodes.UncertainSensorNotAccurate), "source", 0
    )
    assert (unc.quality, unc.value, unc.status) == (
        Quality.UNCERTAIN,
        2.0,
        "UncertainSensorNotAccurate",
    )
    bad = datavalue_to_sample("a", dv(2.0, status=ua.StatusCodes.BadDeviceFailure), "source", 0)
    assert bad.quality is Quality.BAD and math.isnan(bad.value) and bad.status == "BadDeviceFailure"


def test_non_numeric_is_bad_with_the_raw_text() -> None:
    s = datavalue_to_sample("lot", dv("L-42", ua.VariantType.String), "source", 0)
    assert s.quality is Quality.BAD and math.isnan(s.value)
    assert (s.status, s.fields["raw"]) == ("NonNumeric(str)", "L-42")
    flag = datavalue_to_sample("ok", dv(True, ua.VariantType.Boolean), "source", 0)
    assert (flag.value, flag.quality) == (1.0, Quality.GOOD)


def test_status_name_ignores_info_bits() -> None:
    assert status_name(ua.StatusCodes.BadSensorFailure | 0x400) == "BadSensorFailure"


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied), False),
        (ua.UaStatusCodeError(ua.StatusCodes.BadIdentityTokenRejected), False),
        (ua.UaStatusCodeError(ua.StatusCodes.BadSecurityChecksFailed), False),
        (ua.UaStatusCodeError(ua.StatusCodes.BadTimeout), True),
        (ua.UaStatusCodeError(ua.StatusCodes.BadSessionIdInvalid), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (FileNotFoundError(2, "missing", "/no/cert.der"), False),
        (ua.UaError("No matching endpoints: 3, http://x"), False),
        (ua.UaError("Server certificate mismatch"), False),
        (ua.UaError("something odd"), True),
    ],
)
def test_errors_are_translated(exc: BaseException, retryable: bool) -> None:
    err = translate_error(exc, "opcua test")
    assert isinstance(err, ConnectorError) and err.retryable is retryable
    assert err.where == "opcua test"


async def test_missing_password_variable_is_not_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPCUA_UNSET_PW", raising=False)
    cfg = minimal(username="op", password_env="OPCUA_UNSET_PW")
    with pytest.raises(ConnectorError) as info:
        await asyncio.wait_for(OpcuaSource(cfg, "s").run(_ignore), 10)
    assert not info.value.retryable and "OPCUA_UNSET_PW" in str(info.value)


async def test_unreachable_server_is_retried_not_raised() -> None:
    cfg = minimal(endpoint=f"opc.tcp://127.0.0.1:{free_port()}")
    source = OpcuaSource(cfg, "s", backoff=Backoff(base=0.01, cap=0.02, rng=random.Random(0)))
    task = asyncio.create_task(source.run(_ignore))
    try:
        for _ in range(500):
            if source.stats.errors >= 3:
                break
            await asyncio.sleep(0.01)
        assert source.stats.errors >= 3 and not task.done()
        assert source.stats.state == "disconnected"
    finally:
        await cancel_and_wait(task)
    assert source.stats.state == "stopped"


async def _ignore(batch) -> None:
    return None


async def test_full_sample_queue_drops_the_oldest_and_counts() -> None:
    client = OpcuaClient(OpcuaSourceConfig.model_validate(minimal(queue_size=2)), "opcua test")
    for k in range(3):
        client._put(Sample("a", float(k), Quality.GOOD, k))
    kept = [client.samples.get_nowait().value for _ in range(client.samples.qsize())]
    assert kept == [1.0, 2.0] and client.dropped == 1
