"""``shopspc simulate``: the demo's inspection stations, served from a gateway configuration.

For every source of the configuration on a loopback address a station is
started that this source reads exactly as configured:

* ``kind: opcua`` → :class:`connectors.opcua.station.OpcuaStation` (CMM/vision
  result block, ready/ack handshake) on the endpoint's port,
* ``kind: modbus`` → :class:`connectors.modbus.station.ModbusStation` (float32
  CDAB gauge, ready/ack coils) on the device's port,
* ``kind: mqtt`` → :class:`connectors.mqtt.station.MqttStation` (JSON batches)
  publishing to the source's topic through a Debian ``mosquitto`` started on the
  source's port (or one already listening there); without mosquitto the MQTT
  station is skipped with a log line.

A port an OPC UA or Modbus station should listen on but another program
holds is an error naming the port and its configuration key, raised before
anything starts (:func:`check_ports`). The demo instead moves such ports, and
the broker's, to free loopback ports and rewrites the sources to match
(:func:`prepare_demo`), saying so in one line each.

The station's characteristics are the ``value`` bindings of the configured
characteristics that name the source. Each gets a planted pattern
(:mod:`collector.patterns`: shift, trend, mixture, outliers in turn) around the
characteristic's frozen limits (``limits.center``/``sigma``), else its nominal
and an eighth of the tolerance. Parts carry a serial and a 5M1E context
(operator, program, lot, gauge id) that changes every so many parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from collector.config import Characteristic, ConnectorSection, GatewayConfig
from collector.patterns import Pattern, PatternStream
from connectors.base import ConnectorError
from connectors.modbus.config import ModbusSourceConfig, TcpTransport
from connectors.modbus.station import ModbusStation
from connectors.modbus.station import check_port_free as modbus_check_port
from connectors.modbus.station import connector_config as modbus_layout
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.station import MqttStation
from connectors.mqtt.station import connector_config as mqtt_layout
from connectors.opcua.config import OpcuaSourceConfig
from connectors.opcua.station import OpcuaStation
from connectors.opcua.station import check_port_free as opcua_check_port
from connectors.opcua.station import connector_config as opcua_layout

__all__ = [
    "PLANTED",
    "DemoSetup",
    "PartGenerator",
    "PortMove",
    "SimPart",
    "StationPlan",
    "check_ports",
    "free_port_from",
    "plan_stations",
    "prepare_demo",
    "run_simulation",
]

log = logging.getLogger(__name__)

PLANTED: tuple[str, ...] = ("shift", "trend", "mixture", "outliers")
"""Patterns planted in turn, one per characteristic, in configuration order."""
_PATTERN_ARGS: dict[str, dict[str, float]] = {
    "shift": {"k": 2.0},
    "trend": {"slope": 0.08},
    "mixture": {"k": 4.0},
    "outliers": {"k": 5.0, "p": 0.08},
}
OPERATORS = ("A. Weber", "M. Rossi", "K. Tanaka")
OPERATOR_PARTS = 60
LOT_PARTS = 150


@dataclass(frozen=True, slots=True)
class SimPart:
    """One simulated part as every station takes it."""

    number: int
    serial: str
    values: dict[str, float]
    context: dict[str, str]
    time: datetime


class PartGenerator:
    """Parts of one station: a value per characteristic from its pattern stream, plus context."""

    def __init__(
        self,
        streams: dict[str, PatternStream],
        serial_prefix: str,
        program: str,
        gauge_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.streams = streams
        self.serial_prefix = serial_prefix
        self.program = program
        self.gauge_id = gauge_id
        self.clock = clock
        self.count = 0

    def __call__(self) -> SimPart:
        """The next part."""
        self.count += 1
        n = self.count
        return SimPart(
            number=n,
            serial=f"{self.serial_prefix}{n:06d}",
            values={c: s.next() for c, s in self.streams.items()},
            context={
                "operator": OPERATORS[(n - 1) // OPERATOR_PARTS % len(OPERATORS)],
                "program": self.program,
                "lot": f"LOT-{(n - 1) // LOT_PARTS + 1:04d}",
                "gauge_id": self.gauge_id,
            },
            time=self.clock(),
        )


@dataclass
class StationPlan:
    """A station to start for one configured source, or why it is skipped."""

    source: str
    kind: str
    port: int
    host: str
    characteristics: list[str]
    patterns: dict[str, Pattern]
    expected: dict[str, Any] = field(default_factory=dict)
    topic: str = ""
    name: str = ""
    skip: str = ""

    @property
    def port_key(self) -> str:
        """The dotted configuration key that sets the port."""
        if self.kind == "opcua":
            return f"sources.{self.source}.endpoint"
        if self.kind == "modbus":
            return f"sources.{self.source}.devices[0].transport.port"
        return f"sources.{self.source}.port"

    @property
    def where(self) -> str:
        """A readable listen address."""
        if self.kind == "opcua":
            return f"opc.tcp://{self.host}:{self.port}/"
        if self.kind == "mqtt":
            return f"mqtt://{self.host}:{self.port} topic {self.topic}"
        return f"modbus tcp {self.host}:{self.port} unit 1"


def _pattern(ch: Characteristic, kind: str, start: int) -> Pattern:
    center = ch.limits.center
    if center is None:
        center = ch.nominal
    if center is None and ch.lsl is not None and ch.usl is not None:
        center = (ch.lsl + ch.usl) / 2
    sigma = ch.limits.sigma
    if sigma is None and ch.lsl is not None and ch.usl is not None:
        sigma = (ch.usl - ch.lsl) / 8
    return Pattern(
        kind=kind,  # type: ignore[arg-type]
        nominal=float(center if center is not None else 0.0),
        sigma=float(sigma or 1.0),
        start=start,
        **_PATTERN_ARGS[kind],
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def plan_stations(
    cfg: GatewayConfig, connectors: dict[str, BaseModel], *, start: int = 20
) -> list[StationPlan]:
    """One :class:`StationPlan` per opcua/modbus/mqtt source (others are not simulated)."""
    values: dict[str, list[Characteristic]] = {}
    for ch in cfg.characteristics:
        if ch.value.source is not None:
            values.setdefault(ch.value.source, []).append(ch)
    plans: list[StationPlan] = []
    turn = 0
    for name, model in connectors.items():
        if name not in cfg.sources:
            continue
        chars: list[str] = []
        patterns: dict[str, Pattern] = {}
        for ch in values.get(name, []):
            binding = ch.value.binding
            assert binding is not None  # source and binding go together
            if binding not in patterns:
                chars.append(binding)
                patterns[binding] = _pattern(ch, PLANTED[turn % len(PLANTED)], start)
                turn += 1
        plan = _plan_one(name, model, chars, patterns)
        if plan is None:
            continue
        if not chars:
            plan.skip = "no characteristic takes its value from this source"
        elif not _loopback(plan.host):
            plan.skip = f"{plan.host} is not a loopback address"
        plans.append(plan)
    return plans


def _plan_one(
    name: str, model: BaseModel, chars: list[str], patterns: dict[str, Pattern]
) -> StationPlan | None:
    if isinstance(model, OpcuaSourceConfig):
        url = urlsplit(model.endpoint)
        ready = next((t.ready_node for t in model.triggers if t.ready_node), None) or ""
        station = ready.rsplit("s=", 1)[-1].split(".", 1)[0] or "CMM"
        plan = StationPlan(
            name, "opcua", url.port or 4840, url.hostname or "", chars, patterns, name=station
        )
        plan.expected = opcua_layout(plan.port, chars, station, plan.host)
        return plan
    if isinstance(model, ModbusSourceConfig):
        dev = model.devices[0]
        if not isinstance(dev.transport, TcpTransport):
            return None
        plan = StationPlan(
            name, "modbus", dev.transport.port, dev.transport.host, chars[:2], patterns
        )
        plan.name = dev.name
        if 1 <= len(chars) <= 2:
            plan.expected = modbus_layout(
                plan.port, chars, dev.name, plan.host, poll_interval=dev.poll_interval
            )
        else:
            plan.skip = "the simulated gauge serves 1 or 2 characteristics"
        return plan
    if isinstance(model, MqttSourceConfig):
        topic = model.subscriptions[0].topic
        plan = StationPlan(name, "mqtt", model.port, model.host, chars, patterns, topic=topic)
        plan.name = name
        if "+" in topic or "#" in topic:
            plan.skip = f"topic filter {topic!r} has wildcards; the station needs one topic"
        plan.expected = mqtt_layout(model.host, model.port, topic, model.client_id)
        return plan
    return None


def _check_layout(plan: StationPlan, model: BaseModel) -> None:
    """Warn when the configured source would not read the station as it serves itself."""
    if plan.expected and type(model).model_validate(plan.expected) != model:
        log.warning(
            "source %s: its configuration differs from the simulated station's layout; "
            "the gateway may not read it (expected: %s)",
            plan.source,
            plan.expected,
        )


def _mosquitto_binary() -> str | None:
    path = shutil.which("mosquitto")
    if path is None:
        path = next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)),
            None,
        )
    return path


def _listening(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@contextlib.asynccontextmanager
async def _broker(host: str, port: int, binary: str) -> AsyncIterator[str]:
    """A mosquitto on host:port in a temp dir (stopped by PID); yields a description."""
    with tempfile.TemporaryDirectory(prefix="shopspc-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
            "log_dest stdout\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
        )
        with (Path(tmp) / "mosquitto.log").open("ab") as out:
            proc = subprocess.Popen(
                [binary, "-c", str(conf)], cwd=tmp, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            for _ in range(200):
                if proc.poll() is not None:
                    text = (Path(tmp) / "mosquitto.log").read_text(errors="replace")[-500:]
                    raise RuntimeError(f"mosquitto exited with {proc.returncode}: {text}")
                if _listening(host, port):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"mosquitto does not listen on {host}:{port}")
            yield f"mosquitto (pid {proc.pid}) on {host}:{port}"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)


_LABEL = {"opcua": "OPC UA station", "modbus": "Modbus station", "mqtt": "MQTT broker"}
_NEAR = 50
"""The demo tries this many ports above a taken one before it takes any free port."""


@dataclass(frozen=True, slots=True)
class PortMove:
    """A port the demo found taken by another program, and the free port it uses instead."""

    source: str
    kind: str
    host: str
    busy: int
    port: int

    def __str__(self) -> str:
        return f"{_LABEL[self.kind]}: port {self.busy} busy, using {self.port}"


@dataclass(frozen=True, slots=True)
class DemoSetup:
    """The demo's configuration with every taken port moved (sources and stations agree)."""

    cfg: GatewayConfig
    connectors: dict[str, BaseModel]
    moves: list[PortMove]


