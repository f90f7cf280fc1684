"""OPC UA connector pieces that need no server: config, DataValue → Sample, error mapping,
the backfill's helpers and its source-side logic (with a stand-in client)."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from asyncua import ua
from pydantic import ValidationError

import connectors.opcua
from connectors.base import Backoff, ConnectorError, Quality, Sample, source_class
from connectors.opcua import OpcuaSource, OpcuaSourceConfig
from connectors.opcua.client import (
    HistoryItem,
    HistoryResult,
    OpcuaClient,
    _history_access_error,
    datavalue_to_sample,
    device_time_us,
    keep_newest,
    status_name,
    translate_error,
)
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


# -- backfill -------------------------------------------------------------------------


def test_backfill_is_on_by_default_with_bounds() -> None:
    cfg = OpcuaSourceConfig.model_validate(minimal())
    assert cfg.backfill is True
    assert (cfg.backfill_max_s, cfg.backfill_max_values, cfg.backfill_timeout_s) == (
        3600.0,
        1000,
        30.0,
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"backfill_max_s": 0}, "backfill_max_s"),
        ({"backfill_max_values": 0}, "backfill_max_values"),
        ({"backfill_timeout_s": -1}, "backfill_timeout_s"),
        ({"backfill_timeout_s": 2, "timeout_s": 5}, "shorter than timeout_s"),
        ({"backfill": False, "backfill_max_values": 10}, "without backfill: true"),
        ({"backfill": "sometimes"}, "backfill"),
    ],
)
def test_backfill_config_rejects(bad: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpcuaSourceConfig.model_validate(minimal(**bad))


def sample(t: int | None, value: float = 1.0, status: str = "", **fields) -> Sample:
    q = Quality.GOOD if not status else Quality.BAD
    return Sample("a", value, q, 999, source_time_us=t, status=status, fields=fields)


def test_device_time_is_the_source_time_also_when_server_time_is_chosen() -> None:
    assert device_time_us(sample(5)) == 5
    assert device_time_us(sample(None, device_time_us=7)) == 7
    assert device_time_us(sample(None)) is None
    s = datavalue_to_sample("a", dv(1.0), TimestampChoice.SERVER, 5)
    assert device_time_us(s) == US_SRC


def test_keep_newest_orders_filters_and_cuts() -> None:
    got = [sample(30, 3.0), sample(10, 1.0), sample(None, 9.0), sample(20, 2.0), sample(5, 0.5)]
    kept, truncated, untimed = keep_newest(got, 10, 5)
    assert [s.value for s in kept] == [1.0, 2.0, 3.0]  # oldest first, before start left out
    assert (truncated, untimed) == (False, 1)
    kept, truncated, _ = keep_newest(got, 10, 2)
    assert [s.value for s in kept] == [2.0, 3.0] and truncated  # the newest are kept


def test_keep_newest_counts_exact_repeats_once_and_keeps_server_order_on_ties() -> None:
    nan_bad = sample(20, math.nan, "BadSensorFailure")
    got = [sample(10, 1.0), sample(10, 1.0), sample(20, 2.0), sample(20, 4.0), nan_bad, nan_bad]
    kept, truncated, _ = keep_newest(got, 0, 10)
    assert [(device_time_us(s), s.value) for s in kept][:3] == [(10, 1.0), (20, 2.0), (20, 4.0)]
    assert len(kept) == 4 and kept[-1].status == "BadSensorFailure" and not truncated


@pytest.mark.parametrize(
    ("level", "status", "error"),
    [
        (5, ua.StatusCodes.Good, ""),  # CurrentRead | HistoryRead
        (1, ua.StatusCodes.Good, "no history (AccessLevel without HistoryRead)"),
        (None, ua.StatusCodes.BadNodeIdUnknown, "AccessLevel: BadNodeIdUnknown"),
    ],
)
def test_access_level_decides_whether_history_is_read(level, status, error) -> None:
    value = ua.Variant(level, ua.VariantType.Byte) if level is not None else ua.Variant()
    assert _history_access_error(ua.DataValue(value, StatusCode=ua.StatusCode(status))) == error


class HistoryStub:
    """Stands in for OpcuaClient in the source's backfill: canned history, or none ever."""

    def __init__(self, results: list[HistoryResult] | None = None) -> None:
        self.results = results
        self.asked: list[HistoryItem] = []

    async def first_samples(self, bindings, timeout) -> dict:
        return {}

    async def read_history(self, items, *, end_us, max_values) -> list[HistoryResult]:
        self.asked.extend(items)
        if self.results is None:
            await asyncio.Event().wait()  # a server that never answers
        return self.results or []


class Emitted:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    async def __call__(self, batch) -> None:
        self.samples.extend(batch)


def two_nodes(**extra) -> OpcuaSource:
    cfg = minimal(nodes=[{"id": "a", "node": "ns=2;s=A"}, {"id": "b", "node": "ns=2;s=B"}], **extra)
    return OpcuaSource(cfg, "s")


