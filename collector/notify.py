"""Alarm delivery to MES: drain an outbox stream in order to MQTT or to an HTTP webhook.

The pipeline commits alarm events to the durable outbox (one transaction with
the alarm state) and then calls :meth:`MqttAlarmPublisher.notify` /
:meth:`WebhookNotifier.notify`; the notifier wakes at once (no polling on the
hot path), reads the stream in ``seq`` order and removes an entry only after
the far side confirmed it (MQTT PUBACK, HTTP 2xx). Delivery is therefore at
least once and in order: after a lost connection or a crash the unconfirmed
entries are sent again, so subscribers de-duplicate on (``alarm_id``, ``event``).

Entries are JSON envelopes::

    {"topic": "shopspc/v1/alarm/s/a/l/st/c", "qos": 1, "retain": false,
     "payload": {"schema": "shopspc.alarm/1", "alarm_id": "...", "event": "raised", ...}}

The payload is sent compactly serialised (UTF-8). The webhook stream may hold
such envelopes (topic, qos and retain are then ignored) or the bare payload
objects (what ``collector.alarms`` appends there). An envelope that cannot be read, and a message the far side
refuses for good (MQTT PUBACK reason ≥ 0x80 such as "not authorised"; HTTP 4xx
other than 408/429), is moved to the outbox's dead letters with the reason;
delivery goes on with the next entry.

Both notifiers share one drain loop (:class:`_Drainer`): connect (capped,
jittered ``Backoff`` on failure; losing and regaining the far side logged
once each way), deliver batches, settle them in the outbox, and on stop drain
what is pending within ``stop_drain_s`` before closing.

Webhook signature: see :func:`connectors.webhook.verify_signature`
(re-exported here for receivers written in Python).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from collector.outbox import Entry, Outbox
from collector.timefmt import rfc3339 as rfc3339_us
from connectors.base import Backoff, ConnectorError
from connectors.mqtt.client import MqttLink, Outgoing, PublishRefusedError
from connectors.mqtt.config import MqttPublisherConfig
from connectors.webhook.client import WebhookClient, verify_signature
from connectors.webhook.config import WebhookConfig

__all__ = [
    "Envelope",
    "MqttAlarmPublisher",
    "NotifyStats",
    "WebhookNotifier",
    "compact_json",
    "encode_envelope",
    "rfc3339_us",
    "verify_signature",
]

log = logging.getLogger(__name__)

GATEWAY_SCHEMA = "shopspc.gateway/1"


@dataclass
class NotifyStats:
    """Counters and state of a notifier, for the gateway's self-metrics.

    ``pending`` is the stream's outbox backlog after the last round;
    ``last_latency_s`` the time from committing the last delivered entry to its
    confirmation (PUBACK or HTTP 2xx).
    """

    state: str = "starting"  # starting, connected, disconnected, stopped
    published: int = 0
    errors: int = 0
    reconnects: int = 0
    pending: int = 0
    dead_lettered: int = 0
    commands: int = 0
    bad_commands: int = 0
    command_errors: int = 0
    last_latency_s: float | None = None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded outbox entry: where to publish and the compact JSON body."""

    seq: int
    topic: str
    qos: int
    retain: bool
    body: bytes
    payload: dict[str, Any]


def compact_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON as the outbox and the wire carry it (orjson: the alarm transaction
    encodes every payload about four times); numpy scalars as numbers, NaN as null."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=str)


def encode_envelope(
    topic: str, payload: dict[str, Any], *, retain: bool = False, qos: int = 1
) -> bytes:
    """An outbox entry for the notifiers (what the pipeline appends for each alarm event/state)."""
    return compact_json({"topic": topic, "qos": qos, "retain": retain, "payload": payload})


