"""What every connector shares: samples with a quality, errors that say whether to retry,
capped jittered backoff, per-connector counters and the registry of connector kinds.

A connector is a folder under ``connectors/`` (``mqtt/``, ``modbus/``, ``opcua/``,
``influxdb/`` …) with a config model, one adapter module that alone imports the
protocol library and translates its errors and values, a source and/or sink, a
``sample.yaml`` and a README. It registers its kind here by name, so adding one
touches no core file. Connectors never import ``collector``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "Backoff",
    "ConnectorError",
    "ConnectorStats",
    "Emit",
    "Quality",
    "Sample",
    "Sink",
    "Source",
    "register_sink",
    "register_source",
    "sink_class",
    "source_class",
]


class Quality(StrEnum):
    """Sample quality, as OPC UA and the timeseries contract name it."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value read from a device, with where it came from and how good it is.

    ``binding`` is the id of the configured source binding that produced it
    (a characteristic id or a context tag name). ``value`` is NaN when the
    quality is bad (a failed read is a sample with ``quality=bad``, never a
    sentinel number). Times are integer microseconds since the Unix epoch,
    UTC: ``source_time_us`` as the device stamped it (None if it did not),
    ``server_time_us`` as a server/broker stamped it (None if none),
    ``gateway_time_us`` when the gateway received it. ``serial`` is the part
    serial when the source supplies one; ``fields`` carries other values
    captured with the same read or message (context such as lot, operator,
    program); ``status`` is the protocol's own status text for a
    non-good sample (an OPC UA status code name, a Modbus exception).
    """

    binding: str
    value: float
    quality: Quality
    gateway_time_us: int
    source_time_us: int | None = None
    server_time_us: int | None = None
    serial: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    status: str = ""

    @property
    def time_us(self) -> int:
        """The best available timestamp: source, else server, else gateway."""
        if self.source_time_us is not None:
            return self.source_time_us
        if self.server_time_us is not None:
            return self.server_time_us
        return self.gateway_time_us


class ConnectorError(Exception):
    """A connector failure translated from the protocol library.

    ``where`` names the connector and the thing that failed (``modbus gauge-3
    unit 1 holding 40010``); ``retryable`` says whether trying again later can
    help (timeouts, refused connections) or not (bad credentials, an address
    the device does not have).
    """

    def __init__(self, where: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.retryable = retryable


Emit = Callable[[Sequence[Sample]], Awaitable[None]]


class Source(Protocol):
    """An input connector: reads devices and hands batches of samples to ``emit``.

    ``run`` runs until cancelled. It reconnects by itself with :class:`Backoff`
    (rebuilding subscriptions), logs losing and regaining a device once each
    way, and keeps :attr:`stats` current; it raises only for errors that are
    not retryable.
    """

    name: str
    stats: ConnectorStats

    async def run(self, emit: Emit) -> None: ...


class Sink(Protocol):
    """An output connector: writes batches; raises :class:`ConnectorError` on failure."""

    name: str
    stats: ConnectorStats

    async def write(self, batch: Sequence[Any]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class ConnectorStats:
    """Counters and state a connector keeps for the gateway's self-metrics."""

    state: str = "starting"  # starting, connected, disconnected, stopped
    samples: int = 0
    bad_samples: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str = ""


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter: delay ∈ [0, min(cap, base·2^attempt)).

    ``rng`` is injectable so tests are deterministic. Call :meth:`next_delay`
    after each failure and :meth:`reset` after a success.
    """

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (seconds)."""
        ceiling = min(self.cap, self.base * math.pow(2.0, min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Forget past failures."""
        self.attempt = 0


_SOURCES: dict[str, type] = {}
_SINKS: dict[str, type] = {}


def register_source(kind: str) -> Callable[[type], type]:
    """Class decorator: register an input connector under ``kind`` (e.g. ``mqtt``)."""

    def deco(cls: type) -> type:
        if kind in _SOURCES and _SOURCES[kind] is not cls:
            raise ValueError(f"source kind {kind!r} is registered twice")
        _SOURCES[kind] = cls
        return cls

    return deco


def register_sink(kind: str) -> Callable[[type], type]:
    """Class decorator: register an output connector under ``kind`` (e.g. ``influxdb``)."""

    def deco(cls: type) -> type:
        if kind in _SINKS and _SINKS[kind] is not cls:
            raise ValueError(f"sink kind {kind!r} is registered twice")
        _SINKS[kind] = cls
        return cls

    return deco


def source_class(kind: str) -> type:
    """The registered source class for ``kind`` (KeyError names the known kinds)."""
    _load_builtin()
    try:
        return _SOURCES[kind]
    except KeyError:
        raise KeyError(
            f"unknown source kind {kind!r} (known: {', '.join(sorted(_SOURCES))})"
        ) from None


def sink_class(kind: str) -> type:
    """The registered sink class for ``kind``."""
    _load_builtin()
    try:
        return _SINKS[kind]
    except KeyError:
        raise KeyError(f"unknown sink kind {kind!r} (known: {', '.join(sorted(_SINKS))})") from None


def _load_builtin() -> None:
    """Import every connector folder so each registers itself (no core file lists them)."""
    import importlib
    import pkgutil

    import connectors

    for mod in pkgutil.iter_modules(connectors.__path__):
        if mod.ispkg:
            importlib.import_module(f"connectors.{mod.name}")
