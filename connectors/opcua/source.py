"""The OPC UA input connector: subscriptions, polled reads and result-ready triggers.

One :class:`OpcuaSource` talks to one server. ``run`` connects, subscribes, starts a
poll task per poll interval and a watcher per trigger, all in one ``TaskGroup``; when
the connection is lost it marks the gap with a bad sample per node binding, logs once,
reconnects with :class:`~connectors.base.Backoff` and rebuilds everything on a fresh
session. Only non-retryable errors (credentials, security, bad config) end ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
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
from connectors.opcua.client import OpcuaClient
from connectors.opcua.config import NodeBinding, OpcuaSourceConfig, TriggerConfig

__all__ = ["GAP_STATUS", "OpcuaSource"]

log = logging.getLogger(__name__)

GAP_STATUS = "BadNoCommunication"
"""Status of the bad sample that marks, per node binding, a gap where values may be lost."""

_BATCH = 1000
_TRIGGER_QUEUE = 64


@register_source("opcua")
class OpcuaSource:
    """Read one OPC UA server and hand batches of samples to ``emit``.

    Counters beyond :class:`ConnectorStats`: ``dropped`` (samples dropped because the
    gateway queue was full, oldest first), ``gaps`` (connection losses marked),
    ``triggers`` (result blocks read and acknowledged), ``read_requests``.
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
        self.stats = ConnectorStats()
        self.backoff = backoff or Backoff(
            base=self.config.reconnect_base_s, cap=self.config.reconnect_cap_s
        )
        self.where = f"opcua {name} {self.config.endpoint}"
        self._dropped_before = 0
        self._client: OpcuaClient | None = None
        self.gaps = 0
        self.triggers = 0
        self.trigger_events_dropped = 0
        self._reads_before = 0
        self._trigger_queues: dict[str, asyncio.Queue[Sample]] = {}

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
                        await self._emit(emit, _drain(client.samples))
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
                tg.create_task(self._pump(client, emit))
                for interval, group in polled.items():
                    tg.create_task(self._poll(client, emit, group, interval))
                for trigger in cfg.triggers:
                    tg.create_task(self._trigger(client, emit, trigger))
        except BaseExceptionGroup as group:
            raise _pick(group) from None

    async def _watch(self, client: OpcuaClient) -> None:
        raise await client.wait_lost()

    async def _pump(self, client: OpcuaClient, emit: Emit) -> None:
        while True:
            batch = [await client.samples.get()]
            batch.extend(_drain(client.samples, _BATCH - 1))
            await self._emit(emit, batch)

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
        """One bad sample per node binding: values between here and the reconnect may be lost."""
        self.gaps += 1
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
