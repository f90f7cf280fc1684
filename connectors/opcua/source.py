"""The OPC UA input connector: subscriptions, polled reads and result-ready triggers.

One :class:`OpcuaSource` talks to one server. ``run`` connects, subscribes, starts a
poll task per poll interval and a watcher per trigger, all in one ``TaskGroup``; when
the connection is lost it marks the gap with a bad sample per node binding, logs once,
reconnects with :class:`~connectors.base.Backoff` and rebuilds everything on a fresh
session. With ``backfill`` on, the rebuilt subscription's values wait until the
server's history of the outage has been read and emitted (oldest first, marked
``fields['backfill']``), and values already emitted are not emitted again. Only
non-retryable errors (credentials, security, bad config) end ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.base import (
    Backoff,
    ConnectorError,
    ConnectorStats,
    Emit,
    Quality,
    Sample,
    register_source,
)
from connectors.opcua.client import (
    HistoryItem,
    OpcuaClient,
    SampleKey,
    device_time_us,
    sample_key,
)
from connectors.opcua.config import NodeBinding, OpcuaSourceConfig, TriggerConfig

__all__ = ["GAP_STATUS", "OpcuaSource", "OpcuaStats"]

log = logging.getLogger(__name__)

GAP_STATUS = "BadNoCommunication"
"""Status of the bad sample that marks, per node binding, a gap where values may be lost.