async def test_backfill_merges_nodes_in_time_and_skips_what_was_emitted() -> None:
    source = two_nodes()
    emit = Emitted()
    before = [Sample("a", 1.0, Quality.GOOD, 0, source_time_us=100)]
    before.append(Sample("b", 5.0, Quality.GOOD, 0, source_time_us=110))
    await source._emit_subscribed(emit, before)

    def old(binding: str, t: int, v: float) -> Sample:
        return Sample(binding, v, Quality.GOOD, 0, source_time_us=t, fields={"backfill": True})

    stub = HistoryStub(
        [
            HistoryResult("a", [old("a", 200, 2.0), old("a", 400, 4.0)]),
            HistoryResult("b", [old("b", 300, 6.0)]),
        ]
    )
    await source._backfill(stub, emit, source.config.nodes, 1_000)
    assert [it.start_us for it in stub.asked] == [101, 111]  # just after the last emitted
    assert [(s.binding, s.value) for s in emit.samples[2:]] == [("a", 2.0), ("b", 6.0), ("a", 4.0)]
    # The rebuilt subscription: a's initial value was backfilled, b's is the one from before
    # the loss; both are skipped. Newer values pass, and end the checking.
    live = [
        Sample("a", 4.0, Quality.GOOD, 0, source_time_us=400),
        Sample("b", 5.0, Quality.GOOD, 0, source_time_us=110),
        Sample("a", 4.0, Quality.GOOD, 0, source_time_us=500),
        Sample("b", 7.0, Quality.GOOD, 0, source_time_us=600),
    ]
    await source._emit_subscribed(emit, live)
    assert [(s.binding, s.source_time_us) for s in emit.samples[5:]] == [("a", 500), ("b", 600)]
    stats = source.stats
    assert (stats.backfilled, stats.backfill_duplicates, stats.backfill_failed) == (3, 2, 0)
    assert source._seen == {}


async def test_backfill_is_bounded_in_time_and_failure_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = two_nodes(timeout_s=0.05, backfill_timeout_s=0.1)
    emit = Emitted()
    await source._emit_subscribed(emit, [Sample("a", 1.0, Quality.GOOD, 0, source_time_us=100)])
    # b never had a value with a source time: it cannot be backfilled (and says so).
    await asyncio.wait_for(source._backfill(HistoryStub(None), emit, source.config.nodes, 1_000), 5)
    assert source.stats.backfill_failed == 2 and len(emit.samples) == 1
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "cannot backfill b (ns=2;s=B): no value with a source timestamp" in m for m in messages
    )
    assert any("cannot backfill a (ns=2;s=A)" in m and "backfill_timeout_s" in m for m in messages)
    # The value from before the loss is still not emitted twice.
    await source._emit_subscribed(emit, [Sample("a", 1.0, Quality.GOOD, 0, source_time_us=100)])
    assert len(emit.samples) == 1 and source.stats.backfill_duplicates == 1


async def test_backfill_off_tracks_and_skips_nothing() -> None:
    source = two_nodes(backfill=False)
    emit = Emitted()
    same = Sample("a", 1.0, Quality.GOOD, 0, source_time_us=100)
    await source._emit_subscribed(emit, [same, same])
    assert len(emit.samples) == 2 and source._last == {}


def test_sample_yaml_validates() -> None:
    path = Path(connectors.opcua.__file__).parent / "sample.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section in doc["sources"].values():
        cfg = OpcuaSourceConfig.model_validate({k: v for k, v in section.items() if k != "kind"})
        assert cfg.backfill is True


@pytest.mark.parametrize(
    ("exc", "link_lost"),
    [
        (ua.UaStatusCodeError(ua.StatusCodes.BadHistoryOperationUnsupported), False),
        (ua.UaStatusCodeError(ua.StatusCodes.BadServiceUnsupported), False),
        (TimeoutError(), False),  # a slow history, not a dead link
        (ua.UaStatusCodeError(ua.StatusCodes.BadSessionIdInvalid), True),
        (ConnectionResetError(104, "reset"), True),
    ],
)
async def test_a_failed_history_request_ends_the_session_only_when_the_link_is_gone(
    exc: BaseException, link_lost: bool
) -> None:
    class Session:
        async def history_read(self, params):
            raise exc

    client = OpcuaClient(OpcuaSourceConfig.model_validate(minimal()), "opcua test")
    client._client = SimpleNamespace(uaclient=Session())  # type: ignore[assignment]
    details = ua.ReadRawModifiedDetails()
    if link_lost:
        with pytest.raises(ConnectorError) as info:
            await client._history_call([], details, release=False)
        assert info.value.retryable
    else:
        why = await client._history_call([], details, release=False)
        assert isinstance(why, str) and why
    assert client._lost.is_set() is link_lost
    client._client = None
