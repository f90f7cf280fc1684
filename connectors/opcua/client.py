"""The OPC UA adapter: the only module that imports asyncua.

It connects with the configured security and identity, reads many nodes in chunks of
the server's ``MaxNodesPerRead``, runs one subscription whose handler turns
DataValues into :class:`~connectors.base.Sample` s in a bounded queue, reads raw
history for the backfill after a reconnect, writes acknowledge nodes, and translates
asyncua errors into :class:`ConnectorError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import Client, Server, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto import security_policies

from connectors.base import ConnectorError, Quality, Sample
from connectors.opcua.config import (
    MessageMode,
    NodeBinding,
    OpcuaSourceConfig,
    SecurityPolicy,
    TimestampChoice,
    TriggerConfig,
)
from connectors.ports import stop_server

__all__ = [
    "ConnectionLostError",
    "HistoryItem",
    "HistoryResult",
    "OpcuaClient",
    "SampleKey",
    "StationServer",
    "datavalue_to_sample",
    "device_time_us",
    "keep_newest",
    "sample_key",
    "stop_ua_server",
    "translate_error",
]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ABSENT_BEFORE = datetime(1601, 1, 2, tzinfo=UTC)  # OPC UA "no timestamp" is the FILETIME epoch
_S = ua.StatusCodes
# Trying again cannot help: the server rejects who we are or how we talk to it.
_NOT_RETRYABLE = frozenset(
    {
        _S.BadUserAccessDenied,
        _S.BadIdentityTokenRejected,
        _S.BadIdentityTokenInvalid,
        _S.BadSecurityChecksFailed,
        _S.BadSecurityPolicyRejected,
        _S.BadSecurityModeRejected,
        _S.BadCertificateInvalid,
        _S.BadCertificateUntrusted,
        _S.BadCertificateUriInvalid,
        _S.BadCertificateUseNotAllowed,
        _S.BadCertificateTimeInvalid,
        _S.BadCertificateRevoked,
        _S.BadApplicationSignatureInvalid,
        _S.BadUserSignatureInvalid,
    }
)
_MAX_RAW_TEXT = 200
# Our monitored-item client handles start far above asyncua's own counter (200, 201, …),
# which subscribe_events uses, so the two never collide.
_FIRST_HANDLE = 1_000_000
_RETRYABLE_EVENT_ERRORS = frozenset({"BadTimeout", "BadSessionClosed", "BadSessionIdInvalid"})
_HISTORY_READ_BIT = 1 << ua.AccessLevel.HistoryRead
# A history read refused with one of these says the session is gone, not the history.
_SESSION_GONE = frozenset(
    {
        _S.BadSessionClosed,
        _S.BadSessionIdInvalid,
        _S.BadSecureChannelIdInvalid,
        _S.BadSecureChannelClosed,
        _S.BadConnectionClosed,
    }
)
BACKFILL_FIELD = "backfill"
"""``Sample.fields`` key set (True) on every value read from the server's history."""


class ConnectionLostError(ConnectorError):
    """The session or transport went away (always retryable)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(where, message, retryable=True)


def status_name(code: int) -> str:
    """The OPC UA name of a status code (info bits ignored), e.g. ``BadSensorFailure``."""
    name = ua.StatusCode(code).name
    if name in ("Good", "Uncertain", "Bad"):
        base = ua.StatusCode(code & 0xFFFF0000).name
        name = base if base not in ("Good", "Uncertain", "Bad") else f"{name}(0x{code:08X})"
    return name


def translate_error(exc: BaseException, where: str) -> ConnectorError:
    """Map an asyncua/ua/socket error to a ConnectorError that says whether to retry."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, ua.UaStatusCodeError):
        code = int(exc.code)
        return ConnectorError(
            where, f"{status_name(code)}: {exc}", retryable=code not in _NOT_RETRYABLE
        )
    if isinstance(exc, TimeoutError):
        return ConnectorError(where, "request timed out", retryable=True)
    if isinstance(exc, FileNotFoundError):
        return ConnectorError(where, f"file not found: {exc.filename}", retryable=False)
    if isinstance(exc, OSError):
        return ConnectorError(where, f"connection failed: {exc!r}", retryable=True)
    if isinstance(exc, ua.UaError) and str(exc).startswith("No matching endpoints"):
        return ConnectorError(where, f"server offers no such endpoint: {exc}", retryable=False)
    if isinstance(exc, ua.UaError) and "certificate mismatch" in str(exc):
        return ConnectorError(where, f"not the pinned server certificate: {exc}", retryable=False)
    return ConnectorError(where, f"{type(exc).__name__}: {exc}", retryable=True)