For a subscribed node, a backfill after the reconnect may fill the gap from the server's
history: its values follow the mark, marked ``fields['backfill']``.
"""

_BATCH = 1000
_TRIGGER_QUEUE = 64


@dataclass
class OpcuaStats(ConnectorStats):
    """:class:`ConnectorStats` plus the gap and backfill counters of an OPC UA source."""

    gaps: int = 0  # connection losses marked (one gap sample per node binding each)
    backfilled: int = 0  # values read from the server's history and emitted
    backfill_failed: int = 0  # node backfills that read nothing (no history, refused, timed out)
    backfill_truncated: int = 0  # node backfills cut by backfill_max_values / backfill_max_s
    backfill_duplicates: int = 0  # subscription values not emitted: already emitted before


@dataclass(slots=True)
class _Seen:
    """Per binding, after a reconnect: the values already emitted the new subscription may repeat."""

    keys: set[SampleKey] = field(default_factory=set)
    newest_us: int = -1

    def add(self, key: SampleKey) -> None:
        self.keys.add(key)
        self.newest_us = max(self.newest_us, key[0])


@register_source("opcua")
class OpcuaSource:
    """Read one OPC UA server and hand batches of samples to ``emit``.

    ``stats`` is an :class:`OpcuaStats` (gaps and backfill counters). Counters on the
    source: ``dropped`` (samples dropped because the gateway queue was full, oldest
    first), ``triggers`` (result blocks read and acknowledged), ``read_requests``.
    """

    def __init__(
        self,
        config: OpcuaSourceConfig | Mapping[str, Any],
        name: str,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = (
            config
            if isinstance(config, OpcuaSourceConfig)
            else OpcuaSourceConfig.model_validate(config)
        )
        self.name = name
        self.stats = OpcuaStats()
        self.backoff = backoff or Backoff(
            base=self.config.reconnect_base_s, cap=self.config.reconnect_cap_s
        )
        self.where = f"opcua {name} {self.config.endpoint}"
        self._dropped_before = 0
        self._client: OpcuaClient | None = None
        self.triggers = 0
        self.trigger_events_dropped = 0
        self._reads_before = 0
        self._trigger_queues: dict[str, asyncio.Queue[Sample]] = {}
        # Backfill state, kept across sessions: the last subscription value emitted per
        # binding (its source time is where the history read starts), whether a gap awaits
        # its backfill, and what the rebuilt subscription must not emit again.
        self._last: dict[str, SampleKey] = {}
        self._backfill_due = False
        self._seen: dict[str, _Seen] = {}

    @property
    def gaps(self) -> int:
        """Connection losses marked (``stats.gaps``)."""
        return self.stats.gaps

    @property
    def dropped(self) -> int:
        """Samples dropped (oldest first) because the gateway-side queue was full."""
        current = self._client.dropped if self._client is not None else 0
        return self._dropped_before + current

    @property
    def read_requests(self) -> int:
        """Read service calls sent (one per chunk of MaxNodesPerRead nodes)."""
        current = self._client.read_requests if self._client is not None else 0
        return self._reads_before + current

    async def run(self, emit: Emit) -> None:
        """Run until cancelled; raises ConnectorError only when retrying cannot help."""
        down_logged = False
        ever_connected = False
        try:
            while True:
                client = self._client = OpcuaClient(self.config, self.where)
                was_connected = False
                try:
                    await client.connect()
                    was_connected = True
                    if ever_connected:
                        self.stats.reconnects += 1
                    ever_connected = True
                    self.stats.state = "connected"
                    if down_logged:
                        log.warning("%s: connection regained", self.where)
                    else:
                        log.info("%s: connected", self.where)
                    down_logged = False
                    self.backoff.reset()
                    await self._serve(client, emit)
                except ConnectorError as err:
                    self.stats.errors += 1
                    self.stats.last_error = str(err)
                    if not err.retryable:
                        log.error("%s: %s (not retrying)", self.where, err.message)
                        raise
                    self.stats.state = "disconnected"
                    if not down_logged:
                        verb = "connection lost" if was_connected else "cannot connect"
                        log.warning("%s: %s: %s", self.where, verb, err.message)
                        down_logged = True
                    if was_connected:
                        await self._emit_subscribed(emit, _drain(client.samples))
                        await self._mark_gap(emit)
                finally:
                    self._dropped_before += client.dropped
                    self._client = None
                    self._reads_before += client.read_requests
                    await client.close()
                await asyncio.sleep(self.backoff.next_delay())
        finally:
            self.stats.state = "stopped"

    # -- one session ----------------------------------------------------------

    async def _serve(self, client: OpcuaClient, emit: Emit) -> None:
        cfg = self.config
        subscribed = [n for n in cfg.nodes if n.mode == "subscribe"]
        polled: dict[float, list[NodeBinding]] = defaultdict(list)
        for n in cfg.nodes:
            if n.mode == "poll":
                polled[n.poll_interval_s].append(n)
        self._trigger_queues = {t.id: asyncio.Queue(maxsize=_TRIGGER_QUEUE) for t in cfg.triggers}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(client))
                refused = await client.subscribe(subscribed, cfg.triggers, self._on_trigger)
                await self._emit(emit, refused)
                # The subscription's values queue up while the history of the outage is
                # read; the pump emits the backfill first, then them.
                backfill = subscribed if self._backfill_due else []
                tg.create_task(self._pump(client, emit, backfill, time.time_ns() // 1000))
                for interval, group in polled.items():
                    tg.create_task(self._poll(client, emit, group, interval))
                for trigger in cfg.triggers:
                    tg.create_task(self._trigger(client, emit, trigger))
        except BaseExceptionGroup as group:
            raise _pick(group) from None

    async def _watch(self, client: OpcuaClient) -> None:
        raise await client.wait_lost()

    async def _pump(
        self, client: OpcuaClient, emit: Emit, backfill: Sequence[NodeBinding], resubscribed_us: int
    ) -> None:
        if backfill:
            await self._backfill(client, emit, backfill, resubscribed_us)
            self._backfill_due = False
        while True:
            batch = [await client.samples.get()]
            batch.extend(_drain(client.samples, _BATCH - 1))
            await self._emit_subscribed(emit, batch)

    # -- backfill ---------------------------------------------------------------

    async def _backfill(
        self, client: OpcuaClient, emit: Emit, nodes: Sequence[NodeBinding], end_us: int
    ) -> None:
        """Emit the history of the outage of ``nodes``, oldest first, before any live value.

        Per node the window starts just after the source time of the last value emitted
        (and no earlier than ``backfill_max_s`` before ``end_us``, the moment the new
        subscription exists) and ends at the newest source time of the new subscription's
        initial values (``end_us`` if later, or if none came within ``timeout_s``): the
        device's own clock, so a device clock ahead of the gateway's loses nothing. A node
        that cannot be backfilled is logged and counted; its gap mark stands. Bounded by
        ``backfill_timeout_s``; only a lost link raises.
        """
        cfg = self.config
        oldest_us = end_us - round(cfg.backfill_max_s * 1_000_000)
        self._seen = {}
        items: list[HistoryItem] = []
        aged: set[str] = set()
        for n in nodes:
            last = self._last.get(n.id)
            if last is None:
                self._backfill_failed(n, "no value with a source timestamp before the loss")
                continue
            self._seen[n.id] = _Seen()
            self._seen[n.id].add(last)
            start = last[0] + 1
            if start < oldest_us:
                start = oldest_us
                aged.add(n.id)
            items.append(HistoryItem(n.id, n.node, start))
        if not items:
            return
        try:
            async with asyncio.timeout(cfg.backfill_timeout_s):
                firsts = await client.first_samples([it.binding for it in items], cfg.timeout_s)
                taken_over = [device_time_us(s) for s in firsts.values()]
                end_us = max([end_us, *(t for t in taken_over if t is not None)])
                results = await client.read_history(
                    items, end_us=end_us, max_values=cfg.backfill_max_values
                )
        except TimeoutError:
            for it in items:
                self._backfill_failed(
                    it, f"no complete answer within backfill_timeout_s={cfg.backfill_timeout_s:g}"
                )
            return
        by_id = {n.id: n for n in nodes}
        merged: list[Sample] = []
        for r in results:
            node = by_id[r.binding]
            if r.error:
                self._backfill_failed(node, r.error)
                continue
            if r.truncated or r.binding in aged:
                self.stats.backfill_truncated += 1
                limit = (
                    f"backfill_max_values={cfg.backfill_max_values}"
                    if r.truncated
                    else f"backfill_max_s={cfg.backfill_max_s:g}"
                )
                log.warning(
                    "%s: backfill of %s (%s) cut by %s: older values of the gap are lost",
                    self.where,
                    node.id,
                    node.node,
                    limit,
                )
            if r.untimed:
                log.warning(
                    "%s: backfill of %s (%s): %d history values without a source timestamp "
                    "left out",
                    self.where,
                    node.id,
                    node.node,
                    r.untimed,
                )
            seen = self._seen[r.binding]
            for s in r.samples:
                key = sample_key(s)
                assert key is not None  # history values without a source time were left out
                seen.add(key)
            merged.extend(r.samples)
        # Interleaved in source time across nodes, as a live subscription delivers them, so
        # context values stand where they stood.
        merged.sort(key=lambda s: device_time_us(s) or 0)
        self.stats.backfilled += len(merged)
        for start in range(0, len(merged), _BATCH):
            await self._emit_subscribed(emit, merged[start : start + _BATCH], backfill=True)
        if merged:
            log.info("%s: backfilled %d values after the reconnect", self.where, len(merged))

    def _backfill_failed(self, node: NodeBinding | HistoryItem, why: str) -> None:
        self.stats.backfill_failed += 1
        log.warning(
            "%s: cannot backfill %s (%s): %s; its gap stays",
            self.where,
            node.binding if isinstance(node, HistoryItem) else node.id,
            node.node,
            why,
        )

    async def _emit_subscribed(
        self, emit: Emit, batch: Sequence[Sample], *, backfill: bool = False
    ) -> None:
        """Emit subscription (or backfilled) samples, remembering each binding's last one.

        After a reconnect with backfill, a subscription value equal (source time, value,
        status) to one already emitted — the last before the loss or a backfilled one —
        is a repeat and is skipped; a binding stops being checked at its first value
        newer than all of those.
        """
        if not self.config.backfill:
            await self._emit(emit, batch)
            return
        if self._seen and not backfill:
            batch = [s for s in batch if not self._repeat(s)]
        for s in batch:
            key = sample_key(s)
            if key is not None:
                self._last[s.binding] = key
        await self._emit(emit, batch)

    def _repeat(self, sample: Sample) -> bool:
        seen = self._seen.get(sample.binding)
        if seen is None:
            return False
        key = sample_key(sample)
        if key is not None and key in seen.keys:
            self.stats.backfill_duplicates += 1
            return True
        if key is None or key[0] > seen.newest_us:
            del self._seen[sample.binding]
        return False

    async def _poll(
        self, client: OpcuaClient, emit: Emit, group: Sequence[NodeBinding], interval: float
    ) -> None:
        items = [(n.id, n.node) for n in group]
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            await self._emit(emit, await client.read_samples(items))
            deadline += interval
            # After a stall, skip missed ticks instead of bursting to catch up.
            deadline = max(deadline, loop.time())
            await asyncio.sleep(deadline - loop.time())

    def _on_trigger(self, trigger_id: str, sample: Sample) -> None:
        queue = self._trigger_queues.get(trigger_id)
        if queue is None:
            return
        if queue.full():
            queue.get_nowait()  # drop oldest: the newest ready state matters most
            self.trigger_events_dropped += 1
        queue.put_nowait(sample)

    async def _trigger(self, client: OpcuaClient, emit: Emit, trigger: TriggerConfig) -> None:
        queue = self._trigger_queues[trigger.id]
        items = [(b.id, b.node) for b in trigger.block]
        ready = False
        while True:
            sample = await queue.get()
            now_ready = (
                sample.quality is not Quality.BAD
                and not math.isnan(sample.value)
                and sample.value != 0.0
            )
            if trigger.event_node is not None:
                rising, falling = True, False  # every event announces one result
            else:
                rising, falling = now_ready and not ready, ready and not now_ready
            ready = now_ready
            if falling and trigger.ack_reset is not None:
                await self._acknowledge(client, trigger, trigger.ack_reset)
            if not rising:
                continue
            block = await client.read_samples(
                items, serial_node=trigger.serial_node, fields={"trigger": trigger.id}
            )
            await self._emit(emit, block)
            if await self._acknowledge(client, trigger, trigger.ack_value):
                self.triggers += 1

    async def _acknowledge(self, client: OpcuaClient, trigger: TriggerConfig, value: Any) -> bool:
        """Write the ack node; a refused write is counted and logged, a lost link raises."""
        if trigger.ack_node is None:
            return True
        try:
            await client.write(trigger.ack_node, value)
        except ConnectorError as err:
            if err.retryable:
                raise
            self.stats.errors += 1
            self.stats.last_error = str(err)
            log.warning(
                "%s: trigger %s: write %r refused: %s", self.where, trigger.id, value, err.message
            )
            return False
        return True

    async def _mark_gap(self, emit: Emit) -> None:
        """One bad sample per node binding: values between here and the reconnect may be lost.

        With ``backfill``, subscribed nodes are read from the server's history after the
        reconnect, which may fill the gap (the mark stays: it is emitted now, the history
        is known only after the reconnect).
        """
        self.stats.gaps += 1
        self._backfill_due = self.config.backfill
        now = time.time_ns() // 1000
        marks = [
            Sample(n.id, math.nan, Quality.BAD, now, status=GAP_STATUS, fields={"gap": True})
            for n in self.config.nodes
        ]
        await self._emit(emit, marks)

    async def _emit(self, emit: Emit, batch: Sequence[Sample]) -> None:
        if not batch:
            return
        self.stats.samples += len(batch)
        self.stats.bad_samples += sum(1 for s in batch if s.quality is Quality.BAD)
        await emit(batch)


def _drain(queue: asyncio.Queue[Sample], limit: int | None = None) -> list[Sample]:
    out: list[Sample] = []
    while limit is None or len(out) < limit:
        try:
            out.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return out


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _pick(group: BaseExceptionGroup) -> BaseException:
    """The error that decides what happens next: a non-retryable one wins, then any ConnectorError."""
    leaves = _leaves(group)
    others = [e for e in leaves if not isinstance(e, ConnectorError)]
    if len(others) == 1:
        return others[0]  # e.g. emit failed: not ours to hide, re-raised as itself
    if others:
        raise group
    errors = [e for e in leaves if isinstance(e, ConnectorError)]
    fatal = [e for e in errors if not e.retryable]
    return (fatal or errors)[0]