def _port_error(kind: str, host: str, port: int, hint: str) -> ConnectorError | None:
    # The broker's port is probed like the gauge's: a plain TCP listen, nothing protocol-specific.
    check = opcua_check_port if kind == "opcua" else modbus_check_port
    where = f"{kind} station {host}:{port}" if kind != "mqtt" else f"mqtt broker {host}:{port}"
    try:
        check(where, host, port, hint)
    except ConnectorError as err:
        return err
    return None


def check_ports(plans: list[StationPlan]) -> None:
    """Raise an ``ExceptionGroup`` of non-retryable :class:`ConnectorError`, one per taken port.

    Only the ports the stations listen on are checked (OPC UA, Modbus); an MQTT
    station publishes to whatever broker listens on its port. Each error names
    the port and the configuration key that sets it.
    """
    errors: list[ConnectorError] = []
    for plan in plans:
        if plan.skip or plan.kind not in ("opcua", "modbus"):
            continue
        hint = f"{plan.port_key} in the configuration"
        err = _port_error(plan.kind, plan.host, plan.port, hint)
        if err is not None:
            errors.append(err)
    if errors:
        raise ExceptionGroup("ports taken by another program", errors)


def _free_port_near(kind: str, host: str, port: int, taken: set[tuple[str, int]]) -> int:
    for candidate in range(port + 1, min(port + 1 + _NEAR, 65536)):
        if (host, candidate) not in taken and _port_error(kind, host, candidate, "") is None:
            return candidate
    with contextlib.closing(socket.socket()) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_from(host: str, port: int) -> int:
    """``port`` if nothing listens there on ``host``, else the next free one above it (else any)."""
    if _port_error("modbus", host, port, "") is None:  # a plain TCP listen, as the gauge's
        return port
    return _free_port_near("modbus", host, port, set())