def _time_us(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    if ts < _ABSENT_BEFORE:
        return None
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        return float(raw)
    return None


def datavalue_to_sample(
    binding: str,
    dv: ua.DataValue,
    choice: TimestampChoice,
    gateway_time_us: int,
    *,
    serial: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Sample:
    """Convert one DataValue to a Sample.

    Quality follows the status code's severity (good / uncertain / bad). The value is
    NaN when the quality is bad or the value is not a number (then the quality is bad,
    ``status`` is ``NonNumeric(<type>)`` and ``fields['raw']`` carries the value as
    text, so a context binding can still use a string). ``status`` is the status code
    name for any non-good sample. With ``choice=server`` the server timestamp is the
    sample's time: ``source_time_us`` is only set when the server sent none, and the
    device's own time is kept in ``fields['device_time_us']``.
    """
    code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
    status = ua.StatusCode(code)
    if status.is_good():
        quality = Quality.GOOD
    elif status.is_uncertain():
        quality = Quality.UNCERTAIN
    else:
        quality = Quality.BAD
    text = "" if quality is Quality.GOOD else status_name(code)
    extra: dict[str, Any] = dict(fields or {})
    raw = dv.Value.Value if dv.Value is not None else None
    number = _number(raw)
    if number is None and quality is not Quality.BAD:
        quality = Quality.BAD
        text = f"NonNumeric({type(raw).__name__})"
        if raw is not None:
            extra["raw"] = str(raw)[:_MAX_RAW_TEXT]
    value = math.nan if quality is Quality.BAD or number is None else number
    source_us = _time_us(dv.SourceTimestamp)
    server_us = _time_us(dv.ServerTimestamp)
    if choice == TimestampChoice.SERVER and server_us is not None:
        if source_us is not None:
            extra["device_time_us"] = source_us
        source_us = None
    return Sample(
        binding=binding,
        value=value,
        quality=quality,
        gateway_time_us=gateway_time_us,
        source_time_us=source_us,
        server_time_us=server_us,
        serial=serial,
        fields=extra,
        status=text,
    )


def device_time_us(sample: Sample) -> int | None:
    """The OPC UA source timestamp of a sample (µs), also with ``timestamp: server``; None if absent."""
    if sample.source_time_us is not None:
        return sample.source_time_us
    kept = sample.fields.get("device_time_us") if sample.fields else None
    return kept if isinstance(kept, int) else None


SampleKey = tuple[int, float | None, str]
"""What makes two samples of one binding the same value: source time (µs), value (None
for NaN), status."""


def sample_key(sample: Sample) -> SampleKey | None:
    """The :data:`SampleKey` of ``sample``; None without a source timestamp."""
    t = device_time_us(sample)
    if t is None:
        return None
    return (t, None if math.isnan(sample.value) else sample.value, sample.status)


def keep_newest(
    samples: Iterable[Sample], start_us: int, max_values: int
) -> tuple[list[Sample], bool, int]:
    """The newest ``max_values`` samples with a source time at or after ``start_us``, oldest first.

    Returns ``(kept, truncated, untimed)``: ``truncated`` when more samples were in the
    window than kept, ``untimed`` how many had no source timestamp (they cannot be placed
    in time, so they are left out). Exact repeats (same source time, value and status,
    e.g. a value a server returns again after a continuation point) count once. The sort
    is stable: values with the same source time keep the server's order.
    """
    timed: list[tuple[int, Sample]] = []
    seen: set[SampleKey] = set()
    untimed = 0
    for s in samples:
        key = sample_key(s)
        if key is None:
            untimed += 1
            continue
        if key[0] < start_us or key in seen:
            continue
        seen.add(key)
        timed.append((key[0], s))
    timed.sort(key=lambda ts: ts[0])
    kept = [s for _, s in timed[-max_values:]] if max_values > 0 else []
    return kept, len(timed) > len(kept), untimed


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """A node whose raw history to read: values with a source time at or after ``start_us``."""

    binding: str
    node: str
    start_us: int


@dataclass(slots=True)
class HistoryResult:
    """What the raw history of one node gave (see :meth:`OpcuaClient.read_history`).

    ``samples``: oldest first, mapped like subscription samples and marked
    ``fields['backfill']``. ``truncated``: the window held more values than were kept
    (or the server stopped making progress). ``untimed``: values left out for lack of
    a source timestamp. ``error``: why the history could not be read ('' when it was).
    """

    binding: str
    samples: list[Sample] = field(default_factory=list)
    truncated: bool = False
    untimed: int = 0
    error: str = ""


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a monitored item's notifications go."""

    binding: str | None = None  # a data node → a sample
    trigger: str | None = None  # a ready node → the trigger callback


class _Handler:
    """asyncua subscription handler: DataValues → samples in the bounded queue."""

    def __init__(self, owner: OpcuaClient) -> None:
        self.owner = owner

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        self.owner._on_datachange(data.monitored_item.ClientHandle, data.monitored_item.Value)

    def event_notification(self, event: Any) -> None:
        self.owner._on_event(getattr(event, "server_handle", None))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        code = status.Status
        if code is not None and not code.is_good():
            self.owner._mark_lost(f"subscription status {status_name(int(code.value))}")


class OpcuaClient:
    """One session to one OPC UA server; create a fresh instance per connection attempt.

    Samples from subscriptions land in :attr:`samples`, a bounded queue: when it is
    full the oldest sample is dropped and :attr:`dropped` counts it. :attr:`read_requests`
    counts Read service calls (one per chunk).
    """

    def __init__(self, config: OpcuaSourceConfig, where: str) -> None:
        self.config = config
        self.where = where
        self.samples: asyncio.Queue[Sample] = asyncio.Queue(maxsize=config.queue_size)
        self.dropped = 0
        self.read_requests = 0
        self.max_nodes_per_read = config.default_max_nodes_per_read
        self.max_nodes_per_history_read = config.default_max_nodes_per_read
        self.max_monitored_items_per_call = config.default_max_monitored_items_per_call
        self.lost_reason = ""
        self._lost = asyncio.Event()
        self._client: Client | None = None
        self._namespaces: list[str] | None = None
        self._node_ids: dict[str, ua.NodeId] = {}
        self._routes: dict[int, _Route] = {}
        self._event_routes: dict[int, str] = {}
        self._on_trigger: Callable[[str, Sample], None] | None = None
        self._write_types: dict[str, ua.VariantType] = {}
        self._subscription: Subscription | None = None
        self._first: dict[str, Sample] = {}  # per binding: its first sample (the initial value)
        self._first_wanted: set[str] = set()
        self._first_all = asyncio.Event()

    # -- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open the session (security, identity) and learn the server's MaxNodesPerRead."""
        cfg = self.config
        client = Client(
            cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.watchdog_interval_s
        )
        client.application_uri = cfg.application_uri
        client.name = client.description = "shopspc"
        try:
            if cfg.security_policy is SecurityPolicy.BASIC256SHA256:
                mode = (
                    ua.MessageSecurityMode.Sign
                    if cfg.security_mode is MessageMode.SIGN
                    else ua.MessageSecurityMode.SignAndEncrypt
                )
                assert cfg.certificate_file and cfg.private_key_file  # checked by the config
                for path in (
                    cfg.certificate_file,
                    cfg.private_key_file,
                    cfg.server_certificate_file,
                ):
                    if path and not os.path.exists(path):
                        raise FileNotFoundError(2, "no such file", path)
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    cfg.certificate_file,
                    cfg.private_key_file,
                    server_certificate=cfg.server_certificate_file,
                    mode=mode,
                )
            if cfg.username:
                client.set_user(cfg.username)
                if cfg.password_env:
                    password = os.environ.get(cfg.password_env)
                    if password is None:
                        raise ConnectorError(
                            self.where,
                            f"environment variable {cfg.password_env} (password) is not set",
                            retryable=False,
                        )
                    client.set_password(password)
            if cfg.user_certificate_file and cfg.user_private_key_file:
                await client.load_client_certificate(cfg.user_certificate_file)
                await client.load_private_key(cfg.user_private_key_file)
            client.connection_lost_callback = self._connection_lost
            await client.connect(auto_reconnect=False)
        except asyncio.CancelledError:
            client.disconnect_socket()
            raise
        except Exception as exc:
            client.disconnect_socket()
            raise translate_error(exc, self.where) from exc
        self._client = client
        try:
            await self._read_limits()
        except Exception:
            await self.close()
            raise

    async def _read_limits(self) -> None:
        """Read the OperationLimits we chunk by, once per session; absent or 0 → our defaults.

        ``MaxNodesPerHistoryReadData`` falls back to ``default_max_nodes_per_read``.
        """
        limits = (
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
        )
        dvs = await self._call(
            self._session().read_attributes([ua.NodeId(n) for n in limits], ua.AttributeIds.Value)
        )
        self._check_count("Read", len(dvs), len(limits))
        per_read, per_call, per_history = (_limit(dv) for dv in dvs)
        self.max_nodes_per_read = per_read or self.config.default_max_nodes_per_read
        self.max_nodes_per_history_read = per_history or self.config.default_max_nodes_per_read
        self.max_monitored_items_per_call = (
            per_call or self.config.default_max_monitored_items_per_call
        )

    async def close(self) -> None:
        """Close the session and socket; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if client.state is UaClientState.CONNECTED:
                    await client.disconnect()
                else:
                    # The transport is gone: skip CloseSession on a dead socket (asyncua would
                    # log a stack trace), just stop its tasks.
                    try:
                        await client.close_session()
                    except Exception:
                        log.debug("%s: close_session on a lost connection", self.where)
        except Exception:
            log.debug("%s: disconnect failed", self.where, exc_info=True)
        finally:
            client.disconnect_socket()

    async def _connection_lost(self, exc: Exception) -> None:
        self._mark_lost(f"connection lost: {exc!r}")

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    async def wait_lost(self) -> ConnectionLostError:
        """Wait until the connection is lost (keepalive, watchdog, failed publish)."""
        await self._lost.wait()
        return ConnectionLostError(self.where, self.lost_reason)

    def _session(self) -> Any:
        if self._client is None or self._lost.is_set():
            raise ConnectionLostError(self.where, self.lost_reason or "not connected")
        return self._client.uaclient

    async def _call(self, coro: Any) -> Any:
        """Await an asyncua request, translating its errors."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> ConnectorError:
        """Translate an error; a retryable one means this session is unusable."""
        err = translate_error(exc, self.where)
        if err.retryable:
            self._mark_lost(err.message)
        return err

    # -- node ids -----------------------------------------------------------

    async def resolve(self, text: str) -> ua.NodeId:
        """Parse a node id string; ``nsu=`` URIs are resolved with the namespace array."""
        cached = self._node_ids.get(text)
        if cached is not None:
            return cached
        try:
            parsed = ua.NodeId.from_string(text)
        except Exception as exc:
            raise ConnectorError(
                self.where, f"bad node id {text!r}: {exc}", retryable=False
            ) from exc
        uri = getattr(parsed, "NamespaceUri", None)
        if uri:
            if self._namespaces is None:
                ns_node = ua.NodeId(ua.ObjectIds.Server_NamespaceArray)
                got = await self._call(
                    self._session().read_attributes([ns_node], ua.AttributeIds.Value)
                )
                self._check_count("Read", len(got), 1)
                dv = got[0]
                self._namespaces = list(dv.Value.Value or []) if dv.Value is not None else []
            if uri not in self._namespaces:
                raise ConnectorError(
                    self.where,
                    f"namespace {uri!r} of {text!r} is not on the server",
                    retryable=False,
                )
            parsed = ua.NodeId(parsed.Identifier, self._namespaces.index(uri), parsed.NodeIdType)
        else:
            parsed = ua.NodeId(parsed.Identifier, parsed.NamespaceIndex, parsed.NodeIdType)
        self._node_ids[text] = parsed
        return parsed

    # -- reads and writes ---------------------------------------------------

    async def read_datavalues(self, nodes: Sequence[str]) -> list[ua.DataValue]:
        """Read the Value of many nodes, one Read request per ``max_nodes_per_read`` nodes."""
        return await self._read_attribute(nodes, ua.AttributeIds.Value)

    async def _read_attribute(
        self, nodes: Sequence[str], attribute: ua.AttributeIds
    ) -> list[ua.DataValue]:
        ids = [await self.resolve(n) for n in nodes]
        out: list[ua.DataValue] = []
        step = max(1, self.max_nodes_per_read)
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            self.read_requests += 1
            got = await self._call(self._session().read_attributes(chunk, attribute))
            self._check_count("Read", len(got), len(chunk))
            out.extend(got)
        return out

    def _check_count(self, service: str, got: int, sent: int) -> None:
        if got != sent:
            raise self._translate(
                ConnectorError(
                    self.where, f"{service}: {got} results for {sent} items", retryable=True
                )
            )

    async def read_samples(
        self,
        items: Sequence[tuple[str, str]],
        *,
        serial_node: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> list[Sample]:
        """Read ``(binding, node)`` items (and a serial node) together; one sample per item.

        The serial, when configured, is read in the same request and set on every
        sample (None if its read was not good).
        """
        nodes = [node for _, node in items]
        if serial_node is not None:
            nodes.insert(0, serial_node)
        dvs = await self.read_datavalues(nodes)
        now = _now_us()
        serial: str | None = None
        if serial_node is not None:
            sdv = dvs.pop(0)
            good = sdv.StatusCode is None or sdv.StatusCode.is_good()
            raw = sdv.Value.Value if sdv.Value is not None else None
            if good and raw is not None:
                serial = str(raw)
        choice = self.config.timestamp
        return [
            datavalue_to_sample(binding, dv, choice, now, serial=serial, fields=fields)
            for (binding, _), dv in zip(items, dvs, strict=True)
        ]

    async def write(self, node: str, value: bool | int | float | str) -> None:
        """Write a value (in the node's own data type) to a node; raises ConnectorError."""
        node_id = await self.resolve(node)
        vtype = self._write_types.get(node)
        if vtype is None:
            got = await self._call(
                self._session().read_attributes([node_id], ua.AttributeIds.Value)
            )
            self._check_count("Read", len(got), 1)
            dv = got[0]
            current = dv.Value
            if current is not None and current.Value is not None:
                vtype = current.VariantType
            else:
                vtype = _default_variant_type(value)
            self._write_types[node] = vtype
        # No timestamps or status: many PLCs reject writes that carry them.
        dv = ua.DataValue(ua.Variant(_coerce(value, vtype), vtype), StatusCode=None)
        results = await self._call(
            self._session().write_attributes([node_id], [dv], ua.AttributeIds.Value)
        )
        self._check_count("Write", len(results), 1)
        code = results[0]
        if not code.is_good():
            raise ConnectorError(
                self.where, f"write {node}: {status_name(int(code.value))}", retryable=False
            )

    # -- history ------------------------------------------------------------------

    async def first_samples(self, bindings: Sequence[str], timeout: float) -> dict[str, Sample]:
        """The first sample of each subscribed binding (the server's initial value on subscribe).

        Waits up to ``timeout`` for all of them (but not for items the server refused to
        monitor) and returns those that came (they stay in :attr:`samples` too). Their
        source times are the device's clock at the moment the subscription took over, so
        a history read up to them misses nothing whatever the skew between the device's
        and the gateway's clocks.
        """
        monitored = {route.binding for route in self._routes.values()}
        wanted = set(bindings) & monitored
        if not wanted <= self._first.keys():
            self._first_wanted = wanted
            self._first_all.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._first_all.wait()
            self._first_wanted = set()
        return {b: self._first[b] for b in bindings if b in self._first}

    async def read_history(
        self, items: Sequence[HistoryItem], *, end_us: int, max_values: int
    ) -> list[HistoryResult]:
        """Read the raw history of many nodes; one result per item, in the items' order.

        For each item: the newest ``max_values`` values with a source time from its
        ``start_us`` up to ``end_us``, oldest first (see :func:`keep_newest`). First the
        nodes' ``AccessLevel`` is read (chunked by MaxNodesPerRead): a node without the
        HistoryRead bit has no history (some servers answer such a read with an empty
        Good result, which would look like "nothing missed"). Then HistoryRead with
        ``ReadRawModifiedDetails`` (raw, no bounding values, both timestamps), newest
        first from ``end_us`` back to the chunk's earliest start, ``NumValuesPerNode``
        = ``max_values + 1`` so a cut shows, chunked by MaxNodesPerHistoryReadData.
        Continuation points are followed until a node has more than ``max_values``
        values or reached its start; ones still open are then released.

        A bad status for a node, or a failed or refused request (for the nodes it
        carried), is that node's ``error``: it never ends the session. Only a lost
        session raises (:class:`ConnectionLostError`).
        """
        results = {it.binding: HistoryResult(it.binding) for it in items}
        todo = [it for it in items if it.start_us <= end_us]
        if todo:
            levels = await self._read_attribute(
                [it.node for it in todo], ua.AttributeIds.AccessLevel
            )
            readable: list[HistoryItem] = []
            for it, dv in zip(todo, levels, strict=True):
                error = _history_access_error(dv)
                if error:
                    results[it.binding].error = error
                else:
                    readable.append(it)
            pages: dict[str, list[ua.DataValue]] = {it.binding: [] for it in readable}
            stalled: set[str] = set()
            step = max(1, self.max_nodes_per_history_read)
            for start in range(0, len(readable), step):
                chunk = readable[start : start + step]
                await self._history_chunk(chunk, end_us, max_values, pages, results, stalled)
            now = _now_us()
            choice = self.config.timestamp
            flag = {BACKFILL_FIELD: True}
            for it in readable:
                result = results[it.binding]
                if result.error:
                    continue
                mapped = (
                    datavalue_to_sample(it.binding, dv, choice, now, fields=flag)
                    for dv in pages[it.binding]
                )
                kept, truncated, untimed = keep_newest(mapped, it.start_us, max_values)
                result.samples = kept
                result.truncated = truncated or it.binding in stalled
                result.untimed = untimed
        return [results[it.binding] for it in items]

    async def _history_chunk(
        self,
        chunk: Sequence[HistoryItem],
        end_us: int,
        max_values: int,
        pages: dict[str, list[ua.DataValue]],
        results: dict[str, HistoryResult],
        stalled: set[str],
    ) -> None:
        """One chunk of nodes: HistoryRead until every node is done, then release what is open."""
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False,
            StartTime=_datetime(end_us),  # StartTime after EndTime: newest first
            EndTime=_datetime(min(it.start_us for it in chunk)),
            NumValuesPerNode=max_values + 1,
            ReturnBounds=False,
        )
        pending: list[tuple[HistoryItem, bytes | None]] = [(it, None) for it in chunk]
        release: list[tuple[HistoryItem, bytes]] = []
        while pending:
            ids = [
                ua.HistoryReadValueId(NodeId=await self.resolve(it.node), ContinuationPoint=cp)
                for it, cp in pending
            ]
            got = await self._history_call(ids, details, release=False)
            if isinstance(got, str) or len(got) != len(ids):
                why = (
                    got
                    if isinstance(got, str)
                    else f"HistoryRead: {len(got)} results for {len(ids)} nodes"
                )
                for it, _ in pending:
                    results[it.binding].error = why
                return  # open continuation points die with the failed request or the session
            following: list[tuple[HistoryItem, bytes | None]] = []
            for (it, previous), result in zip(pending, got, strict=True):
                code = result.StatusCode
                if code is not None and code.is_bad():
                    results[it.binding].error = status_name(int(code.value))
                    continue
                page = list(getattr(result.HistoryData, "DataValues", None) or [])
                pages[it.binding].extend(page)
                cp = result.ContinuationPoint or None
                if cp is None:
                    continue
                in_window = sum(
                    1
                    for dv in pages[it.binding]
                    if (_time_us(dv.SourceTimestamp) or -1) >= it.start_us
                )
                reached = any(
                    (t := _time_us(dv.SourceTimestamp)) is not None and t < it.start_us
                    for dv in page
                )
                if cp == previous:
                    stalled.add(it.binding)  # the server makes no progress: stop, call it cut
                    release.append((it, cp))
                elif in_window > max_values or reached:
                    release.append((it, cp))
                else:
                    following.append((it, cp))
            pending = following
        if release:
            ids = [
                ua.HistoryReadValueId(NodeId=await self.resolve(it.node), ContinuationPoint=cp)
                for it, cp in release
            ]
            got = await self._history_call(ids, details, release=True)
            if isinstance(got, str):
                log.debug("%s: releasing history continuation points: %s", self.where, got)

    async def _history_call(
        self, ids: list[ua.HistoryReadValueId], details: ua.ReadRawModifiedDetails, *, release: bool
    ) -> list[ua.HistoryReadResult] | str:
        """One HistoryRead request: its results, or why it failed (a lost session raises)."""
        params = ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ReleaseContinuationPoints=release,
            NodesToRead=ids,
        )
        session = self._session()  # raises when the connection is already gone
        try:
            return list(await session.history_read(params))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A refused or slow history read is the history's problem, not the link's: the
            # session stays. A broken socket is the link's.
            broken = isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
            if broken or (isinstance(exc, ua.UaStatusCodeError) and int(exc.code) in _SESSION_GONE):
                raise self._translate(exc) from exc
            if self._lost.is_set():
                raise ConnectionLostError(self.where, self.lost_reason) from exc
            return translate_error(exc, self.where).message

    # -- subscriptions --------------------------------------------------------

    async def subscribe(
        self,
        bindings: Sequence[NodeBinding],
        triggers: Sequence[TriggerConfig],
        on_trigger: Callable[[str, Sample], None],
    ) -> list[Sample]:
        """Create one subscription with a monitored item per binding and per trigger ready node.

        Items use queue size > 1, ``DiscardOldest`` and a data-change filter with trigger
        StatusValueTimestamp and no deadband (unless configured), so a repeated identical
        value with a new source timestamp is a new sample. Returns a bad sample for each
        binding whose item the server refused (with the status name).
        """
        if not bindings and not triggers:
            return []
        self._on_trigger = on_trigger
        self._session()  # raises when the connection is already gone
        assert self._client is not None
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.config.publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=self._client.get_keepalive_count(
                self.config.publishing_interval_ms
            ),
            MaxNotificationsPerPublish=10_000,
            PublishingEnabled=True,
            Priority=0,
        )
        sub: Subscription = await self._call(
            self._client.create_subscription(params, _Handler(self))
        )
        self._subscription = sub
        requests: list[ua.MonitoredItemCreateRequest] = []
        what: list[_Route] = []
        handle = _FIRST_HANDLE
        for b in bindings:
            handle += 1
            requests.append(
                await self._item(handle, b.node, b.sampling_interval_ms, b.queue_size, b.deadband)
            )
            what.append(_Route(binding=b.id))
        for t in triggers:
            if t.ready_node is None:
                continue
            handle += 1
            requests.append(
                await self._item(handle, t.ready_node, t.sampling_interval_ms, 10, None)
            )
            what.append(_Route(trigger=t.id))
        for req, route in zip(requests, what, strict=True):
            self._routes[req.RequestedParameters.ClientHandle] = route
        results: list[int | ua.StatusCode] = []
        step = max(1, self.max_monitored_items_per_call)
        for start in range(0, len(requests), step):
            chunk = requests[start : start + step]
            got = await self._call(sub.create_monitored_items(chunk))
            self._check_count("CreateMonitoredItems", len(got), len(chunk))
            results.extend(got)
        failed: list[Sample] = []
        now = _now_us()
        for req, route, result in zip(requests, what, results, strict=True):
            if isinstance(result, ua.StatusCode):
                name = status_name(int(result.value))
                node = req.ItemToMonitor.NodeId.to_string()
                log.warning("%s: cannot monitor %s: %s", self.where, node, name)
                self._routes.pop(req.RequestedParameters.ClientHandle, None)
                if route.binding is not None:
                    failed.append(Sample(route.binding, math.nan, Quality.BAD, now, status=name))
                else:
                    raise ConnectorError(
                        self.where,
                        f"trigger {route.trigger}: ready node {node}: {name}",
                        retryable=False,
                    )
        for t in triggers:
            if t.event_node is not None:
                await self._subscribe_events(sub, t)
        return failed

    async def _subscribe_events(self, sub: Subscription, trigger: TriggerConfig) -> None:
        assert trigger.event_node is not None
        source = await self.resolve(trigger.event_node)
        event_type = await self.resolve(trigger.event_type)
        try:
            handle = await sub.subscribe_events(source, event_type)
        except ua.UaStatusCodeError as exc:
            name = status_name(int(exc.code))
            raise ConnectorError(
                self.where,
                f"trigger {trigger.id}: events of {trigger.event_node}: {name}",
                retryable=name in _RETRYABLE_EVENT_ERRORS,
            ) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        self._event_routes[int(handle)] = trigger.id

    async def _item(
        self, handle: int, node: str, sampling_ms: float, queue_size: int, deadband: float | None
    ) -> ua.MonitoredItemCreateRequest:
        flt = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValueTimestamp,
            DeadbandType=ua.DeadbandType.Absolute if deadband else ua.DeadbandType.None_,
            DeadbandValue=float(deadband or 0.0),
        )
        mparams = ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=sampling_ms,
            Filter=flt,
            QueueSize=queue_size,
            DiscardOldest=True,
        )
        rv = ua.ReadValueId(NodeId=await self.resolve(node), AttributeId=ua.AttributeIds.Value)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=rv,
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=mparams,
        )

    def _on_event(self, server_handle: int | None) -> None:
        trigger = self._event_routes.get(server_handle) if server_handle is not None else None
        if trigger is None and len(self._event_routes) == 1:
            # The event outran the CreateMonitoredItems response; only one place it can go.
            trigger = next(iter(self._event_routes.values()))
        if trigger is None or self._lost.is_set() or self._on_trigger is None:
            return
        self._on_trigger(
            trigger, Sample(trigger, 1.0, Quality.GOOD, _now_us(), fields={"event": True})
        )

    def _on_datachange(self, handle: int, dv: ua.DataValue | None) -> None:
        route = self._routes.get(handle)
        if route is None or self._lost.is_set():
            return
        dv = dv if dv is not None else ua.DataValue(StatusCode=ua.StatusCode(_S.BadNoData))
        if route.binding is not None:
            sample = datavalue_to_sample(route.binding, dv, self.config.timestamp, _now_us())
            if route.binding not in self._first:
                self._first[route.binding] = sample
                if self._first_wanted and self._first_wanted <= self._first.keys():
                    self._first_all.set()
            self._put(sample)
        elif route.trigger is not None and self._on_trigger is not None:
            sample = datavalue_to_sample(route.trigger, dv, self.config.timestamp, _now_us())
            self._on_trigger(route.trigger, sample)

    def _put(self, sample: Sample) -> None:
        try:
            self.samples.put_nowait(sample)
        except asyncio.QueueFull:
            # Overflow policy: drop the oldest, keep the newest (the line keeps running).
            self.samples.get_nowait()
            self.dropped += 1
            self.samples.put_nowait(sample)


