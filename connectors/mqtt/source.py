"""The MQTT input connector: subscribe to topic filters, map payloads to samples, emit batches.

``run`` connects, subscribes, and turns every received message into samples
through the subscription it matches (the first one in config order). Bad data
never ends ``run``: a payload that does not decode or a value that is missing or
not a finite number becomes a ``quality=bad`` sample with a status text and is
counted in ``stats.bad_samples`` / ``stats.errors``. A lost connection is retried
with capped, jittered :class:`Backoff`; the persistent session plus manual
acknowledgement (only once the batch is committed to the gateway's outbox, in
arrival order) means QoS≥1 messages published while the gateway was away, or
received but not yet committed when it died, are delivered after it reconnects. Only errors that cannot
heal by waiting (bad credentials, a refused subscription, a missing password
variable) end ``run`` with a :class:`ConnectorError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
from dataclasses import dataclass

from connectors.base import (
    Backoff,
    ConnectorError,
    ConnectorStats,
    Emit,
    Quality,
    Sample,
    register_source,
)
from connectors.mqtt.client import Message, MqttClient
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.mapping import SubscriptionMapper

__all__ = ["MqttSource", "MqttStats"]

log = logging.getLogger(__name__)


@dataclass
class MqttStats(ConnectorStats):
    """:class:`ConnectorStats` plus what only a message broker source has."""

    messages: int = 0  # messages received
    unmatched: int = 0  # messages that matched no subscription (overlapping broker-side filters)
    dropped: int = 0  # messages dropped because the receive buffer stayed full
    retained_skipped: int = 0  # retained (stale) messages not mapped (``retained: skip``)


#: Batches handed to the gateway but not yet acknowledged before receiving waits (deferred
#: acks). Above what one group commit (``commit_linger_s``, 10 ms) gathers at full rate,
#: when a socket read can be a batch of one message: with 32, 5 000 msg/s in small reads
#: held receiving for the commit (a 3–5 ms p99 of receive → emit, 1.4–2.2 ms with 1 024).
#: The messages themselves are bounded by the broker's in-flight window (Receive Maximum).
_UNCOMMITTED_BATCHES = 1024


@register_source("mqtt")
class MqttSource:
    """An MQTT broker connection feeding samples to ``emit`` (see the module docstring)."""

    def __init__(
        self, config: MqttSourceConfig, name: str, *, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.name = name
        self.stats = MqttStats()
        self.where = f"mqtt {name} {config.host}:{config.port}"
        self._mappers = [SubscriptionMapper(s) for s in config.subscriptions]
        self._warned: set[int] = set()
        self._backoff = Backoff(
            base=config.reconnect_base_s,
            cap=config.reconnect_cap_s,
            rng=rng or random.Random(),
        )
        self._dropped_before = 0
        self._skip_retained = config.retained == "skip"

    def _password(self) -> str | None:
        env = self.config.password_env
        if env is None:
            return None
        value = os.environ.get(env)
        if value is None:
            raise ConnectorError(
                self.where, f"environment variable {env} (password_env) is not set", retryable=False
            )
        return value

    async def run(self, emit: Emit) -> None:
        """Receive until cancelled; raises only a non-retryable :class:`ConnectorError`."""
        try:
            try:
                password = self._password()
            except ConnectorError as exc:
                self._record(exc)
                raise
            topics = [
                (s.topic, s.qos if s.qos is not None else self.config.qos)
                for s in self.config.subscriptions
            ]
            lost = False
            connected_before = False
            while True:
                try:
                    client = MqttClient(self.config, self.where, password)
                except ConnectorError as exc:  # TLS files that cannot be loaded
                    self._record(exc)
                    raise
                try:
                    session = await client.connect()
                    granted = await client.subscribe(topics)
                    for (topic, want), got in zip(topics, granted, strict=False):
                        if got < want:
                            log.warning(
                                "%s: %r granted QoS %d, asked %d", self.where, topic, got, want
                            )
                    self.stats.state = "connected"
                    if connected_before:
                        self.stats.reconnects += 1
                    if lost or not connected_before:
                        log.info(
                            "%s: broker %s (session kept: %s)",
                            self.where,
                            "regained" if connected_before else "connected",
                            session,
                        )
                    lost = False
                    connected_before = True
                    self._backoff.reset()
                    await self._pump(client, emit)
                except ConnectorError as exc:
                    self._record(exc)
                    if not exc.retryable:
                        raise
                    self.stats.state = "disconnected"
                    if not lost:
                        log.warning(
                            "%s: %s: %s; retrying",
                            self.where,
                            "broker lost" if connected_before else "cannot reach the broker",
                            exc.message,
                        )
                        lost = True
                    else:
                        log.debug("%s: still down: %s", self.where, exc.message)
                finally:
                    await client.close()
                    self._dropped_before += client.dropped
                    self.stats.dropped = self._dropped_before
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            self.stats.state = "stopped"

    def _record(self, exc: ConnectorError) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        if not exc.retryable:
            log.error("%s: %s (not retrying)", self.where, exc.message)

    async def _pump(self, client: MqttClient, emit: Emit) -> None:
        """Receive, map and emit until the connection ends (then ``client.receive`` raises).

        With a gateway that offers ``emit.nowait`` (a future done once the batch is
        committed), messages are acknowledged later, in arrival order, as their
        batches commit, and receiving goes on meanwhile; otherwise after ``emit``.
        """
        max_batch = self.config.max_batch
        submit = getattr(emit, "nowait", None)
        pending: collections.deque[tuple[asyncio.Future[None] | None, list[Message]]]
        pending = collections.deque()

        def flush(_: object = None) -> None:
            # MQTT wants PUBACKs in the order the PUBLISHes came: ack the committed head only
            while pending and (pending[0][0] is None or pending[0][0].done()):
                fut, msgs = pending.popleft()
                if fut is None or (not fut.cancelled() and fut.exception() is None):
                    client.ack(msgs)

        while True:
            messages = await client.receive(max_batch)
            samples = []
            for m in messages:
                samples.extend(self._map(m))
            if samples:
                self.stats.samples += len(samples)
                self.stats.bad_samples += sum(1 for s in samples if s.quality is Quality.BAD)
            if submit is None:
                if samples:
                    await emit(samples)
                client.ack(messages)
            else:
                fut = await submit(samples) if samples else None
                pending.append((fut, messages))
                if fut is not None:
                    fut.add_done_callback(flush)
                flush()  # the head of ``pending`` is now an uncommitted batch, if any
                if len(pending) >= _UNCOMMITTED_BATCHES:
                    await asyncio.wait({pending[0][0]})
            self.stats.dropped = self._dropped_before + client.dropped
            # let the gateway judge this batch before the next is mapped: with a backlog,
            # receive() returns at once and mapping batch after batch would hold the loop
            await asyncio.sleep(0)

    def _map(self, m: Message) -> list[Sample]:
        self.stats.messages += 1
        if m.retain and self._skip_retained:
            # The broker sets RETAIN only on a copy sent because of a (re)subscription:
            # a stale last value, not a new measurement.
            self.stats.retained_skipped += 1
            return []
        n = next((i for i, mp in enumerate(self._mappers) if mp.matches(m.topic)), None)
        if n is None:
            self.stats.unmatched += 1
            return []
        mapper = self._mappers[n]
        try:
            result = mapper.map(m.topic, m.payload, m.received_us)
        except Exception as exc:  # a mapping bug must not stop the line's data
            self.stats.errors += 1
            self.stats.last_error = f"{m.topic}: {exc!r}"
            log.exception("%s: mapping a message on %r failed", self.where, m.topic)
            return []
        if result.errors:
            self.stats.errors += len(result.errors)
            self.stats.last_error = f"{m.topic}: {result.errors[-1]}"
            # first bad payload per subscription at WARNING, the rest at DEBUG (no log floods)
            level = logging.DEBUG if n in self._warned else logging.WARNING
            self._warned.add(n)
            log.log(level, "%s: %s: %s", self.where, m.topic, "; ".join(result.errors))
        return result.samples