def _moved(kind: str, data: dict[str, Any], moved: dict[tuple[str, int], int]) -> dict[str, Any]:
    """The source section ``data`` (a model dump) with every moved port rewritten."""
    if kind == "opcua":
        url = urlsplit(data["endpoint"])
        host = url.hostname or ""
        new = moved.get((host, url.port or 4840))
        if new is not None:
            netloc = f"[{host}]:{new}" if ":" in host else f"{host}:{new}"
            data["endpoint"] = urlunsplit(url._replace(netloc=netloc))
    elif kind == "modbus":
        for dev in data["devices"]:
            t = dev["transport"]
            if t.get("type") == "tcp" and (t["host"], t["port"]) in moved:
                t["port"] = moved[(t["host"], t["port"])]
    elif kind == "mqtt" and (data["host"], data["port"]) in moved:
        data["port"] = moved[(data["host"], data["port"])]
    return data


def prepare_demo(cfg: GatewayConfig, connectors: dict[str, BaseModel]) -> DemoSetup:
    """The demo's configuration with each taken station or broker port moved to a free one.

    A port another program holds (a second demo, a real server) moves to the
    next free loopback port above it (else any free one); the sources' endpoints
    are rewritten to match, so the gateway reads the stations where they listen.
    The MQTT broker's port moves only when the demo can start its own mosquitto.
    Nothing else changes; without a taken port the configuration is returned as is.
    """
    plans = [p for p in plan_stations(cfg, connectors) if not p.skip]
    taken = {(p.host, p.port) for p in plans}
    moved: dict[tuple[str, int], int] = {}
    moves: list[PortMove] = []
    for plan in plans:
        key = (plan.host, plan.port)
        if key in moved:
            continue
        if plan.kind == "mqtt" and _mosquitto_binary() is None:
            continue
        if _port_error(plan.kind, plan.host, plan.port, "") is None:
            continue
        new = _free_port_near(plan.kind, plan.host, plan.port, taken)
        taken.add((plan.host, new))
        moved[key] = new
        moves.append(PortMove(plan.source, plan.kind, plan.host, plan.port, new))
    if not moves:
        return DemoSetup(cfg, dict(connectors), [])
    models = dict(connectors)
    sources = dict(cfg.sources)
    for name, section in cfg.sources.items():
        if section.kind not in _LABEL or name not in models:
            continue
        model = models[name]
        models[name] = type(model).model_validate(_moved(section.kind, model.model_dump(), moved))
        sources[name] = ConnectorSection.model_validate(
            {"kind": section.kind, **models[name].model_dump(mode="json")}
        )
    update: dict[str, Any] = {"sources": sources}
    pub = cfg.alarms.mqtt
    if pub is not None and (pub.host, pub.port) in moved:
        # the alarm publisher talks to the same (moved) demo broker
        new_pub = pub.model_copy(update={"port": moved[(pub.host, pub.port)]})
        update["alarms"] = cfg.alarms.model_copy(update={"mqtt": new_pub})
    return DemoSetup(cfg.model_copy(update=update), models, moves)