def _limit(dv: ua.DataValue) -> int | None:
    """A positive OperationLimits value, or None (bad status, absent, or 0 = no limit)."""
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None
    value = _number(dv.Value.Value if dv.Value is not None else None)
    return int(value) if value is not None and value >= 1 else None


def _history_access_error(dv: ua.DataValue) -> str:
    """Why a node's AccessLevel (as read) rules out a history read; '' when it does not."""
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return f"AccessLevel: {status_name(int(dv.StatusCode.value))}"
    level = _number(dv.Value.Value if dv.Value is not None else None)
    if level is None or not int(level) & _HISTORY_READ_BIT:
        return "no history (AccessLevel without HistoryRead)"
    return ""


def _default_variant_type(value: bool | int | float | str) -> ua.VariantType:
    if isinstance(value, bool):
        return ua.VariantType.Boolean
    if isinstance(value, int):
        return ua.VariantType.Int32
    if isinstance(value, float):
        return ua.VariantType.Double
    return ua.VariantType.String


def _coerce(value: bool | int | float | str, vtype: ua.VariantType) -> Any:
    if vtype is ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if vtype is ua.VariantType.String:
        return str(value)
    if vtype.name.startswith(("Int", "UInt", "Byte", "SByte")):
        return int(value)
    return value


# -- for the simulated station (connectors/opcua/station.py) -----------------------------
# `shopspc simulate` serves an inspection station; this keeps asyncua's server API here too.

