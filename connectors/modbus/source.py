"""The Modbus source: one polling task per device, planned requests, samples with a quality.

Each device task connects, then every ``poll_interval`` reads its polled points
in the planned (coalesced) requests and checks each trigger's ready flag. A
request that fails gives one bad sample per point it covers; a lost link gives
bad samples for every polled point still unread in that cycle and for each
failed reconnect attempt, so the outage is a marked gap. Reconnects follow a
capped, jittered :class:`~connectors.base.Backoff`, never faster than the poll
interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from connectors.base import (
    Backoff,
    ConnectorError,
    ConnectorStats,
    Emit,
    Quality,
    Sample,
    register_source,
)
from connectors.modbus.client import ModbusClient, ModbusExceptionError, ModbusLine, ModbusLinkError
from connectors.modbus.config import (
    DeviceConfig,
    ModbusSourceConfig,
    PointConfig,
    RtuTransport,
    TriggerConfig,
    is_bit_function,
)
from connectors.modbus.decode import (
    CHECK_ABOVE,
    CHECK_BELOW,
    CHECK_GOOD,
    CHECK_NOT_FINITE,
    BlockDecoder,
    PlanItem,
    Request,
    check_values,
    plan_requests,
)

__all__ = ["DeviceStats", "ModbusSource"]

log = logging.getLogger(__name__)

NAN = math.nan


@dataclass
class DeviceStats:
    """Per-device counters (the connector-wide ones are in :class:`ConnectorStats`)."""

    online: bool | None = None
    requests: int = 0
    failed_requests: int = 0
    exception_responses: int = 0
    link_errors: int = 0
    not_finite: int = 0
    implausible: int = 0
    parts: int = 0
    acks: int = 0
    last_error: str = ""


@dataclass
class _Planned:
    """A planned request with what is needed to turn its registers into samples."""

    request: Request
    ids: list[str]
    decoder: BlockDecoder
    scale: np.ndarray
    offset: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _plan(device: DeviceConfig, points: Sequence[PointConfig]) -> list[_Planned]:
    items = [PlanItem(p.function, p.address, p.count) for p in points]
    planned = []
    for req in plan_requests(items, device.limit, device.max_gap):
        members = [points[i] for i in req.members]
        planned.append(
            _Planned(
                request=req,
                ids=[p.id for p in members],
                decoder=BlockDecoder(
                    req.address,
                    [p.address for p in members],
                    [p.dtype for p in members],
                    [p.order for p in members],
                ),
                scale=np.array([p.scale for p in members], dtype=np.float64),
                offset=np.array([p.offset for p in members], dtype=np.float64),
                low=np.array(
                    [-math.inf if p.plausible_min is None else p.plausible_min for p in members]
                ),
                high=np.array(
                    [math.inf if p.plausible_max is None else p.plausible_max for p in members]
                ),
            )
        )
    return planned


@dataclass
class _Result:
    """Values for the points of a group, in plan order, with quality and status."""

    ids: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    qualities: list[Quality] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    failed: bool = False

    def add_bad(self, ids: Sequence[str], status: str, t_us: int) -> None:
        n = len(ids)
        self.ids.extend(ids)
        self.values.extend([NAN] * n)
        self.qualities.extend([Quality.BAD] * n)
        self.statuses.extend([status] * n)
        self.times.extend([t_us] * n)
        self.failed = True


@dataclass
class _TriggerState:
    config: TriggerConfig
    planned: list[_Planned]
    # idle: waiting for ready; emitted: part emitted, ack not yet written;
    # acked: waiting for ready to clear.
    phase: str = "idle"
    problem: str = ""

    def report(self, who: str, problem: str) -> None:
        """Log a trigger problem when it starts or changes, and its end (not every poll)."""
        if problem and problem != self.problem:
            log.warning("%s: trigger %s: %s", who, self.config.name, problem)
        elif not problem and self.problem:
            log.warning("%s: trigger %s: working again", who, self.config.name)
        self.problem = problem


@dataclass
class _Pacer:
    """Minimum gap between request starts on one device or one shared serial line."""

    gap: float
    last: float = -math.inf

    async def wait(self) -> None:
        if self.gap <= 0:
            return
        loop = asyncio.get_running_loop()
        delay = self.last + self.gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.last = loop.time()


@dataclass
class _Device:
    config: DeviceConfig
    client: ModbusClient
    pacer: _Pacer
    polled: list[_Planned]
    triggers: list[_TriggerState]
    stats: DeviceStats


@register_source("modbus")
class ModbusSource:
    """Polls Modbus TCP/RTU devices and emits :class:`Sample` batches (kind ``modbus``).

    ``client_factory`` and ``clock_us`` are injectable for tests; the defaults
    are the pymodbus adapter and the wall clock in microseconds.
    """

    def __init__(
        self,
        config: ModbusSourceConfig,
        name: str = "modbus",
        *,
        client_factory: Callable[
            [DeviceConfig, str, ModbusLine | None], ModbusClient
        ] = ModbusClient,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = ConnectorStats()
        self.devices: dict[str, DeviceStats] = {d.name: DeviceStats() for d in config.devices}
        self._client_factory = client_factory
        self._clock_us = clock_us

    async def run(self, emit: Emit) -> None:
        """Poll every device until cancelled (one task per device in a TaskGroup).

        Devices on the same serial port share one line (one open port) and one
        pacer whose gap is the largest ``pacing`` among them.
        """
        lines: dict[str, tuple[ModbusLine, _Pacer]] = {}
        devices = []
        for cfg in self.config.devices:
            t = cfg.transport
            if isinstance(t, RtuTransport):
                if t.port not in lines:
                    lines[t.port] = (ModbusLine(cfg), _Pacer(0.0))
                line, pacer = lines[t.port]
                pacer.gap = max(pacer.gap, cfg.pacing)
            else:
                line, pacer = None, _Pacer(cfg.pacing)
            devices.append(
                _Device(
                    config=cfg,
                    client=self._client_factory(cfg, self.name, line),
                    pacer=pacer,
                    polled=_plan(cfg, cfg.points),
                    triggers=[_TriggerState(tr, _plan(cfg, tr.block)) for tr in cfg.triggers],
                    stats=self.devices[cfg.name],
                )
            )
        try:
            async with asyncio.TaskGroup() as tg:
                for dev in devices:
                    tg.create_task(
                        self._run_device(dev, emit), name=f"{self.name}:{dev.config.name}"
                    )
        finally:
            for dev in devices:
                dev.client.close()
            self.stats.state = "stopped"

    # -- per device -------------------------------------------------------------------

    async def _run_device(self, dev: _Device, emit: Emit) -> None:
        cfg = dev.config
        backoff = Backoff(base=cfg.reconnect_min, cap=cfg.reconnect_max)
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not dev.client.connected:
                    try:
                        await dev.client.connect()
                    except ConnectorError as exc:
                        await self._link_down(dev, exc, emit, unread=dev.polled)
                        await asyncio.sleep(max(backoff.next_delay(), cfg.poll_interval))
                        continue
                started = loop.time()
                try:
                    await self._cycle(dev, emit)
                except ModbusLinkError as exc:
                    # A silent unit on a serial line says nothing about the port, which
                    # other units may share; anything else means a broken link.
                    if not (exc.timeout and dev.client.serial):
                        dev.client.close()
                    await asyncio.sleep(max(backoff.next_delay(), cfg.poll_interval))
                    continue
                self._link_up(dev)
                backoff.reset()
                await asyncio.sleep(max(0.0, started + cfg.poll_interval - loop.time()))
        finally:
            dev.client.close()

    async def _request(self, dev: _Device, function: int, address: int, count: int) -> list[int]:
        """One paced read; counts it; raises the client's ConnectorError subclasses."""
        await dev.pacer.wait()
        dev.stats.requests += 1
        try:
            return await dev.client.read(function, address, count)
        except ConnectorError as exc:
            self._count_error(dev, exc)
            raise

    async def _write(self, dev: _Device, function: int, address: int, value: int) -> None:
        await dev.pacer.wait()
        dev.stats.requests += 1
        try:
            await dev.client.write(function, address, value)
        except ConnectorError as exc:
            self._count_error(dev, exc)
            raise

    def _count_error(self, dev: _Device, exc: ConnectorError) -> None:
        dev.stats.failed_requests += 1
        dev.stats.last_error = str(exc)
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        if isinstance(exc, ModbusExceptionError):
            dev.stats.exception_responses += 1
        else:
            dev.stats.link_errors += 1

    async def _cycle(self, dev: _Device, emit: Emit) -> None:
        if dev.polled:
            result, link_error = await self._read_group(dev, dev.polled)
            await self._emit(emit, self._samples(result))
            if link_error is not None:
                await self._link_down(dev, link_error, emit, unread=[])
                raise link_error
        for trig in dev.triggers:
            try:
                await self._step_trigger(dev, trig, emit)
            except ModbusExceptionError as exc:
                trig.report(f"{self.name} {dev.config.name}", str(exc))
            except ModbusLinkError as exc:
                await self._link_down(dev, exc, emit, unread=[])
                raise

    async def _read_group(
        self, dev: _Device, planned: list[_Planned]
    ) -> tuple[_Result, ModbusLinkError | None]:
        """Read every planned request; a link error stops the group and marks the rest bad."""
        result = _Result()
        for k, pl in enumerate(planned):
            req = pl.request
            try:
                regs = await self._request(dev, req.function, req.address, req.count)
            except ModbusExceptionError as exc:
                result.add_bad(pl.ids, exc.message, self._clock_us())
                continue
            except ModbusLinkError as exc:
                now = self._clock_us()
                for rest in planned[k:]:
                    result.add_bad(rest.ids, exc.message, now)
                return result, exc
            now = self._clock_us()
            self._decode_into(dev, pl, regs, now, result)
        return result, None

    def _decode_into(
        self, dev: _Device, pl: _Planned, regs: list[int], now: int, result: _Result
    ) -> None:
        checked = check_values(pl.decoder.decode(regs), pl.scale, pl.offset, pl.low, pl.high)
        for j, pid in enumerate(pl.ids):
            code = int(checked.codes[j])
            value = float(checked.values[j])
            result.ids.append(pid)
            result.times.append(now)
            if code == CHECK_GOOD:
                result.values.append(value)
                result.qualities.append(Quality.GOOD)
                result.statuses.append("")
                continue
            if code == CHECK_NOT_FINITE:
                dev.stats.not_finite += 1
                status = f"not a finite number: {value}"
            elif code == CHECK_BELOW:
                dev.stats.implausible += 1
                status = f"implausible: {value:g} below plausible_min {pl.low[j]:g}"
            else:
                assert code == CHECK_ABOVE
                dev.stats.implausible += 1
                status = f"implausible: {value:g} above plausible_max {pl.high[j]:g}"
            result.values.append(NAN)
            result.qualities.append(Quality.BAD)
            result.statuses.append(status)

    def _samples(
        self,
        result: _Result,
        *,
        serial: str | None = None,
        skip: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> list[Sample]:
        return [
            Sample(
                binding=pid,
                value=value,
                quality=quality,
                gateway_time_us=t,
                serial=serial,
                fields=fields or {},
                status=status,
            )
            for pid, value, quality, status, t in zip(
                result.ids,
                result.values,
                result.qualities,
                result.statuses,
                result.times,
                strict=True,
            )
            if pid != skip
        ]

    async def _emit(self, emit: Emit, samples: list[Sample]) -> None:
        if not samples:
            return
        self.stats.samples += len(samples)
        self.stats.bad_samples += sum(1 for s in samples if s.quality is not Quality.GOOD)
        await emit(samples)

    async def _step_trigger(self, dev: _Device, trig: _TriggerState, emit: Emit) -> None:
        """Ready set → read block → emit one part → write ack; reset the ack once ready clears.

        A part is emitted once per ready episode: if the ack write fails, only
        the write is retried on the next polls. A block read that fails is
        emitted (bad samples) but not acknowledged, so the next poll reads it again.
        """
        cfg = trig.config
        who = f"{self.name} {dev.config.name}"
        raw = (await self._request(dev, cfg.ready.function, cfg.ready.address, 1))[0]
        if is_bit_function(cfg.ready.function):
            is_set = bool(raw) == bool(cfg.ready.value)
        else:
            is_set = raw == cfg.ready.value
        if trig.phase == "acked":
            if not is_set:
                if cfg.ack.reset is not None:
                    await self._write(dev, cfg.ack.function, cfg.ack.address, cfg.ack.reset)
                trig.phase = "idle"
            trig.report(who, "")
            return
        if trig.phase == "idle":
            if not is_set:
                trig.report(who, "")
                return
            result, link_error = await self._read_group(dev, trig.planned)
            # One part: every sample of the block carries the same gateway time.
            part_time = max(result.times) if result.times else self._clock_us()
            result.times = [part_time] * len(result.times)
            serial = None
            if cfg.serial_point is not None:
                serial = _serial_text(result, cfg.serial_point)
            samples = self._samples(
                result, serial=serial, skip=cfg.serial_point, fields={"trigger": cfg.name}
            )
            await self._emit(emit, samples)
            if link_error is not None:
                raise link_error
            if result.failed:
                bad = next(st for st in result.statuses if st)
                trig.report(who, f"block read failed, not acknowledged: {bad}")
                return
            dev.stats.parts += 1
            trig.phase = "emitted"
        await self._write(dev, cfg.ack.function, cfg.ack.address, cfg.ack.value)
        dev.stats.acks += 1
        trig.phase = "acked"
        trig.report(who, "")

    # -- state --------------------------------------------------------------------------

    async def _link_down(
        self, dev: _Device, exc: ConnectorError, emit: Emit, unread: list[_Planned]
    ) -> None:
        """Mark the device lost (logged once) and emit bad samples for ``unread`` points."""
        if dev.stats.online is not False:
            log.warning("%s: lost device %s: %s", self.name, dev.config.name, exc)
            dev.stats.online = False
            self.stats.state = "disconnected"
        self.stats.last_error = str(exc)
        if unread:
            result = _Result()
            now = self._clock_us()
            for pl in unread:
                result.add_bad(pl.ids, exc.message, now)
            await self._emit(emit, self._samples(result))

    def _link_up(self, dev: _Device) -> None:
        if dev.stats.online is False:
            log.warning("%s: regained device %s", self.name, dev.config.name)
            self.stats.reconnects += 1
        elif dev.stats.online is None:
            log.info("%s: connected to device %s", self.name, dev.config.name)
        dev.stats.online = True
        if all(d.online for d in self.devices.values()):
            self.stats.state = "connected"


def _serial_text(result: _Result, point_id: str) -> str | None:
    """The serial as text: integral values without a decimal point; None when bad."""
    for pid, value, quality in zip(result.ids, result.values, result.qualities, strict=True):
        if pid == point_id:
            if quality is not Quality.GOOD or not math.isfinite(value):
                return None
            return str(int(value)) if value == int(value) else repr(value)
    return None