def _station(plan: StationPlan, rate: float, seed: int) -> Any:
    streams = {
        c: PatternStream(plan.patterns[c], seed * 1000 + i)
        for i, c in enumerate(plan.characteristics)
    }
    prefix = {"opcua": "C-", "modbus": "", "mqtt": "V-"}[plan.kind]
    program = {"opcua": "CMM-PRG-12", "modbus": "GAUGE-3", "mqtt": "VIS-7"}[plan.kind]
    gauge = {"opcua": "CMM-01", "modbus": "MG-17", "mqtt": "CAM-02"}[plan.kind]
    parts = PartGenerator(streams, prefix, program, gauge)
    if plan.kind == "opcua":
        return OpcuaStation(
            plan.port, plan.characteristics, parts, rate=rate, name=plan.name, host=plan.host
        )
    if plan.kind == "modbus":
        return ModbusStation(plan.port, plan.characteristics, parts, rate=rate, host=plan.host)
    return MqttStation(
        plan.host, plan.port, plan.topic, plan.characteristics, parts, rate=rate, name=plan.name
    )


async def _set_when_started(stations: list[Any], ready: asyncio.Event) -> None:
    for station in stations:
        await station.started.wait()
    ready.set()


async def run_simulation(
    cfg: GatewayConfig,
    connectors: dict[str, BaseModel],
    *,
    rate: float = 5.0,
    duration: float | None = None,
    seed: int = 1,
    start: int = 20,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = print,
    ready: asyncio.Event | None = None,
) -> list[Any]:
    """Start the stations (and a broker where needed) and run them until ``stop`` or ``duration``.

    Returns the station objects (with their counters) after a clean shutdown.
    A station port another program holds raises (:func:`check_ports`) before
    anything starts. ``ready`` is set once every station has started (listens,
    or is connected to its broker).
    """
    stop = stop or asyncio.Event()
    plans = plan_stations(cfg, connectors, start=start)
    check_ports(plans)
    stations: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        brokers: dict[tuple[str, int], str] = {}
        for plan in plans:
            if plan.skip:
                continue
            _check_layout(plan, connectors[plan.source])
            if plan.kind != "mqtt" or (plan.host, plan.port) in brokers:
                continue
            binary = _mosquitto_binary()
            if _listening(plan.host, plan.port):
                brokers[(plan.host, plan.port)] = (
                    f"none started: something already listens on {plan.host}:{plan.port}, "
                    "used as the broker"
                )
            elif binary is None:
                plan.skip = "mosquitto is not installed (apt-get install mosquitto); no broker"
            else:
                brokers[(plan.host, plan.port)] = await stack.enter_async_context(
                    _broker(plan.host, plan.port, binary)
                )
        for desc in brokers.values():
            say(f"broker   {desc}")
        for plan in plans:
            if plan.skip:
                say(f"skipped  {plan.kind:6} source {plan.source}: {plan.skip}")
                log.warning(
                    "%s station for source %s skipped: %s", plan.kind, plan.source, plan.skip
                )
                continue
            stations.append(_station(plan, rate, seed))
            planted = ", ".join(
                f"{c}={p.kind}" for c, p in plan.patterns.items() if c in plan.characteristics
            )
            say(f"station  {plan.kind:6} source {plan.source}: {plan.where} ({planted})")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(s.run()) for s in stations]
            if ready is not None:
                tasks.append(tg.create_task(_set_when_started(stations, ready)))
            try:
                async with asyncio.timeout(duration):
                    await stop.wait()
            except TimeoutError:
                pass
            for task in tasks:
                task.cancel()
    return stations