def _json_object(entry: Entry) -> dict[str, Any]:
    try:
        doc = orjson.loads(entry.payload)
    except ValueError as exc:  # orjson.JSONDecodeError, also for bad UTF-8
        raise ValueError(f"envelope is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("envelope is not a JSON object")
    return doc


def _decode(entry: Entry) -> Envelope:
    """Decode an envelope; ValueError says what is wrong with it."""
    doc = _json_object(entry)
    topic, qos, retain, payload = (doc.get(k) for k in ("topic", "qos", "retain", "payload"))
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        raise ValueError(f"envelope topic {topic!r} is not a topic name")
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise ValueError(f"envelope qos {qos!r} is not 0, 1 or 2")
    if not isinstance(retain, bool):
        raise ValueError(f"envelope retain {retain!r} is not a boolean")
    if not isinstance(payload, dict):
        raise ValueError("envelope payload is not a JSON object")
    return Envelope(entry.seq, topic, qos, retain, compact_json(payload), payload)


def _decode_payload(entry: Entry) -> Envelope:
    """For the webhook: an envelope's payload, or the entry itself when it is a bare payload."""
    doc = _json_object(entry)
    inner = doc.get("payload")
    if isinstance(inner, dict) and isinstance(doc.get("topic"), str):
        doc = inner
    return Envelope(entry.seq, "", 1, False, compact_json(doc), doc)


def _secret_from_env(name: str | None, where: str, what: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ConnectorError(
            where, f"environment variable {name} ({what}) is not set", retryable=False
        )
    return value


# -- the shared drain loop -----------------------------------------------------------------


@dataclass
class _Delivery:
    """What became of a batch: confirmed seqs, refused seqs with reasons, and a retryable error
    that stopped the batch (the entries neither confirmed nor refused stay pending)."""

    delivered: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    error: ConnectorError | None = None


async def _ready(result: _Delivery) -> _Delivery:
    return result


class _Transport(Protocol):
    where: str
    # True when open() talks to the far side (MQTT); False when only a delivery proves it (HTTP).
    proves_link: bool

    #: rounds in flight at once (sent, confirmation pending)
    window: int

    async def open(self) -> None: ...

    def check(self) -> None: ...

    def send(self, envelopes: Sequence[Envelope]) -> Callable[[], Awaitable[_Delivery]]:
        """Start delivering (MQTT: the messages are written now); await the result's call
        for the outcome. Called in seq order; never raises a retryable error (the outcome
        carries it)."""
        ...

    async def reset(self) -> None: ...

    async def close(self, graceful: bool) -> None: ...


class _Drainer:
    """Drains one outbox stream, in seq order, through a transport (shared by both notifiers)."""

    def __init__(
        self,
        outbox: Outbox,
        stream: str,
        transport: _Transport,
        stats: NotifyStats,
        *,
        batch: int,
        backoff: Backoff,
        stop_drain_s: float,
        decode: Callable[[Entry], Envelope] = _decode,
    ) -> None:
        self.decode = decode
        self.outbox = outbox
        self.stream = stream
        self.transport = transport
        self.stats = stats
        self.batch = batch
        self.backoff = backoff
        self.stop_drain_s = stop_drain_s
        self._aio = outbox.aio
        self._wake = asyncio.Event()
        self._wake.set()  # the first round looks at what is already pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up: bool | None = None  # None: never connected yet
        # rounds sent and not yet settled, oldest first, and the last seq sent (one drain)
        self._flight: collections.deque[asyncio.Task[None]] = collections.deque()
        self._sent = 0
        self._serving = False  # a drain is running and may be pumped by notify()

    def notify(self) -> None:
        """Entries were committed: in the loop, send them now; from another thread, wake
        the drain loop (thread-safe; cheap when it is already awake)."""
        loop = self._loop
        if loop is None:
            self._wake.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
            if self._serving:
                # publish in the committing call itself: no wait for the drain task's turn,
                # which under load comes only after the loop has read and judged more input
                try:
                    self.transport.check()
                    self._pump()
                except Exception as exc:  # the drain loop meets it again and handles it
                    log.debug("%s: immediate publish skipped: %s", self.transport.where, exc)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody to wake
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then drain within ``stop_drain_s`` and close."""
        self._loop = asyncio.get_running_loop()
        relay = asyncio.create_task(self._relay(stop))
        graceful = False
        try:
            await self._serve(stop)
            # HTTP has no connection to prove: try the pending events unless the last try failed.
            if self._up or (self._up is None and not self.transport.proves_link):
                try:
                    async with asyncio.timeout(self.stop_drain_s):
                        await self._drain(stop, until_empty=True)
                except (TimeoutError, ConnectorError) as exc:
                    log.warning(
                        "%s: stopped with alarms still pending in outbox stream %r: %s",
                        self.transport.where,
                        self.stream,
                        exc if str(exc) else "drain deadline reached",
                    )
                graceful = True
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            try:
                await self.transport.close(graceful)
            finally:
                self.stats.state = "stopped"

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.transport.open()
                if self.transport.proves_link:
                    self._mark_up()
                await self._drain(stop, until_empty=False)
            except ConnectorError as exc:
                if not exc.retryable:
                    self.stats.errors += 1
                    self.stats.last_error = str(exc)
                    log.error("%s: giving up: %s", self.transport.where, exc)
                    raise
                self._mark_down(exc)
                await self.transport.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.backoff.next_delay())

    async def _drain(self, stop: asyncio.Event, *, until_empty: bool) -> None:
        """Deliver rounds in seq order, up to ``transport.window`` of them at once.

        A round is sent while earlier ones still wait for their confirmations
        (MQTT: PUBACKs come back in order), so a new alarm does not wait for the
        previous round's round trip; rounds are settled in the outbox in order,
        and the first failed one ends the drain (the rest are sent again after
        the reconnect: at least once, in order).
        """
        flight = self._flight = collections.deque()
        self._sent = 0
        self._serving = not until_empty
        try:
            while True:
                self.transport.check()
                while flight and flight[0].done():
                    flight.popleft().result()  # raises the round's error
                if stop.is_set() and not until_empty:
                    self._serving = False
                    while flight:  # what was sent is settled, not sent again at the final drain
                        await asyncio.wait({flight[0]})
                        flight.popleft().result()
                    return
                if len(flight) >= self.transport.window:
                    await asyncio.wait({flight[0]})
                    continue
                self._wake.clear()  # a notify() from here on triggers another round
                if self._pump():
                    continue
                if flight:  # the oldest round's answer or a new alarm, whichever is first
                    wake = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({flight[0], wake}, return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    continue
                if until_empty:
                    return
                due = await self._aio.next_due(self.stream, in_order=True)
                if due is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, due - time.time()))
        finally:
            self._serving = False
            for task in flight:
                task.cancel()
            for task in flight:
                with contextlib.suppress(BaseException):
                    await task

    def _pump(self) -> bool:
        """Send the pending entries after those in flight, as the window allows; True if any.

        Reads on the loop (a few small rows): no worker-thread hop between an
        alarm's commit and its publish (that hop waits for the GIL under load).
        """
        flight = self._flight
        any_sent = False
        while len(flight) < self.transport.window:
            entries = self.outbox.peek(self.stream, self.batch, in_order=True, after=self._sent)
            if not entries:
                break
            self._sent = entries[-1].seq
            flight.append(self._send(entries, flight[-1] if flight else None))
            any_sent = True
        return any_sent

    def _send(self, entries: list[Entry], before: asyncio.Task[None] | None) -> asyncio.Task[None]:
        """Send a round now (in seq order) and return the task that settles it."""
        envelopes: list[Envelope] = []
        bad: dict[int, str] = {}
        for e in entries:
            try:
                envelopes.append(self.decode(e))
            except ValueError as exc:
                bad[e.seq] = str(exc)
        outcome = self.transport.send(envelopes) if envelopes else None
        return asyncio.ensure_future(self._round(entries, outcome, bad, before))

    async def _round(
        self,
        entries: list[Entry],
        outcome: Callable[[], Awaitable[_Delivery]] | None,
        bad: dict[int, str],
        before: asyncio.Task[None] | None,
    ) -> None:
        result = await outcome() if outcome is not None else _Delivery()
        if before is not None:
            await before  # settled in order; an earlier failure fails this round too
        result.refused.update(bad)
        if result.delivered:
            last = max(result.delivered)
            created = next(e.created for e in entries if e.seq == last)
            self.stats.last_latency_s = max(0.0, time.time() - created)
        error = result.error
        done = set(result.delivered) | result.refused.keys()
        head = next((e.seq for e in entries if e.seq not in done), None)
        self.stats.pending = await asyncio.to_thread(
            self._settle, result.delivered, result.refused, head if error else None, error
        )
        self.stats.published += len(result.delivered)
        self.stats.dead_lettered += len(result.refused)
        for seq, reason in sorted(result.refused.items()):
            log.error(
                "%s: outbox stream %r entry %d refused, moved to dead letters: %s",
                self.transport.where,
                self.stream,
                seq,
                reason,
            )
        if error is not None:
            raise error
        if result.delivered or result.refused:
            self._mark_up()

    def _settle(
        self,
        delivered: list[int],
        refused: dict[int, str],
        head: int | None,
        error: ConnectorError | None,
    ) -> int:
        """In a worker thread: ack, dead-letter, note the error on the head entry; the backlog."""
        if delivered:
            self.outbox.ack(self.stream, delivered)
        for seq, reason in refused.items():
            self.outbox.dead_letter(self.stream, [seq], reason)
        if head is not None and error is not None:
            # Due again at once: the reconnect Backoff paces the retry; this records attempts.
            self.outbox.retry_later(self.stream, [head], 0.0, error.message)
        rows = self.outbox.query("SELECT pending FROM streams WHERE name=?", (self.stream,))
        return int(rows[0][0]) if rows else 0

    def _mark_up(self) -> None:
        self.backoff.reset()
        if self._up is False:
            self.stats.reconnects += 1
            log.info("%s: reachable again, delivering alarms", self.transport.where)
        elif self._up is None:
            log.info("%s: connected", self.transport.where)
        self._up = True
        self.stats.state = "connected"

    def _mark_down(self, exc: ConnectorError) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        if self._up is not False:
            log.warning(
                "%s: lost (%s); alarms wait in outbox stream %r",
                self.transport.where,
                exc.message,
                self.stream,
            )
        self._up = False
        self.stats.state = "disconnected"


# -- MQTT ------------------------------------------------------------------------------------


class _MqttTransport:
    proves_link = True
    window = 32  # PUBACKs come back in order: later rounds go out meanwhile

    def __init__(self, owner: MqttAlarmPublisher) -> None:
        self.owner = owner
        self.where = f"mqtt alarms {owner.cfg.host}:{owner.cfg.port}"
        self._link: MqttLink | None = None
        self._lost: str | None = None
        self._sub_refused_logged = False

    async def open(self) -> None:
        o = self.owner
        await self.reset()
        self._lost = None
        will = Outgoing(o.status_topic, o.status_payload("offline"), 1, True)
        link = MqttLink(
            o.cfg,
            o.client_id,
            password=o.password,
            will=will,
            on_message=o._on_message,
            on_lost=self._on_lost,
        )
        self._link = link
        await link.connect()
        await link.publish_many([Outgoing(o.status_topic, o.status_payload("online"), 1, True)])
        try:
            await link.subscribe(o.command_filter, 1)
        except ConnectorError as exc:
            if exc.retryable:
                raise
            if not self._sub_refused_logged:  # an ACL without commands is a valid set-up
                self._sub_refused_logged = True
                log.error("%s: operator commands unavailable: %s", self.where, exc.message)

    def _on_lost(self, reason: str) -> None:
        self._lost = reason
        self.owner.notify()

    def check(self) -> None:
        if self._lost is not None or self._link is None:
            raise ConnectorError(self.where, self._lost or "not connected", retryable=True)

    def send(self, envelopes: Sequence[Envelope]) -> Callable[[], Awaitable[_Delivery]]:
        assert self._link is not None
        seqs = [e.seq for e in envelopes]
        msgs = [Outgoing(e.topic, e.body, e.qos, e.retain) for e in envelopes]
        try:
            sent = self._link.publish_nowait(msgs)  # written to the socket now
        except ConnectorError as exc:
            if not exc.retryable:
                raise
            failed = _Delivery(error=exc)
            return lambda: _ready(failed)

        async def confirmed() -> _Delivery:
            try:
                await sent.wait()
            except PublishRefusedError as exc:
                refused = {seqs[i]: f"broker refused: {r}" for i, r in exc.refused.items()}
                return _Delivery([s for s in seqs if s not in refused], refused)
            except ConnectorError as exc:
                if not exc.retryable:
                    raise
                return _Delivery(error=exc)
            return _Delivery(seqs)

        return confirmed

    async def reset(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def close(self, graceful: bool) -> None:
        link, self._link = self._link, None
        if link is not None:
            payload = self.owner.status_payload("offline") if graceful else None
            await link.close(payload)


class MqttAlarmPublisher:
    """Publishes the alarm outbox stream, the retained gateway status, and takes ack commands.

    On connect it publishes ``{prefix}/gateway/{gateway_id}/status`` retained
    ``online`` (the Will is the same topic, retained ``offline``), subscribes
    ``{prefix}/cmd/+/+/+/+/+/+`` (QoS 1: ``{prefix}/cmd/{path}/{verb}``) and
    calls ``on_command(path, payload, verb)`` for each well-formed command (a
    JSON object; with a non-empty string ``alarm_id`` unless the verb is
    ``service``, which names a characteristic, not an alarm); the handler
    judges the verb. Malformed ones are logged and counted in
    ``stats.bad_commands``, exceptions of ``on_command`` in
    ``stats.command_errors``. Then it drains the outbox stream (see the module
    docstring). On stop it drains within ``cfg.stop_drain_s``, publishes
    ``offline`` retained and disconnects cleanly.

    ``on_command`` runs in the event loop and should be quick (e.g. put the
    command on a bounded queue). The client id is ``cfg.client_id`` or
    ``shopspc-{gateway_id}``.
    """

    def __init__(
        self,
        cfg: MqttPublisherConfig,
        outbox: Outbox,
        *,
        gateway_id: str,
        prefix: str = "shopspc/v1",
        version: str,
        start_time_us: int,
        on_command: Callable[[str, dict[str, Any], str], None] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        stream: str = "mqtt",
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.prefix = prefix.rstrip("/")
        self.version = version
        self.start_time_us = start_time_us
        self.on_command = on_command
        self.on_refused = on_refused
        self.client_id = cfg.client_id or f"shopspc-{gateway_id}"
        self.status_topic = f"{self.prefix}/gateway/{gateway_id}/status"
        self.command_filter = f"{self.prefix}/cmd/+/+/+/+/+/+"
        self.stats = NotifyStats()
        self.password: str | None = None
        self._transport = _MqttTransport(self)
        self._drainer = _Drainer(
            outbox,
            stream,
            self._transport,
            self.stats,
            batch=cfg.batch_size,
            backoff=Backoff(cfg.reconnect_base_s, cfg.reconnect_cap_s),
            stop_drain_s=cfg.stop_drain_s,
        )

    def status_payload(self, status: str) -> bytes:
        """The gateway status message (``online`` / ``offline``), stamped now."""
        return compact_json(
            {
                "schema": GATEWAY_SCHEMA,
                "status": status,
                "gateway_id": self.gateway_id,
                "version": self.version,
                "start_time": rfc3339_us(self.start_time_us),
                "time": rfc3339_us(time.time_ns() // 1000),
            }
        )

    def notify(self) -> None:
        """New entries were committed: publish them now (thread-safe)."""
        self._drainer.notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; raises only a non-retryable error (bad credentials …)."""
        self.password = _secret_from_env(
            self.cfg.password_env, self._transport.where, "password_env"
        )
        await self._drainer.run(stop)

    def _on_message(self, topic: str, payload: bytes) -> None:
        head = f"{self.prefix}/cmd/"
        levels = topic[len(head) :].split("/") if topic.startswith(head) else []
        path, verb = "/".join(levels[:5]), levels[5] if len(levels) == 6 else ""
        problem = None
        doc: Any = None
        if len(levels) != 6 or not all(levels):
            problem = "not a command topic"
        else:
            try:
                doc = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                problem = f"not JSON: {exc}"
            else:
                if not isinstance(doc, dict):
                    problem = "not a JSON object"
                elif verb != "service" and (
                    not isinstance(doc.get("alarm_id"), str) or not doc["alarm_id"]
                ):
                    problem = "no alarm_id"
        if problem is not None:
            self.stats.bad_commands += 1
            log.warning("%s: ignored command on %r: %s", self._transport.where, topic, problem)
            if self.on_refused is not None:
                self.on_refused(topic, problem)
            return
        self.stats.commands += 1
        if self.on_command is None:
            return
        try:
            self.on_command(path, doc, verb)
        except Exception:
            self.stats.command_errors += 1
            log.exception("%s: command handler failed on %r", self._transport.where, topic)


# -- webhook ---------------------------------------------------------------------------------


class _WebhookTransport:
    proves_link = False
    window = 1  # one POST after the other: a retried one must not be overtaken

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.where = f"webhook {cfg.url}"
        self.secret: bytes | None = None
        self._client: WebhookClient | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = WebhookClient(self.cfg, self.secret)

    def check(self) -> None:
        pass  # HTTP has no standing connection to lose; a failed POST tells

    def send(self, envelopes: Sequence[Envelope]) -> Callable[[], Awaitable[_Delivery]]:
        return lambda: self._post(envelopes)

    async def _post(self, envelopes: Sequence[Envelope]) -> _Delivery:
        assert self._client is not None
        out = _Delivery()
        for e in envelopes:
            alarm_id, event = e.payload.get("alarm_id"), e.payload.get("event")
            event_id = f"{alarm_id}:{event}" if alarm_id and event else f"seq:{e.seq}"
            try:
                await self._client.post(e.body, event_id=event_id)
            except ConnectorError as exc:
                if exc.retryable:
                    out.error = exc
                    return out
                out.refused[e.seq] = exc.message
            else:
                out.delivered.append(e.seq)
        return out

    async def reset(self) -> None:
        pass  # httpx's pool opens a new connection when the old one broke

    async def close(self, graceful: bool) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class WebhookNotifier:
    """POSTs every entry of the outbox stream (a bare payload or an envelope's) as JSON, in order.

    Headers: ``X-Shopspc-Timestamp``, ``X-Shopspc-Signature`` (when
    ``secret_env`` is set; see :func:`verify_signature`) and
    ``X-Shopspc-Event-Id`` = ``{alarm_id}:{event}`` for de-duplication.
    Retryable failures (connection, timeout, 5xx, 408, 429) keep the entry and
    retry it with capped, jittered backoff; any other 4xx dead-letters it.
    """

    def __init__(self, cfg: WebhookConfig, outbox: Outbox, stream: str = "webhook") -> None:
        self.cfg = cfg
        self.stats = NotifyStats()
        self._transport = _WebhookTransport(cfg)
        self._drainer = _Drainer(
            outbox,
            stream,
            self._transport,
            self.stats,
            batch=cfg.batch_size,
            backoff=Backoff(cfg.retry_base_s, cfg.retry_cap_s),
            stop_drain_s=cfg.stop_drain_s,
            decode=_decode_payload,
        )

    def notify(self) -> None:
        """New entries were committed: post them now (thread-safe)."""
        self._drainer.notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; raises only a non-retryable setup error (missing secret)."""
        secret = _secret_from_env(self.cfg.secret_env, self._transport.where, "secret_env")
        self._transport.secret = None if secret is None else secret.encode()
        await self._drainer.run(stop)