_SIM_TYPES = {
    bool: ua.VariantType.Boolean,
    int: ua.VariantType.Int32,
    float: ua.VariantType.Double,
    str: ua.VariantType.String,
}


class StationServer:
    """A small asyncua server for the simulated station: one object of named variables.

    Variables are ``ns=<namespace of namespace_uri>;s=<name>``; their data type
    follows the initial value (bool, int, float, str).
    """

    def __init__(self, url: str, namespace_uri: str, name: str = "shopspc simulated station"):
        self.url = url
        self.namespace_uri = namespace_uri
        self.name = name
        self.namespace = 0
        self._server: Any = None

    async def start(
        self, obj: str, variables: Mapping[str, bool | int | float | str], writable: Sequence[str]
    ) -> None:
        """Create the object ``obj`` with ``variables`` (name → initial value) and listen."""
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(self.name)
        self.namespace = await server.register_namespace(self.namespace_uri)
        parent = await server.nodes.objects.add_object(ua.NodeId(obj, self.namespace), obj)
        for name, initial in variables.items():
            node = await parent.add_variable(
                ua.NodeId(name, self.namespace),
                name.rsplit(".", 1)[-1],
                initial,
                _SIM_TYPES[type(initial)],
            )
            if name in writable:
                await node.set_writable()
        try:
            await server.start()  # on failure asyncua stops what it started
        except OSError as exc:
            raise ConnectorError(
                f"opcua station {self.url}", f"cannot listen: {exc}", retryable=False
            ) from exc
        except asyncio.CancelledError:
            # Cancelled while starting (a demo stopped at once): asyncua stops nothing then,
            # and its listener may already accept.
            await stop_ua_server(server)
            raise
        self._server = server

    async def write(
        self, values: Mapping[str, bool | int | float | str], source_time: datetime | None = None
    ) -> None:
        """Write values (name → value, in each variable's type) with one source timestamp."""
        now = datetime.now(UTC)
        for name, value in values.items():
            dv = ua.DataValue(
                ua.Variant(value, _SIM_TYPES[type(value)]),
                SourceTimestamp=source_time or now,
                ServerTimestamp=now,
            )
            await self._server.write_attribute_value(ua.NodeId(name, self.namespace), dv)

    def read(self, name: str) -> Any:
        """The current value of a variable (as the server holds it, no request)."""
        return self._server.read_attribute_value(ua.NodeId(name, self.namespace)).Value.Value

    async def stop(self) -> None:
        """Stop listening and close every session; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await stop_ua_server(server)


async def stop_ua_server(server: Server) -> None:
    """Stop an asyncua server at once, closing every connection (see :func:`stop_server`)."""
    # The server's clock task sleeps 1 s between ticks and stop() waits for it.
    clock = server.iserver.time_task
    if clock is not None:
        server.iserver._time_task_stop = True
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        server.iserver.time_task = None
    bserver = server.bserver
    listener = bserver._server if bserver is not None else None  # asyncua's asyncio server
    await stop_server(listener, server.stop)
