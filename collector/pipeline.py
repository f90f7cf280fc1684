"""The live gateway pipeline: sources → queue → SPC engine → durable outbox → sinks.

One :class:`Gateway` runs everything in one ``asyncio.TaskGroup``: the alarm
notifiers, a task per source connector, the processor, the appender, the sink
drainer, the periodic state saver and the limits watcher.

* **Queue.** Sources hand batches to one bounded ``asyncio.Queue`` (``queue_size``
  batches). Overflow policy: *back-pressure* — a source's ``emit`` waits until
  there is room (its own bounded buffer then applies its own policy); every
  wait is counted in ``queue_waits``. Nothing is dropped here. ``emit`` returns
  only after the batch's lines are committed to the outbox (OPC UA and Modbus
  trigger acks follow it); ``emit.nowait`` returns a future done at that commit,
  for a source that acknowledges later, in order, and keeps receiving meanwhile
  (MQTT QoS 1). Either way no peer is acknowledged for a value ``kill -9`` could
  still lose. Values typed in by hand come through :meth:`Gateway.enter`
  (source ``manual``).
* **Mapping.** A binding index built once maps (source, binding id) to the
  characteristics it feeds and to the context values it carries. Context
  bindings keep the latest value per binding (also taken from ``Sample.fields``
  when a source supplies context in the same message); each accepted sample's
  context snapshot is written as *fields* of its ``measurement`` line.
* **Judging.** Duplicates are dropped by (station, serial, characteristic) with a
  bounded LRU, never by value. Only good-quality values are charted; bad and
  uncertain samples are stored only. Subgroups are ``subgroup.size`` consecutive
  parts (the engine's own subgrouping); a change of a ``close_on`` context or
  an elapsed ``window_s`` closes the open subgroup early by padding it with
  missing observations (NaN). A characteristic without configured limits starts
  in Phase I: it collects ``limits.phase1_subgroups`` subgroups, estimates and
  freezes a :class:`~spc.limits.LimitsRecord` (provenance ``phase1``), then the
  collected values are judged against it and later ones stream through the
  engine (Phase II). Configured ``center``/``sigma`` start in Phase II at once
  (method ``known``).
* **Outputs.** Every sample → a ``measurement`` line; every plotted point → an
  ``spc`` line. Every plotted point (centre and dispersion chart) goes to the
  alarm lifecycle (:class:`collector.alarms.AlarmManager`, ``data_dir/alarms.db``):
  one active alarm per (characteristic, chart, rule), events committed to its
  own outbox before the MQTT/webhook notifiers publish them (they are woken
  at once; the alarm path never waits for the series sinks), ``alarm`` lines,
  a log line and the ``on_alarm`` callback per raised alarm. Process-state
  tags (``alarms.process_state``) suppress raising; acknowledgements and other
  operator commands arrive on the MQTT command topics (:meth:`Gateway.on_command`)
  or from the HTTP API (:meth:`Gateway.command`). Lines are appended to the outbox
  stream ``series`` (``NORMAL`` durability: survives ``kill -9``), up to
  ``CHUNK_LINES`` lines per entry, before they count as accepted; the
  stream is bounded in bytes (``outbox_max_bytes``, back-pressure when full). The
  drainer writes them to every sink in writes of up to ``CHUNK_LINES`` lines (a
  smaller batch waits at most ``series_linger_s`` for more; a ``localstore`` at ``data_dir/series.db``
  when none is configured), acks on success, retries later with ``Backoff`` on
  a retryable :class:`~connectors.base.ConnectorError` and dead-letters lines
  a sink rejects as malformed. The processor judges each batch at once (alarms
  are committed and published there) but encodes the ``measurement`` and ``spc``
  lines of the batches judged within ``series_defer_s`` in one go (encoding has a
  fixed cost per call that a message or two per batch paid each time), then
  hands them to an appender that commits several of those at once while the
  next batches are judged (it waits ``commit_linger_s`` after the first for
  more: a group commit). The batches' futures resolve after that commit.
* **Checkpoints.** The alarm file's WAL is checkpointed from a worker thread
  every ``checkpoint_interval_s``, so no alarm commit on the loop copies it.
* **Limits.** Every record in force comes from the audited limits store
  (:class:`collector.limitstore.LimitsStore`, ``data_dir/limits.db``): configured
  standards and frozen Phase I limits are assigned there (audited, user
  ``gateway <id>``); records assigned meanwhile with ``shopspc limits`` (also
  future-dated ones) are put into force within ``limits_poll_s`` and published
  on the characteristic's retained state topic. A legacy ``limits.json`` is
  adopted once.
* **Garbage collection.** With ``freeze_gc`` (``shopspc run``) what start-up
  built is moved out of the collector's reach (``gc.freeze``) before the
  tasks start (and given back when ``run`` ends): a full collection walking
  it paused the loop for 40–80 ms.
* **State.** The engine snapshot (``engine.npz`` + ``state.json``) and the alarms'
  sample windows (``alarm_rings.json``) are saved every ``save_interval_s`` and at
  shutdown; on start they are restored if the characteristics are unchanged.
* **Shutdown.** Set the stop event (SIGTERM/SIGINT in ``shopspc run``): sources
  are cancelled first, the queue is drained, the outbox is flushed to the sinks
  within ``drain_deadline_s``, state is saved, sinks and outbox are closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from collector.alarms import (
    AlarmChar,
    AlarmError,
    AlarmManager,
    Outcome,
    PointBatch,
    alarm_id,
)
from collector.config import Binding, Characteristic, GatewayConfig
from collector.limitstore import LimitsStore, LimitsStoreError
from collector.outbox import Outbox, OutboxError, OutboxFull, StreamPolicy
from collector.timefmt import parse_rfc3339, rfc3339
from connectors.base import Backoff, ConnectorError, Quality, Sample, sink_class, source_class
from connectors.influxdb.lineprotocol import (
    encode_rows,
    fields_text,
    gateway_line,
    series_prefix,
)
from spc.charts.attributes import estimate_c, estimate_np, estimate_p, estimate_u
from spc.charts.variables import estimate_imr, estimate_xbar
from spc.engine import Engine, Points, Spec, encode_snapshot
from spc.errors import SpcInputError
from spc.limits import LimitsRecord
from spc.rules import BITS

__all__ = [
    "CONTEXT_FIELD",
    "AlarmEvent",
    "BindingIndex",
    "CharView",
    "Gateway",
    "GatewayStats",
    "JudgedPoints",
    "alarm_id",
    "batch_ranks",
    "chart_params",
    "contract_context",
    "merge_judged",
    "subgroup_width",
    "violation_codes",
]

log = logging.getLogger(__name__)

STREAM = "series"
MANUAL = "manual"  # the source name of values entered by hand (binding = characteristic path)
CHUNK_LINES = 5000  # lines per outbox entry and per delivery to the sinks
WINDOW_M = 25  # subgroup width when only subgroup.window_s shapes an X̄ subgroup
_SIZED = ("p", "np", "u")  # charts that need a sample size with each count
_CODES = sorted(BITS.items(), key=lambda kv: kv[1])
# the alarm contract's chart names: centre chart and dispersion chart per configured chart
_CENTRE_CHART = {
    "imr": "x",
    "xbar-r": "xbar",
    "xbar-s": "xbar",
    "p": "p",
    "np": "np",
    "c": "c",
    "u": "u",
    "ewma": "ewma",
    "cusum": "cusum",
}
_DISP_CHART = {"imr": "mr", "xbar-r": "r", "xbar-s": "s"}
_ALARM_TICK_US = 1_000_000  # shelve expiry, flood end: checked about once a second
_DEFER_MAX_VALUES = 1000  # values judged but not yet encoded: encoded now, whatever the time


def violation_codes(mask: int) -> list[str]:
    """Rule codes (``spc.rules.BITS``) set in a violation mask, in bit order."""
    return [code for code, bit in _CODES if mask >> bit & 1]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shopspc")
    except PackageNotFoundError:
        return "0+unknown"


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class GatewayStats:
    """The pipeline's self-metrics (counters since start, plus current depths)."""

    samples_in: int = 0
    unmapped: int = 0
    context_samples: int = 0
    bad: int = 0
    duplicates: int = 0
    charted: int = 0
    points: int = 0
    alarms: int = 0
    phase1_frozen: int = 0
    queue_waits: int = 0
    queue_depth: int = 0
    outbox_full_waits: int = 0
    outbox_pending: int = 0
    lines_appended: int = 0
    lines_written: int = 0
    lines_dead: int = 0
    sink_errors: int = 0
    engine_errors: int = 0
    source_failures: int = 0
    no_size: int = 0
    unknown_part: int = 0
    alarm_events: int = 0
    alarm_errors: int = 0
    alarm_pending: int = 0
    commands: int = 0
    bad_commands: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (stable int types, for the ``gateway`` line)."""
        return asdict(self)


@dataclass(frozen=True)
class JudgedPoints:
    """One batch of plotted points as :attr:`Gateway.point_listeners` get it (columnar).

    Row j: ``points`` row j (characteristic ``points.char[j]``, statistic,
    limits, violation masks, dispersion chart), ``time_us[j]`` the completing
    sample's source time, ``serial[j]`` its part serial, ``limits_id[j]`` the
    record judged against, ``violations[j]`` the rule codes ("N1,N5" or ""),
    ``context[j]`` the completing sample's 5M1E snapshot (measurement field
    names; :func:`contract_context` gives the alarm contract's shape) or None.
    Only the first ``n`` rows of ``points`` belong to the batch.
    """

    points: Points
    n: int
    time_us: np.ndarray
    serial: list[str | None]
    limits_id: list[str]
    violations: list[str]
    context: list[Mapping[str, Any] | None] = field(default_factory=list)


def merge_judged(parts: Sequence[JudgedPoints]) -> JudgedPoints:
    """The batches ``parts`` as one, rows in order (``parts[0]`` itself when it is alone)."""
    if len(parts) == 1:
        return parts[0]
    cols = {
        f.name: np.concatenate([getattr(p.points, f.name)[: p.n] for p in parts])
        for f in fields(Points)
    }
    return JudgedPoints(
        Points(**cols),
        sum(p.n for p in parts),
        np.concatenate([np.asarray(p.time_us[: p.n], dtype=np.int64) for p in parts]),
        [x for p in parts for x in p.serial[: p.n]],
        [x for p in parts for x in p.limits_id[: p.n]],
        [x for p in parts for x in p.violations[: p.n]],
        [x for p in parts for x in (p.context[: p.n] if p.context else [None] * p.n)],
    )


@dataclass
class CharView:
    """What the live table shows of one characteristic."""

    path: str
    id: str
    unit: str
    phase: str  # "phase1", "phase2" or "uncharted"
    last_value: float = math.nan
    n_samples: int = 0
    n_points: int = 0
    center: float = math.nan
    lcl: float = math.nan
    ucl: float = math.nan
    in_control: bool = True
    last_rule: str = ""
    phase1_have: int = 0
    phase1_need: int = 0


@dataclass(frozen=True)
class AlarmEvent:
    """A raised alarm as the live screen shows it (:meth:`of` the contract payload)."""

    alarm_id: str
    path: str
    characteristic: str
    chart: str
    rule: str
    severity: str
    value: float
    center: float
    lcl: float
    ucl: float
    limits_id: str
    time_us: int
    serial: str | None

    @classmethod
    def of(cls, p: Mapping[str, Any]) -> AlarmEvent:
        """From an alarm event payload (``contracts/alarms-mqtt.md``)."""

        def num(key: str) -> float:
            v = p.get(key)
            return math.nan if v is None else float(v)

        path = "/".join(str(p.get(k, "")) for k in _PATH_KEYS)
        return cls(
            p["alarm_id"],
            path,
            p["characteristic"],
            p["chart"],
            p["rule"],
            p["severity"],
            num("value"),
            num("center"),
            num("lcl"),
            num("ucl"),
            p.get("limits_id") or "",
            parse_rfc3339(p["sample_time"]),
            p.get("part_serial"),
        )


_PATH_KEYS = ("site", "area", "line", "station", "characteristic")


# --------------------------------------------------------------------------- bindings


def _context_fields(ch: Characteristic) -> list[tuple[str, Binding]]:
    """(field name, binding) of a characteristic's 5M1E context, in a stable order."""
    c = ch.context
    out: list[tuple[str, Binding]] = []
    for name, b in (
        ("operator", c.operator),
        ("machine", c.machine),
        ("lot", c.material_lot),
        ("method", c.method),
    ):
        if b is not None:
            out.append((name, b))
    for name, b in c.environment.items():
        out.append((f"env_{name}", b))
    if c.gauge is not None:
        out.append(("gauge_id", c.gauge.id))
        if c.gauge.calibration_due is not None:
            out.append(("gauge_calibration_due", c.gauge.calibration_due))
    for name, b in c.extra.items():
        key = name if name not in ("value", "quality", "serial", "status") else f"extra_{name}"
        out.append((key, b))
    return out


#: Context names in the configuration (``close_on``, ``shortrun.by``) → measurement field names.
CONTEXT_FIELD = {
    "operator": "operator",
    "machine": "machine",
    "material_lot": "lot",
    "method": "method",
    "gauge": "gauge_id",
}


def contract_context(snapshot: Mapping[str, Any], at_us: int | None = None) -> dict[str, Any]:
    """A context snapshot (measurement field names) in the alarm contract's shape.

    ``operator``, ``machine``, ``material_lot``, ``method``, ``environment``
    (an object: ``{"temperature": 21.5}``), ``gauge`` (``id``,
    ``calibration_due`` and, with ``at_us``, ``calibration_status`` ``ok`` or
    ``overdue``) and ``extra``; missing keys are left out.
    """
    out: dict[str, Any] = {}
    env: dict[str, Any] = {}
    gauge: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, v in snapshot.items():
        if v is None:
            continue
        if key in ("operator", "machine", "method"):
            out[key] = v
        elif key == "lot":
            out["material_lot"] = v
        elif key.startswith("env_"):
            env[key[4:]] = v
        elif key == "gauge_id":
            gauge["id"] = v
        elif key == "gauge_calibration_due":
            gauge["calibration_due"] = v
            due = _due_us(v)
            if at_us is not None and due is not None:
                gauge["calibration_status"] = "ok" if at_us < due else "overdue"
        elif key != "status":
            extra[key] = v
    if env:
        out["environment"] = env
    if gauge:
        out["gauge"] = gauge
    if extra:
        out["extra"] = extra
    return out


def _due_us(v: Any) -> int | None:
    """A calibration due date (``2026-12-31`` or RFC 3339) as µs: the end of that day, UTC."""
    text = str(v)
    try:
        us = parse_rfc3339(text)
    except ValueError:
        return None
    return us + 86_400_000_000 if len(text) == 10 else us


def _context_key(by: str) -> str:
    """The context field a short-run ``by`` names (config names → measurement field names)."""
    return CONTEXT_FIELD.get(by, by)


def _static(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)  # dates


class BindingIndex:
    """(source, binding) → characteristics and context, built once from the configuration.

    ``values[(source, binding)]`` lists the indices of the characteristics whose
    value the binding carries; ``context`` keeps the latest value of every
    context (and serial) binding; :meth:`snapshot` gives a characteristic's
    context fields at this moment.
    """

    def __init__(self, characteristics: Sequence[Characteristic]) -> None:
        self.values: dict[tuple[str, str], list[int]] = {}
        self.wanted: set[tuple[str, str]] = set()
        self._ctx: list[list[tuple[str, Any, tuple[str, str] | None]]] = []
        self._serial: list[tuple[str, str] | None] = []
        self._size: list[tuple[str, str] | float | None] = []
        self.latest: dict[tuple[str, str], Any] = {}
        for i, ch in enumerate(characteristics):
            self.values.setdefault((ch.value.source, ch.value.binding), []).append(i)  # type: ignore[arg-type]
            row = []
            for name, b in _context_fields(ch):
                if b.source is not None:
                    key = (b.source, b.binding)
                    self.wanted.add(key)  # type: ignore[arg-type]
                    row.append((name, None, key))
                else:
                    row.append((name, _static(b.static), None))
            self._ctx.append(row)  # type: ignore[arg-type]
            s = ch.serial
            if s is not None and s.source is not None:
                self.wanted.add((s.source, s.binding))  # type: ignore[arg-type]
                self._serial.append((s.source, s.binding))  # type: ignore[arg-type]
            else:
                self._serial.append(None)
            z = ch.sample_size
            if z is not None and z.source is not None:
                self.wanted.add((z.source, z.binding))  # type: ignore[arg-type]
                self._size.append((z.source, z.binding))  # type: ignore[arg-type]
            elif z is not None:
                self._size.append(_number(z.static))
            else:
                self._size.append(None)
        self._wanted_by_source: dict[str, set[str]] = {}
        for src, b in self.wanted:
            self._wanted_by_source.setdefault(src, set()).add(b)

    def observe(self, source: str, samples: Sequence[Sample]) -> int:
        """Take the context values a batch carries (bindings and ``fields``); returns how many samples were context."""
        names = self._wanted_by_source.get(source)
        if not names:
            return 0
        n = 0
        for s in samples:
            if s.fields:
                for key, v in s.fields.items():
                    if key in names and v is not None:
                        self.latest[(source, key)] = v
            if s.binding in names:
                n += 1
                if s.quality is Quality.GOOD and not math.isnan(s.value):
                    v = s.value
                    self.latest[(source, s.binding)] = int(v) if v.is_integer() else v
                elif "raw" in s.fields:
                    self.latest[(source, s.binding)] = s.fields["raw"]
        return n

    def snapshot(
        self, i: int, source: str | None = None, own: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Characteristic ``i``'s context fields now (missing values left out).

        ``own``: the fields a sample of ``source`` carries itself (its part's
        operator, lot … in the same message); they win over the latest values,
        so each part of a batch keeps its own context.
        """
        out: dict[str, Any] = {}
        for name, static, key in self._ctx[i]:
            if key is None:
                v = static
            elif own and key[0] == source and key[1] in own:
                v = own[key[1]]
            else:
                v = self.latest.get(key)
            if v is not None:
                out[name] = v
        return out

    def serial(self, i: int, sample: Sample) -> str | None:
        """The part serial of a sample of characteristic ``i`` (the sample's own, else its serial binding)."""
        if sample.serial is not None:
            return str(sample.serial)
        key = self._serial[i]
        if key is None:
            return None
        v = self.latest.get(key)
        return None if v is None else str(v)

    def size(self, i: int) -> float:
        """Characteristic ``i``'s sample size now (static or the latest bound value); NaN if unknown."""
        key = self._size[i]
        if key is None or isinstance(key, float):
            return math.nan if key is None else key
        return _number(self.latest.get(key))


def _number(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


class _Dedup:
    """A bounded LRU of (station, serial, characteristic) keys already accepted."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def seen(self, key: tuple[str, str, int], remember: bool = True) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        if not remember:
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False


# --------------------------------------------------------------------------- per characteristic


def batch_ranks(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, how many earlier rows of the batch have its key, and each key's count.

    ``keys`` are integers in ``0..size-1`` (characteristic indices); the ranks
    follow arrival order (a stable sort). Used for subgroup completion here and
    for the ring buffers of recent points (:mod:`collector.api.recent`).
    """
    n = keys.shape[0]
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.empty(n, dtype=bool)
    first[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - start
    return rank, np.bincount(keys, minlength=size)


def subgroup_width(ch: Characteristic) -> int:
    """Values per engine subgroup."""
    if ch.chart in ("xbar-r", "xbar-s") and ch.subgroup.size < 2:
        return WINDOW_M
    if ch.chart in ("p", "np", "c", "u"):
        return 1
    return ch.subgroup.size


def chart_params(ch: Characteristic) -> tuple[tuple[str, float], ...]:
    """The chart parameters a limits record keeps (its content id depends on them)."""
    return (("nsigmas", float(ch.nsigmas)),)


def _known_record(ch: Characteristic) -> LimitsRecord | None:
    lim = ch.limits
    if lim.center is None and ch.shortrun is not None and ch.shortrun.kind == "zmr":
        # standardised by each part's own σ: the chart's standards are 0 and 1 by construction
        return LimitsRecord(
            chart=ch.chart,
            center=0.0,
            sigma=1.0,
            method="known",
            n_points=0,
            params=chart_params(ch),
            created_by="config",
        )
    if lim.center is None:
        return None
    if ch.chart not in ("p", "np", "c", "u") and lim.sigma is None:
        return None
    sigma = math.nan if lim.sigma is None or ch.chart in ("p", "np", "c", "u") else lim.sigma
    return LimitsRecord(
        chart=ch.chart,
        center=float(lim.center),
        sigma=float(sigma),
        method="known",
        n_points=0,
        params=chart_params(ch),
        created_by="config",
    )


def _spec(ch: Characteristic, record: LimitsRecord | None) -> Spec:
    kwargs: dict[str, Any] = {
        "subgroup_size": subgroup_width(ch),
        "nsigmas": float(ch.nsigmas),
        "rules": ch.rules,
        "rules_dispersion": ch.rules_dispersion,
        "rule_params": ch.rule_params or None,
    }
    if record is not None:
        return Spec.from_limits(ch.chart, record, **kwargs)
    # a placeholder until Phase I freezes limits: never fed before set_limits
    center = 0.5 if ch.chart in ("p", "np", "c", "u") else 0.0
    return Spec(chart=ch.chart, center=center, sigma=1.0, **kwargs)


def estimate_phase1(
    ch: Characteristic,
    values: np.ndarray,
    times_us: Sequence[int],
    now_us: int,
    *,
    sizes: np.ndarray | None = None,
) -> LimitsRecord:
    """Freeze Phase I limits from ``values`` (NaN-padded subgroups of the engine's width).

    ``sizes``: the sample size of each count (p, np and u charts).
    """
    m = subgroup_width(ch)
    if ch.chart in _SIZED:
        if sizes is None:
            raise ValueError(f"a {ch.chart} chart needs the sample sizes of its counts")
        keep = ~np.isnan(values)
        estimator = {"p": estimate_p, "np": estimate_np, "u": estimate_u}[ch.chart]
        est = estimator(values[keep], np.asarray(sizes, dtype=np.float64)[keep])
    elif ch.chart == "c":
        est = estimate_c(values[~np.isnan(values)])
    elif m == 1:
        est = estimate_imr(values)
    else:
        method = "sbar" if ch.chart == "xbar-s" else "rbar"
        est = estimate_xbar(values.reshape(-1, m), method=method)
    n_points = values.size // m
    return LimitsRecord(
        chart=ch.chart,
        center=float(est.center),
        sigma=float(est.sigma),
        method=est.method,
        n_points=n_points,
        window=(rfc3339(times_us[0]), rfc3339(times_us[-1])) if times_us else ("", ""),
        params=chart_params(ch),
        created_by="phase1",
        created_at=rfc3339(now_us),
    )


class _Fed:
    """Columns of good values on their way to Phase I or the engine (also a Phase I buffer)."""

    __slots__ = ("ctx", "idx", "serial", "size", "time", "val")

    def __init__(self) -> None:
        self.idx: list[int] = []
        self.val: list[float] = []
        self.size: list[float] = []
        self.time: list[int] = []
        self.serial: list[str | None] = []
        self.ctx: list[Mapping[str, Any] | None] = []  # the sample's context snapshot

    def add(
        self,
        i: int,
        value: float,
        size: float,
        time_us: int,
        serial: str | None,
        ctx: Mapping[str, Any] | None = None,
    ) -> None:
        self.idx.append(i)
        self.val.append(value)
        self.size.append(size)
        self.time.append(time_us)
        self.serial.append(serial)
        self.ctx.append(ctx)

    def extend(self, other: _Fed) -> None:
        self.idx += other.idx
        self.val += other.val
        self.size += other.size
        self.time += other.time
        self.serial += other.serial
        self.ctx += other.ctx


class _Rows:
    """Columns of accepted samples for their ``measurement`` lines."""

    __slots__ = ("extra", "prefix", "quality", "serial", "time", "value")

    def __init__(self) -> None:
        self.prefix: list[str] = []
        self.value: list[float] = []
        self.quality: list[str] = []
        self.serial: list[str | None] = []
        self.extra: list[str] = []
        self.time: list[int] = []

    def add(
        self, prefix: str, value: float, quality: str, serial: str | None, extra: str, t: int
    ) -> None:
        self.prefix.append(prefix)
        self.value.append(value)
        self.quality.append(quality)
        self.serial.append(serial)
        self.extra.append(extra)
        self.time.append(t)


# --------------------------------------------------------------------------- the gateway


async def _cancel_all(tasks: Sequence[asyncio.Task], interval: float = 0.5) -> None:
    """Cancel tasks and wait for them, cancelling again while any is still running.

    Python 3.11's ``asyncio.wait_for`` (used inside protocol libraries) can
    swallow a cancellation that arrives while the wrapped call finishes; the
    source then sleeps and retries as if nothing happened. A repeated cancel
    reaches it at its next await.
    """
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=interval)
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


class Gateway:
    """The running gateway (see the module docstring).

    ``connector_models`` is what :func:`collector.config.load_config` returns
    beside the config. ``data_dir`` defaults to ``cfg.gateway.data_dir``.
    ``sources`` / ``sinks`` replace the configured connectors (tests).
    ``on_alarm`` is called for every raised alarm.
    """

    def __init__(
        self,
        cfg: GatewayConfig,
        connector_models: Mapping[str, BaseModel],
        *,
        data_dir: str | os.PathLike[str] | None = None,
        sources: Sequence[Any] | None = None,
        sinks: Sequence[Any] | None = None,
        queue_size: int = 1000,
        dedup_size: int = 100_000,
        drain_deadline_s: float = 10.0,
        save_interval_s: float = 5.0,
        metrics_interval_s: float = 10.0,
        limits_poll_s: float = 1.0,
        series_linger_s: float = 0.2,
        commit_linger_s: float = 0.01,
        series_defer_s: float = 0.005,
        checkpoint_interval_s: float = 0.5,
        freeze_gc: bool = False,
        outbox_max_bytes: int = 2 * 1024**3,
        on_alarm: Callable[[AlarmEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.gateway_id = cfg.gateway.id
        self.data_dir = Path(data_dir if data_dir is not None else cfg.gateway.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.chars = list(cfg.characteristics)
        self.paths = [c.path for c in self.chars]
        self._fp: str | None = None
        self._fingerprint()  # once, now (the state saves on the loop reuse it)
        self.index = BindingIndex(self.chars)
        self.stats = GatewayStats()
        self.drain_deadline_s = drain_deadline_s
        self.save_interval_s = save_interval_s
        self.metrics_interval_s = metrics_interval_s
        self.limits_poll_s = limits_poll_s
        self.series_linger_s = series_linger_s
        self.commit_linger_s = commit_linger_s
        self.series_defer_s = series_defer_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.freeze_gc = freeze_gc
        self.on_alarm = on_alarm
        self._dedup = _Dedup(dedup_size)
        self._queue: asyncio.Queue[tuple[str, list[Sample], asyncio.Future[None]]] = asyncio.Queue(
            queue_size
        )
        self._kinds = {name: sec.kind for name, sec in cfg.sources.items()}
        if sources is None:
            sources = [
                source_class(sec.kind)(connector_models[name], name)
                for name, sec in cfg.sources.items()
            ]
        self.sources = list(sources)
        for s in self.sources:
            self._kinds.setdefault(s.name, getattr(s, "kind", "manual"))
        if sinks is None:
            sinks = [
                sink_class(sec.kind)(connector_models[name], name)
                for name, sec in cfg.sinks.items()
            ]
            if not sinks:
                from connectors.localstore.config import LocalStoreConfig

                sinks = [
                    sink_class("localstore")(
                        LocalStoreConfig(path=str(self.data_dir / "series.db")), "local"
                    )
                ]
        self.sinks = list(sinks)
        precisions = {getattr(s, "precision", "us") for s in self.sinks}
        if len(precisions) > 1:
            raise ValueError(f"sinks disagree on timestamp precision: {sorted(precisions)}")
        self.precision = precisions.pop() if precisions else "us"
        self.outbox = Outbox(
            self.data_dir / "outbox.db",
            streams={STREAM: StreamPolicy(synchronous="NORMAL", max_bytes=outbox_max_bytes)},
        )
        self._aio = self.outbox.aio
        # processor → appender: (lines, futures of the batches they came from); bounded
        self._appends: asyncio.Queue[tuple[list[str], list[asyncio.Future[None]]] | None] = (
            asyncio.Queue(64)
        )
        self._sink_backoff = Backoff(base=0.5, cap=30.0)
        self._wake = asyncio.Event()
        self._processor_done = asyncio.Event()
        self._sources_done = False
        self._last_metrics = 0.0
        # per characteristic: engine width, fill of the open subgroup, open subgroup start
        K = len(self.chars)
        self._m = np.array([subgroup_width(c) for c in self.chars], dtype=np.int64)
        self._fill = np.zeros(K, dtype=np.int64)
        self._open_since = np.zeros(K, dtype=np.int64)
        self._open_gw = np.zeros(K, dtype=np.int64)
        self._windowed = [
            (i, int(c.subgroup.window_s * 1e6))
            for i, c in enumerate(self.chars)
            if c.subgroup.window_s is not None and subgroup_width(c) > 1
        ]
        self._last_time = np.zeros(K, dtype=np.int64)
        self._last_serial: list[str | None] = [None] * K
        self._close_ctx: list[tuple[Any, ...] | None] = [None] * K
        self._closing = [bool(c.subgroup.close_on or c.subgroup.window_s) for c in self.chars]
        self._sized = [c.chart in _SIZED for c in self.chars]
        self._any_sized = any(self._sized)
        self._shortrun: list[tuple[str, str, dict[str, tuple[float, float]]] | None] = [
            None
            if c.shortrun is None
            else (
                c.shortrun.kind,
                _context_key(c.shortrun.by),
                {k: (t.nominal, t.sigma or math.nan) for k, t in c.shortrun.targets.items()},
            )
            for c in self.chars
        ]
        self._warned: set[tuple[int, str]] = set()
        self._mprefix: dict[tuple[int, str], str] = {}
        # judged but not yet encoded (see flush_series): measurement rows, spc point columns,
        # the live views' newest points
        self._pend_rows = _Rows()
        self._pend_pts: list[tuple[list[int], dict[str, Any], np.ndarray]] = []
        self._pend_views: list[tuple[np.ndarray, ...]] = []
        self._pend_judged: list[JudgedPoints] = []  # for the point listeners, merged at a flush
        self._sprefix = [
            series_prefix(
                "spc",
                {
                    "gateway": self.gateway_id,
                    "line": c.line,
                    "station": c.station,
                    "characteristic": c.id,
                    "chart": c.chart,
                },
            )
            for c in self.chars
        ]
        self.records: dict[int, LimitsRecord] = {}
        self._phase1: dict[int, _Fed] = {}
        self.views = [
            CharView(path=c.path, id=c.id, unit=c.unit, phase="phase2") for c in self.chars
        ]
        self._path_index = {c.path: i for i, c in enumerate(self.chars)}
        self._centre_names = np.array([_CENTRE_CHART[c.chart] for c in self.chars], dtype=object)
        self._disp_names = np.array([_DISP_CHART.get(c.chart) for c in self.chars], dtype=object)
        self._has_disp = np.array([c.chart in _DISP_CHART for c in self.chars], dtype=bool)
        self.alarms = AlarmManager(
            self.data_dir / "alarms.db",
            [AlarmChar.of(c, c.klass) for c in self.chars],
            cfg.alarms,
            gateway_id=self.gateway_id,
            webhook=cfg.alarms.webhook is not None,
            mqtt=cfg.alarms.mqtt is not None,
            precision=self.precision,
        )
        self.start_time_us = _now_us()
        self._alarm_backlog: list[PointBatch] = []  # judged points whose alarms await a commit
        self._extra_lines: list[str] = []  # lines of acks and other events outside process()
        self._last_tick = 0
        self.notifiers: list[Any] = []  # alarm publishers woken after each alarm commit
        # called in the event loop (HTTP API): point listeners at each flush_series with the
        # points judged since, merged into one batch (merge_judged); alarm listeners with each
        # alarm outcome, after its publish
        self.point_listeners: list[Callable[[JudgedPoints], None]] = []
        self.alarm_listeners: list[Callable[[Outcome], None]] = []
        # process-state tags: (source, binding) → scope keys of the alarm manager
        self._proc_bind: dict[tuple[str, str], list[str]] = {}
        for ps in cfg.alarms.process_state:
            self._proc_bind.setdefault((ps.source, ps.binding), []).append(ps.key)
            self.index.wanted.add((ps.source, ps.binding))
        self._proc_sources = {src for src, _ in self._proc_bind}
        try:
            self._setup_limits()
        except BaseException:
            self.alarms.close()
            self.outbox.close()
            if hasattr(self, "limits_store"):
                self.limits_store.close()
            raise

    # ------------------------------------------------------------------ limits and state

    def _fingerprint(self) -> str:
        # the characteristics never change in a gateway's life; dumping them all took about
        # 1 ms, on the event loop at every state save
        if self._fp is None:
            body = json.dumps(
                [c.model_dump(mode="json", exclude_defaults=True) for c in self.chars],
                sort_keys=True,
            )
            self._fp = hashlib.sha256(body.encode()).hexdigest()[:16]
        return self._fp

    def _setup_limits(self) -> None:
        """Limits in force from the audited store; configured standards and Phase I go there too."""
        store = self.limits_store = LimitsStore(self.data_dir / "limits.db")
        legacy = self.data_dir / "limits.json"
        if legacy.exists() and not store.paths():
            try:
                changes = store.import_json(legacy, user=f"gateway {self.gateway_id}")
                log.info("adopted %d limits records of %s into %s", len(changes), legacy, store)
            except (LimitsStoreError, ValueError, OSError) as exc:
                log.error("%s: legacy limits not adopted: %s", legacy, exc)
        now = _now_us()
        for i, ch in enumerate(self.chars):
            view = self.views[i]
            rec = _known_record(ch)
            if rec is not None:
                held = store.effective(ch.path, now)
                if held is None or held.id != rec.id:
                    store.assign(
                        ch.path,
                        rec,
                        user=f"gateway {self.gateway_id}",
                        reason="standards given in the configuration",
                        source="config",
                        now_us=now,
                        subgroup_size=int(self._m[i]),
                    )
            else:
                held = store.effective(ch.path, now)
                if held is not None and held.chart in (ch.chart, f"{ch.chart}-laney"):
                    rec = held
            if rec is not None:
                self.records[i] = rec
            else:
                self._phase1[i] = _Fed()
                view.phase = "phase1"
                view.phase1_need = ch.limits.phase1_subgroups * int(self._m[i])
        self._limits_seq = store.last_seq()
        specs = [_spec(ch, self.records.get(i)) for i, ch in enumerate(self.chars)]
        fresh = Engine(specs)
        self.engine = fresh
        self._restore_state(fresh)
        # the engine's open-subgroup fill, beside _fill (which also counts Phase I values)
        self._efill = self._fill.copy()
        for i in self._phase1:
            self._efill[i] = 0
        for i, rec in self.records.items():
            self._show_limits(i, rec)

    async def _limits_loop(self) -> None:
        """Put limits assigned meanwhile (``shopspc limits``, future-dated ones) into force."""
        while True:
            await asyncio.sleep(self.limits_poll_s)
            try:
                now = _now_us()
                current = await asyncio.to_thread(self.limits_store.current_assignments, now)
                changed = [
                    (i, a)
                    for i, a in ((self._path_index.get(p), a) for p, a in current.items())
                    if i is not None
                    and (i not in self.records or self.records[i].id != a.limits_id)
                ]
                if not changed:
                    continue
                audit = await asyncio.to_thread(self.limits_store.changes_since, self._limits_seq)
                records = [
                    await asyncio.to_thread(self.limits_store.record, a.limits_id, a.path)
                    for _, a in changed
                ]
            except (LimitsStoreError, OSError) as exc:
                log.error("limits store %s: %s", self.limits_store.path, exc)
                continue
            if audit:
                self._limits_seq = audit[-1].seq
            lines: list[str] = []
            for (i, a), rec in zip(changed, records, strict=True):
                if rec is not None:
                    why = next((e for e in reversed(audit) if e.assignment_seq == a.seq), None)
                    self.apply_limits(i, rec, a, why, lines)
            await self._append(lines)

    def apply_limits(
        self, i: int, rec: LimitsRecord, assignment: Any, audit: Any, lines: list[str]
    ) -> None:
        """Judge characteristic ``i`` against ``rec`` from now on (run-rule windows carry on)."""
        ch = self.chars[i]
        if rec.chart not in (ch.chart, f"{ch.chart}-laney"):
            log.error(
                "%s: limits %s are for a %s chart, not %s; not applied",
                ch.path,
                rec.id,
                rec.chart,
                ch.chart,
            )
            return
        try:
            self.engine.set_limits(i, rec)
        except (SpcInputError, ValueError) as exc:
            log.error("%s: limits %s not applied: %s", ch.path, rec.id, exc)
            return
        old = self.records.get(i)
        self.records[i] = rec
        self._show_limits(i, rec)
        log.info(
            "%s: limits %s → %s in force (%s by %s: %s)",
            ch.path,
            old.id if old else "Phase I",
            rec.id,
            assignment.source,
            assignment.user,
            assignment.reason,
        )
        info = audit.to_json() if audit is not None else {}
        info.update(
            limits_id=rec.id,
            center=rec.center,
            sigma=rec.sigma,
            method=rec.method,
            user=assignment.user,
            reason=assignment.reason,
            source=assignment.source,
            effective_from=rfc3339(assignment.effective_from_us),
        )
        self._alarm_call(lambda: self.alarms.limits_changed(i, info, now_us=_now_us()), lines)
        p1 = self._phase1.pop(i, None)
        if p1 is not None:
            # Phase I ended by an assigned record: its values are judged against it
            self.views[i].phase = "phase2"
            self._efill[i] = 0
            self._judge(p1, lines)

    def _restore_state(self, fresh: Engine) -> None:
        state_path = self.data_dir / "state.json"
        blob_path = self.data_dir / "engine.npz"
        if not state_path.exists() or not blob_path.exists():
            return
        try:
            state = json.loads(state_path.read_text())
            if state.get("fingerprint") != self._fingerprint():
                log.warning(
                    "engine state in %s not restored: the characteristics changed since it was "
                    "saved (run rules start afresh; frozen limits are kept)",
                    self.data_dir,
                )
                return
            eng = Engine.restore(blob_path.read_bytes())
            if len(eng) != len(fresh):
                raise ValueError(f"{len(eng)} characteristics in the snapshot, {len(fresh)} now")
            for i in range(len(eng)):
                if i in self.records and eng.limits_id(i) != self.records[i].id:
                    raise ValueError(f"{self.paths[i]}: the snapshot judges another limits record")
        except (OSError, ValueError, KeyError, SpcInputError) as exc:
            log.warning("engine state in %s not restored (%s); starting afresh", self.data_dir, exc)
            return
        self.engine = eng
        rings = self.data_dir / "alarm_rings.json"
        if rings.exists():
            try:
                self.alarms.restore_rings(rings.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "alarm sample windows in %s not restored (%s): the first alarms after this "
                    "start quote only the samples judged since",
                    rings,
                    exc,
                )
        self._fill[:] = state["fill"]
        for i, view in enumerate(self.views):
            view.n_points = int(state["n_points"][i])
        for key, p1 in state.get("phase1", {}).items():
            i = int(key)
            if i in self._phase1:
                values = [math.nan if v is None else float(v) for v in p1["values"]]
                sizes = p1.get("sizes") or [None] * len(values)
                buf = _Fed()
                for v, z, t, ser in zip(values, sizes, p1["times"], p1["serials"], strict=True):
                    buf.add(i, v, math.nan if z is None else float(z), t, ser)
                self._phase1[i] = buf
                self.views[i].phase1_have = len(values)
        log.info("restored engine state and limits from %s", self.data_dir)

    def save_state(self) -> None:
        """Write limits records, the engine snapshot and the pipeline's own state (atomically)."""
        self._write_state(self._state_now())

    def _state_now(self) -> tuple[dict[str, Any], bytes, Any]:
        """The state, taken on the event loop (the engine must not move meanwhile): the engine's
        arrays, copied (their zip is encoded by :meth:`_write_state`, off the loop: it took
        about 0.8 ms), ``state.json``, and copies of the alarms' sample rings (the samples an
        alarm raised after a restart quotes from before it)."""
        self._apply_views()  # their point counts go with the engine's
        state = {
            "fingerprint": self._fingerprint(),
            "fill": self._fill.tolist(),
            "n_points": [v.n_points for v in self.views],
            "phase1": {
                # json cannot hold NaN: a padded Phase I slot is stored as null
                str(i): {
                    "values": [None if math.isnan(v) else v for v in p.val],
                    "sizes": [None if math.isnan(z) else z for z in p.size],
                    "times": p.time,
                    "serials": p.serial,
                }
                for i, p in self._phase1.items()
            },
        }
        return self.engine.snapshot_arrays(), json.dumps(state).encode(), self.alarms.rings_now()

    def _write_state(self, state: tuple[dict[str, Any], bytes, Any]) -> None:
        engine, json_bytes, rings = state
        self._atomic("alarm_rings.json", self.alarms.encode_rings(rings))
        self._atomic("engine.npz", encode_snapshot(engine))
        self._atomic("state.json", json_bytes)

    def _atomic(self, name: str, data: bytes) -> None:
        path = self.data_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _show_limits(self, i: int, rec: LimitsRecord) -> None:
        view = self.views[i]
        view.phase = "phase2"
        view.center = rec.center
        if math.isfinite(rec.sigma):
            k = self.chars[i].nsigmas * rec.sigma / math.sqrt(int(self._m[i]))
            view.lcl, view.ucl = rec.center - k, rec.center + k

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order (see the module docstring)."""
        try:
            if not self.notifiers:
                self.notifiers = self._make_notifiers()
            self.alarms.set_limits_ids({i: r.id for i, r in self.records.items()})
            out = await asyncio.to_thread(self.alarms.initial_states, _now_us())
            log.debug("published %d initial characteristic states", len(out))
            if self.freeze_gc:
                # what start-up built (configuration, models, engine tables, modules) lives as
                # long as the process; a full collection walking all of it paused the loop for
                # 40–80 ms now and then. Frozen, collections only walk what came later.
                gc.collect()
                gc.freeze()
            async with asyncio.TaskGroup() as tg:
                # the alarm path first and last: it never waits for the series sinks
                notify_stop = asyncio.Event()
                notify_tasks = [tg.create_task(n.run(notify_stop)) for n in self.notifiers]
                src_tasks = [tg.create_task(self._run_source(s)) for s in self.sources]
                proc = tg.create_task(self._process_loop())
                appender = tg.create_task(self._appender())
                drain = tg.create_task(self._drain_loop())
                saver = tg.create_task(self._save_loop())
                limits = tg.create_task(self._limits_loop())
                checkpoints = tg.create_task(self._checkpoint_loop())
                await stop.wait()
                log.info("gateway %s stopping: sources first", self.gateway_id)
                await _cancel_all(src_tasks)
                self._sources_done = True
                await proc
                await appender
                self._processor_done.set()
                self._wake.set()
                await drain
                saver.cancel()
                limits.cancel()
                checkpoints.cancel()
                notify_stop.set()
                for t in notify_tasks:
                    await t
        finally:
            if self.freeze_gc:
                gc.unfreeze()  # the process may go on (a test, an embedding application)
            await self._close()

    def _make_notifiers(self) -> list[Any]:
        """The alarm publishers the ``alarms:`` section configures (MQTT for MES, webhook)."""
        from collector.notify import MqttAlarmPublisher, WebhookNotifier

        out: list[Any] = []
        sec = self.cfg.alarms
        if sec.mqtt is not None:
            out.append(
                MqttAlarmPublisher(
                    sec.mqtt,
                    self.alarms.outbox,
                    gateway_id=self.gateway_id,
                    prefix=sec.prefix,
                    version=_version(),
                    start_time_us=self.start_time_us,
                    on_command=self.on_command,
                    on_refused=self._refused_command,
                )
            )
        if sec.webhook is not None:
            out.append(WebhookNotifier(sec.webhook, self.alarms.outbox))
        return out

    async def _close(self) -> None:
        try:
            self.save_state()
        except (OSError, ValueError) as exc:
            log.error("could not save state to %s: %s", self.data_dir, exc)
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception as exc:  # a failing close must not keep the others open
                log.error("closing sink %s: %s", sink.name, exc)
        self.close()

    def close(self) -> None:
        """Close the outbox, the alarm store and the limits store (idempotent; ``run`` does it)."""
        self.outbox.close()
        self.alarms.close()
        self.limits_store.close()

    async def _run_source(self, source: Any) -> None:
        loop = asyncio.get_running_loop()

        async def submit(samples: Sequence[Sample]) -> asyncio.Future[None] | None:
            # queues the batch; the future is done once its lines are committed to the outbox
            if not samples:
                return None
            if self._queue.full():
                self.stats.queue_waits += 1
            done = loop.create_future()
            await self._queue.put((source.name, list(samples), done))
            return done

        async def emit(samples: Sequence[Sample]) -> None:
            # returns once the batch is committed to the outbox: a source that acknowledges
            # its peer after emit (an OPC UA / Modbus trigger ack) never acknowledges what a
            # crash could lose
            done = await submit(samples)
            if done is not None:
                await done

        # for sources that acknowledge later, in order, and keep receiving meanwhile (MQTT)
        emit.nowait = submit  # type: ignore[attr-defined]

        try:
            await source.run(emit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # a source that gives up (a non-retryable error) is a state, not the end of the gateway
            self.stats.source_failures += 1
            log.error("source %s stopped: %s", source.name, exc)

    async def _process_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # judged, not yet handed to the appender: their lines, the series still to encode
        # (flush_series) and the futures of their batches (resolved once all is committed)
        held: list[str] = []
        held_done: list[asyncio.Future[None]] = []
        held_values = 0
        flush_at = math.inf

        async def flush() -> None:
            nonlocal held, held_done, held_values, flush_at
            lines, done = held + self.flush_series(), held_done
            held, held_done, held_values, flush_at = [], [], 0, math.inf
            await self._commit(lines, done)

        while True:
            try:
                if not self._queue.empty():
                    first = self._queue.get_nowait()
                else:
                    # a timeout scope, not wait_for (a task per call); a cancelled get loses
                    # nothing: the item stays queued until get returns it
                    wait = 0.2 if flush_at == math.inf else max(0.0, flush_at - loop.time())
                    async with asyncio.timeout(wait):
                        first = await self._queue.get()
            except TimeoutError:
                now = _now_us()
                held += self.tick_alarms(now) + self.close_windows(now, defer=True)
                await flush()
                if self._sources_done and self._queue.empty():
                    break
                await self._periodic()
                continue
            items = [first]
            while len(items) < 500 and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self.stats.queue_depth = self._queue.qsize()
            # alarms are committed and published inside process(); the series are encoded
            # a few batches at a time (series_defer_s), then go to the appender, so the next
            # batches are judged while those lines are being committed
            held += self.process([(name, samples) for name, samples, _ in items], defer=True)
            now = _now_us()
            held += self.tick_alarms(now) + self.close_windows(now, defer=True)
            held_done += [done for *_, done in items]
            held_values += sum(len(samples) for _, samples, _ in items)
            if flush_at == math.inf:
                flush_at = loop.time() + self.series_defer_s
            if held_values >= _DEFER_MAX_VALUES or loop.time() >= flush_at:
                await flush()
            await self._periodic()
            await asyncio.sleep(0)  # sources and sockets get their turn between batches
        await self._appends.put(None)  # the appender commits what is left, then ends

    async def _commit(self, lines: list[str], done: list[asyncio.Future[None]]) -> None:
        """Hand lines to the appender; ``done`` futures resolve once they are committed."""
        if not lines and not done:
            return
        if self._appends.full():
            self.stats.queue_waits += 1
        await self._appends.put((lines, done))

    async def _appender(self) -> None:
        """Commit the processor's lines in order, several batches per commit, then resolve."""
        while True:
            item = await self._appends.get()
            if item is None:
                return
            batch = [item]
            if self.commit_linger_s > 0 and self._appends.empty():
                # group commit: a few ms of batches share one transaction (and one worker-thread
                # hop) instead of one each; only acknowledgements wait, never the judging
                await asyncio.sleep(self.commit_linger_s)
            while not self._appends.empty() and len(batch) < 64:
                nxt = self._appends.get_nowait()
                if nxt is None:
                    self._appends.put_nowait(None)  # ends the loop after this commit
                    break
                batch.append(nxt)
            lines = [ln for ls, _ in batch for ln in ls]
            await self._append(lines)
            for _, done in batch:
                for fut in done:
                    if not fut.done():
                        fut.set_result(None)

    async def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_metrics < self.metrics_interval_s:
            return
        self._last_metrics = now
        self.stats.outbox_pending = await self._pending()
        now_us = _now_us()
        lines = [
            gateway_line(
                gateway=self.gateway_id,
                component="pipeline",
                time_us=now_us,
                metrics=self.stats.as_dict(),
                precision=self.precision,
            )
        ]
        for n in self.notifiers:
            st = n.stats
            lines.append(
                gateway_line(
                    gateway=self.gateway_id,
                    component=f"notifier.{type(n).__name__}",
                    time_us=now_us,
                    metrics={
                        "state": str(st.state),
                        "published": int(st.published),
                        "pending": int(st.pending),
                        "errors": int(st.errors),
                        "reconnects": int(st.reconnects),
                        "dead_lettered": int(st.dead_lettered),
                        "bad_commands": int(st.bad_commands),
                    },
                    precision=self.precision,
                )
            )
        for conn in (*self.sources, *self.sinks):
            st = conn.stats
            metrics = {
                "state": str(st.state),
                "samples": int(st.samples),
                "bad_samples": int(st.bad_samples),
                "errors": int(st.errors),
                "reconnects": int(st.reconnects),
            }
            lines.append(
                gateway_line(
                    gateway=self.gateway_id,
                    component=f"connector.{conn.name}",
                    time_us=now_us,
                    metrics=metrics,
                    precision=self.precision,
                )
            )
        await self._append([ln for ln in lines if ln])

    async def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        payloads = [
            "\n".join(lines[k : k + CHUNK_LINES]).encode()
            for k in range(0, len(lines), CHUNK_LINES)
        ]
        while True:
            try:
                await self._aio.append(STREAM, payloads)
                break
            except OutboxFull as exc:
                # back-pressure: the queue fills and the sources wait; nothing accepted is dropped
                self.stats.outbox_full_waits += 1
                log.warning("outbox full, waiting for the sinks: %s", exc)
                await asyncio.sleep(1.0)
        self.stats.lines_appended += len(lines)
        self._wake.set()

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.save_interval_s)
            try:
                await asyncio.to_thread(self._write_state, self._state_now())
            except (OSError, ValueError) as exc:
                log.error("could not save state to %s: %s", self.data_dir, exc)

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the alarm file from a worker thread, so that no alarm commit does it."""
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            try:
                await asyncio.to_thread(self.alarms.outbox.checkpoint)
            except OutboxError as exc:
                log.error("alarm store checkpoint: %s", exc)

    async def _pending(self) -> int:
        """Series entries waiting in the outbox. Read in a worker thread: the outbox lock may be
        held by a commit of the appender, and the loop must not wait for it (alarms do not)."""
        counts = await self._aio.counts()
        return counts.streams.get(STREAM, _NO_COUNTS).pending

    async def _drain_loop(self) -> None:
        deadline: float | None = None
        while True:
            if self._processor_done.is_set() and deadline is None:
                deadline = time.monotonic() + self.drain_deadline_s
            entries = await self._aio.peek(STREAM, 4)  # up to 4 × CHUNK_LINES lines
            entries, n_lines = _up_to(entries, CHUNK_LINES)
            wait = (
                entries[0].created + self.series_linger_s - time.time()
                if entries and deadline is None and n_lines < CHUNK_LINES
                else 0.0
            )
            if wait > 0:
                # a small batch lingers (at most series_linger_s after its first line) so the
                # sinks get a few large writes instead of one per micro-batch
                await asyncio.sleep(min(wait, self.series_linger_s))
                continue
            if entries:
                await self._deliver(entries)
            else:
                pending = await self._pending()
                self.stats.outbox_pending = pending
                if deadline is not None and pending == 0:
                    return
            if deadline is not None and time.monotonic() > deadline:
                pending = await self._pending()
                self.stats.outbox_pending = pending
                if pending:
                    log.warning(
                        "shutdown: %d series entries left in the outbox %s (sent at next start)",
                        pending,
                        self.outbox.path,
                    )
                return
            if not entries:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)

    async def _deliver(self, entries: list[Any]) -> None:
        # an entry holds up to CHUNK_LINES lines; sinks get single lines so that one
        # malformed line is dead-lettered alone
        lines: list[bytes] = []
        for e in entries:
            lines += e.payload.split(b"\n")
        seqs = [e.seq for e in entries]
        rejected: dict[int, str] = {}
        for sink in self.sinks:
            try:
                result = await sink.write(lines)
            except ConnectorError as exc:
                self.stats.sink_errors += 1
                if exc.retryable:
                    delay = self._sink_backoff.next_delay()
                    log.warning("sink %s: %s (retry in %.1f s)", sink.name, exc.message, delay)
                    await self._aio.retry_later(STREAM, seqs, delay, str(exc))
                    if self._processor_done.is_set():
                        await asyncio.sleep(min(delay, 1.0))
                    return
                log.error("sink %s refused the batch for good: %s", sink.name, exc)
                await self._aio.dead_letter(STREAM, seqs, str(exc))
                self.stats.lines_dead += len(lines)
                return
            for rej in getattr(result, "rejected", ()) or ():
                for j in rej.indices:
                    rejected.setdefault(j, f"{sink.name}: {rej.message}")
        self._sink_backoff.reset()
        if rejected:
            # the refused lines become entries of their own, dead-lettered with the reason;
            # the entries they came from are acknowledged below (a crash in between re-sends
            # the good lines: a rewrite of the same points)
            by_reason: dict[str, list[bytes]] = {}
            for j, reason in rejected.items():
                by_reason.setdefault(reason, []).append(lines[j])
            for reason, bad in by_reason.items():
                dead = await self._aio.append(STREAM, bad)
                await self._aio.dead_letter(STREAM, dead, reason)
            self.stats.lines_dead += len(rejected)
        await self._aio.ack(STREAM, seqs)
        self.stats.lines_written += len(lines) - len(rejected)

    # ------------------------------------------------------------------ processing (sync, testable)

    def process(
        self, items: Sequence[tuple[str, Sequence[Sample]]], *, defer: bool = False
    ) -> list[str]:
        """Judge batches of (source name, samples); returns the line-protocol lines to store.

        Per sample only the mapping, de-duplication and subgroup bookkeeping run in
        Python; line encoding and judging work on whole columns. ``defer``: the
        ``measurement`` and ``spc`` lines (and the live views) wait for
        :meth:`flush_series`, which encodes the calls since the last flush in one go;
        alarms are judged, committed and published now either way.
        """
        rows = self._pend_rows
        fed = _Fed()
        now = _now_us()
        values = self.index.values
        lines: list[str] = self._take_extra_lines()
        self._retry_alarms(lines, now)
        for source, samples in items:
            self.stats.samples_in += len(samples)
            # context first: a result block carries its part's context in the same batch
            self.stats.context_samples += self.index.observe(source, samples)
            if source in self._proc_sources:
                self._process_states(source, samples, lines)
            kind = self._kinds.get(source, "manual")
            ctx: dict[int, tuple[dict[str, Any], str]] = {}  # per characteristic, this batch
            for s in samples:
                if source == MANUAL:
                    i = self._path_index.get(s.binding)
                    targets = None if i is None else [i]
                else:
                    targets = values.get((source, s.binding))
                if targets is None:
                    if (source, s.binding) not in self.index.wanted:
                        self.stats.unmapped += 1
                    continue
                for i in targets:
                    self._accept(i, s, source, kind, ctx, rows, fed)
        # judged (alarms committed) before the measurement lines are encoded
        self._feed(fed, lines, now)
        if not defer:
            lines += self.flush_series()
        return lines

    def flush_series(self) -> list[str]:
        """The ``spc`` and ``measurement`` lines of what was judged since the last flush.

        Encoding is columnar with a fixed cost per call: under streaming load (a
        message or two per judging call) encoding several calls' points at once
        costs a fraction of encoding each call's, and the event loop that reads the
        next values is free sooner. Also brings the live views up to date.
        """
        lines: list[str] = []
        pend, self._pend_pts = self._pend_pts, []
        if pend:
            if len(pend) == 1:
                chars, cols, times = pend[0]
            else:
                chars = [i for c, _, _ in pend for i in c]
                cols = {
                    k: (
                        np.concatenate([c[k] for _, c, _ in pend])
                        if isinstance(v, np.ndarray)
                        else [x for _, c, _ in pend for x in c[k]]
                    )
                    for k, v in pend[0][1].items()
                }
                times = np.concatenate([t for _, _, t in pend])
            lines += encode_rows(
                [self._sprefix[i] for i in chars], cols, times, self.precision
            ).lines
        rows, self._pend_rows = self._pend_rows, _Rows()
        lines += self._measurement_lines(rows)
        self._apply_views()
        judged, self._pend_judged = self._pend_judged, []
        if judged and self.point_listeners:
            # one call per flush: a listener's fixed cost (the API's rings: about 55 µs) is
            # paid once for the points of several judging calls, not once per call
            merged = merge_judged(judged)
            for listener in self.point_listeners:
                listener(merged)
        return lines

    def _apply_views(self) -> None:
        views, self._pend_views = self._pend_views, []
        if views:
            self._update_views(*(np.concatenate(col) for col in zip(*views, strict=True)))

    # ------------------------------------------------------------------ alarms

    def _process_states(self, source: str, samples: Sequence[Sample], lines: list[str]) -> None:
        """Hand new values of process-state tags (idle, changeover, setup …) to the alarm manager."""
        for s in samples:
            scopes = self._proc_bind.get((source, s.binding))
            if scopes is None:
                continue
            if s.quality is Quality.GOOD and s.value - s.value == 0:
                value: Any = int(s.value) if s.value.is_integer() else s.value
            elif "raw" in s.fields:
                value = s.fields["raw"]
            else:
                continue  # an unreadable state tag changes nothing
            for scope in scopes:
                self._alarm_call(
                    lambda sc=scope, v=value, t=s.time_us: self.alarms.set_process_state(sc, v, t),
                    lines,
                )

    def _alarm_call(self, call: Callable[[], Outcome], lines: list[str]) -> bool:
        """Run one alarm-manager call and route its outcome; False when its commit failed."""
        try:
            out = call()
        except OutboxError as exc:
            # nothing of the call happened (the manager reloads its state): retried later
            self.stats.alarm_errors += 1
            log.error("alarm store %s: %s", self.alarms.outbox.path, exc)
            return False
        self._route(out, lines)
        return True

    def _route(self, out: Outcome, lines: list[str]) -> None:
        if out.events or out.states:
            self._announce(out)
        out.log()  # after the publish too: a log handler costs more than it
        lines += out.lines  # encoded now: after the publish

    def _announce(self, out: Outcome) -> None:
        # MES first: the publishers send at once; the screens' stream, the metrics and the
        # console (a rich print costs more than the publish) follow
        for n in self.notifiers:
            n.notify()
        for listener in self.alarm_listeners:
            listener(out)
        self.stats.alarms += out.raised
        self.stats.alarm_events += len(out.events)
        for ev in out.events:
            if ev.get("event") != "raised":
                continue
            a = AlarmEvent.of(ev)
            i = self._path_index.get(a.path)
            if i is not None:
                ch = self.chars[i]
                self.views[i].last_rule = (
                    a.rule if a.chart == _CENTRE_CHART[ch.chart] else f"{a.chart}:{a.rule}"
                )
            if self.on_alarm is not None:
                self.on_alarm(a)

    def _retry_alarms(self, lines: list[str], now: int) -> None:
        while self._alarm_backlog:
            batch = self._alarm_backlog[0]
            if not self._alarm_call(lambda b=batch: self.alarms.judge(b, now), lines):
                break
            self._alarm_backlog.pop(0)
        self.stats.alarm_pending = len(self._alarm_backlog)

    def _take_extra_lines(self) -> list[str]:
        extra, self._extra_lines = self._extra_lines, []
        return extra

    def tick_alarms(self, now_us: int) -> list[str]:
        """Shelve expiry, flood end and alarm retention (about once a second); returns lines."""
        lines = self._take_extra_lines()
        if not 0 <= now_us - self._last_tick < _ALARM_TICK_US:
            self._last_tick = now_us
            self._retry_alarms(lines, now_us)
            self._alarm_call(lambda: self.alarms.tick(now_us), lines)
        return lines

    async def enter(
        self,
        path: str,
        value: float,
        *,
        user: str,
        serial: str | None = None,
        context: Mapping[str, Any] | None = None,
        time_us: int | None = None,
    ) -> None:
        """A value typed in at the line, stored and judged exactly like an acquired sample.

        Its ``measurement`` line has ``source=manual`` and the user as ``operator``
        unless ``context`` names one. Returns once the value is committed to the
        outbox. The caller checks plausibility (``Characteristic.manual``).
        """
        if path not in self._path_index:
            raise KeyError(path)
        now = _now_us()
        fields = {"operator": user, **(context or {}), "entered_by": user}
        sample = Sample(
            path,
            float(value),
            Quality.GOOD,
            now,
            time_us if time_us is not None else now,
            serial=serial,
            fields=fields,
        )
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((MANUAL, [sample], done))
        await done

    def _refused_command(self, topic: str, problem: str) -> None:
        # refused by the publisher before it reached on_command (not JSON, no alarm_id …)
        self.stats.commands += 1
        self.stats.bad_commands += 1

    def on_command(self, path: str, payload: Mapping[str, Any], verb: str = "ack") -> None:
        """A command from MES or an operator on ``{prefix}/cmd/{path}/{verb}`` (MQTT).

        Refused commands are logged with their reason and counted (``bad_commands``).
        """
        with contextlib.suppress(AlarmError, OutboxError):
            self.command(path, payload, verb, source="mqtt")

    def command(
        self, path: str, payload: Mapping[str, Any], verb: str = "ack", *, source: str = "api"
    ) -> dict[str, Any] | None:
        """Carry out an operator command on characteristic ``path``; returns its event, if any.

        ``ack`` (the contract): ``{"alarm_id", "user", "comment", "cause"?, "action"?}``.
        Extensions: ``shelve`` ``{"alarm_id", "user", "comment", "until": RFC 3339 |
        "minutes": n}``, ``unshelve`` ``{"alarm_id", "user", "comment"}`` and
        ``service`` ``{"in_service": bool, "user", "comment"}`` (out of service per
        characteristic). A refused command is logged with its reason, counted and
        raised as :class:`~collector.alarms.AlarmError`; a storage failure as
        :class:`~collector.outbox.OutboxError`. Call it from the event loop.
        """
        self.stats.commands += 1
        now = _now_us()
        event: dict[str, Any] | None = None
        try:
            for name in ("alarm_id", "user", "comment", "cause", "action", "until"):
                v = payload.get(name)
                if v is not None and not isinstance(v, str):
                    raise AlarmError(name, "must be a string")
            if verb == "ack" and source == "mqtt":
                event = self.alarms.ack_command(path, payload, now_us=now)
            elif verb in ("ack", "shelve", "unshelve"):
                aid = payload.get("alarm_id") or ""
                found = self.alarms.get(aid)
                if found is None or found.get("path") != path:
                    raise AlarmError("alarm_id", f"no alarm {aid!r} on {path}")
                user = payload.get("user") or ""
                comment = payload.get("comment") or ""
                if verb == "ack":
                    event = self.alarms.ack(
                        aid,
                        user,
                        comment,
                        payload.get("cause"),
                        payload.get("action"),
                        now_us=now,
                        source=source,  # type: ignore[arg-type]
                    )
                elif verb == "shelve":
                    event = self.alarms.shelve(aid, user, comment, _until(payload, now), now_us=now)
                else:
                    self._route(
                        self.alarms.unshelve(aid, user, comment, now_us=now), self._extra_lines
                    )
            elif verb == "service":
                i = self._path_index.get(path)
                flag = payload.get("in_service")
                if i is None:
                    raise AlarmError("path", f"no characteristic {path}")
                if not isinstance(flag, bool):
                    raise AlarmError("in_service", "must be true or false")
                out = self.alarms.set_out_of_service(
                    i, not flag, payload.get("user") or "", payload.get("comment") or "", now_us=now
                )
                self._route(out, self._extra_lines)
            else:
                raise AlarmError(
                    "verb", f"unknown command {verb!r} (ack, shelve, unshelve, service)"
                )
        except AlarmError as exc:
            self.stats.bad_commands += 1
            log.warning("%s command for %s refused: %s", verb, path, exc)
            raise
        except OutboxError as exc:
            self.stats.alarm_errors += 1
            log.error("%s command for %s not stored: %s", verb, path, exc)
            raise
        self._extra_lines += self.alarms.take_lines()
        for n in self.notifiers:
            n.notify()
        if event is not None:
            for listener in self.alarm_listeners:
                listener(Outcome(events=[event]))
        self._wake.set()
        return event

    def _accept(
        self,
        i: int,
        s: Sample,
        source: str,
        kind: str,
        ctx: dict[int, tuple[dict[str, Any], str]],
        rows: _Rows,
        fed: _Fed,
    ) -> None:
        ch = self.chars[i]
        serial = self.index.serial(i, s)
        v = s.value
        good = s.quality is Quality.GOOD and v - v == 0  # finite
        # a failed read of a part does not stop a later good read of the same part
        if serial is not None and self._dedup.seen((ch.station, serial, i), remember=good):
            self.stats.duplicates += 1
            return
        if s.fields:
            # the part's own context (same message) before the latest of the batch; a value
            # entered by hand names its context fields directly (operator = who typed it)
            context = (
                {**self.index.snapshot(i), **s.fields}
                if source == MANUAL
                else self.index.snapshot(i, source, s.fields)
            )
            extra = fields_text(context)
        else:
            snap = ctx.get(i)
            if snap is None:
                context = self.index.snapshot(i)
                snap = ctx[i] = (context, fields_text(context))
            context, extra = snap
        if s.status:
            extra = fields_text({**context, "status": s.status})
        prefix = self._mprefix.get((i, kind))
        if prefix is None:
            prefix = self._mprefix[(i, kind)] = series_prefix(
                "measurement",
                {
                    "gateway": self.gateway_id,
                    "line": ch.line,
                    "station": ch.station,
                    "characteristic": ch.id,
                    "source": kind,
                },
            )
        rows.add(prefix, v, str(s.quality), serial, extra, s.time_us)
        view = self.views[i]
        view.n_samples += 1
        if not good:
            self.stats.bad += 1
            return
        view.last_value = v
        size = math.nan
        if self._sized[i]:
            size = self.index.size(i)
            if not size > 0:  # also NaN: no sample size known yet
                self.stats.no_size += 1
                return
        target = self._shortrun[i]
        if target is not None:
            kind_, by, table = target
            t = table.get(str(context.get(by)))
            if t is None:
                self.stats.unknown_part += 1
                key = (i, str(context.get(by)))
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "%s: no short-run target for %s=%r; its values are stored, not charted",
                        ch.path,
                        by,
                        context.get(by),
                    )
                return
            v = v - t[0] if kind_ == "dnom" else (v - t[0]) / t[1]
        self.stats.charted += 1
        if self._closing[i]:
            self._close_early(i, ch, context, s.time_us, fed)
        if self._fill[i] == 0:
            self._open_since[i] = s.time_us
            self._open_gw[i] = s.gateway_time_us
        self._fill[i] = (self._fill[i] + 1) % self._m[i]
        self._last_time[i] = s.time_us
        self._last_serial[i] = serial
        fed.add(i, v, size, s.time_us, serial, context)

    def _measurement_lines(self, rows: _Rows) -> list[str]:
        if not rows.prefix:
            return []
        enc = encode_rows(
            rows.prefix,
            {"value": np.array(rows.value), "quality": rows.quality, "serial": rows.serial},
            np.array(rows.time, dtype=np.int64),
            self.precision,
            extra=rows.extra,
        )
        return enc.lines

    def close_windows(self, now_us: int, *, defer: bool = False) -> list[str]:
        """Close open subgroups whose ``window_s`` has passed on the gateway clock; returns lines
        (``defer``: as :meth:`process`)."""
        fed = _Fed()
        for i, window_us in self._windowed:
            if self._fill[i] and now_us - int(self._open_gw[i]) > window_us:
                self._pad(i, fed)
        lines: list[str] = []
        if fed.idx:
            self._feed(fed, lines, now_us)
            if not defer:
                lines += self.flush_series()
        return lines

    def _pad(self, i: int, fed: _Fed) -> None:
        for _ in range(int(self._m[i] - self._fill[i])):
            fed.add(i, math.nan, math.nan, int(self._last_time[i]), self._last_serial[i])
        self._fill[i] = 0

    def _close_early(
        self, i: int, ch: Characteristic, context: dict[str, Any], t: int, fed: _Fed
    ) -> None:
        """Pad the open subgroup with missing values when its context changed or its window passed."""
        sg = ch.subgroup
        if sg.close_on:
            key = tuple(context.get(CONTEXT_FIELD[n]) for n in sg.close_on)
            changed = self._close_ctx[i] is not None and key != self._close_ctx[i]
            self._close_ctx[i] = key
        else:
            changed = False
        if not changed and sg.window_s is not None and self._fill[i]:
            changed = t - int(self._open_since[i]) > sg.window_s * 1e6
        if changed and self._fill[i]:
            self._pad(i, fed)

    def _feed(self, fed: _Fed, lines: list[str], now: int) -> None:
        if not self._phase1:
            self._judge(fed, lines)
            return
        to_engine = _Fed()
        for j, i in enumerate(fed.idx):
            p1 = self._phase1.get(i)
            if p1 is None:
                to_engine.add(i, fed.val[j], fed.size[j], fed.time[j], fed.serial[j], fed.ctx[j])
                continue
            p1.add(i, fed.val[j], fed.size[j], fed.time[j], fed.serial[j], fed.ctx[j])
            view = self.views[i]
            view.phase1_have = len(p1.val)
            if len(p1.val) >= view.phase1_need:
                frozen = self._freeze(i, p1, now)
                if frozen is not None:
                    to_engine.extend(frozen)
        self._judge(to_engine, lines)

    def _freeze(self, i: int, p1: _Fed, now: int) -> _Fed | None:
        ch = self.chars[i]
        values = np.array(p1.val, dtype=np.float64)
        try:
            rec = estimate_phase1(ch, values, p1.time, now, sizes=np.array(p1.size))
            self.engine.set_limits(i, rec)
        except (SpcInputError, ValueError) as exc:
            # e.g. no variation at all: keep collecting, try again with more data
            log.warning("%s: Phase I limits not frozen yet: %s", ch.path, exc)
            self.views[i].phase1_need += ch.limits.phase1_subgroups * int(self._m[i])
            return None
        try:
            self.limits_store.assign(
                ch.path,
                rec,
                user=f"gateway {self.gateway_id}",
                reason=f"Phase I: limits frozen from {rec.n_points} subgroups",
                source="phase1",
                now_us=now,
                subgroup_size=int(self._m[i]),
            )
        except (LimitsStoreError, ValueError) as exc:
            log.error("%s: Phase I limits %s not recorded in the store: %s", ch.path, rec.id, exc)
        del self._phase1[i]
        self.records[i] = rec
        self.stats.phase1_frozen += 1
        self._show_limits(i, rec)
        log.info(
            "%s: Phase I done, limits frozen (%s): centre %.6g, sigma %.6g from %d points",
            ch.path,
            rec.id,
            rec.center,
            rec.sigma,
            rec.n_points,
        )
        with contextlib.suppress(OSError, ValueError):
            self.save_state()
        # the Phase I values are judged against their own frozen limits (retrospective Phase I)
        return p1

    def _completions(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of ``idx`` whose value completes an engine subgroup, and the new fills.

        The engine returns one point per completed subgroup, in arrival order of the
        completing value: the same rows, found here without a loop.
        """
        m = self._m[idx]
        B = idx.shape[0]
        if (m == 1).all():
            return np.arange(B), None
        rank, per_char = batch_ranks(idx, len(self.chars))
        pos = self._efill[idx] + rank + 1  # each value's place in its open subgroup
        last = rank == per_char[idx] - 1  # each characteristic's last value of the batch
        fill = self._efill.copy()
        fill[idx[last]] = pos[last] % m[last]
        return np.flatnonzero(pos % m == 0), fill

    def _judge(self, fed: _Fed, lines: list[str]) -> None:
        if not fed.idx:
            return
        idx = np.array(fed.idx, dtype=np.intp)
        val = np.array(fed.val, dtype=np.float64)
        size = np.array(fed.size, dtype=np.float64) if self._any_sized else None
        done, fill = self._completions(idx)
        try:
            pts = self.engine.process(idx, val, size)
        except SpcInputError as exc:
            # the engine checks a whole batch before changing any state: skip it, keep running
            self.stats.engine_errors += 1
            log.error("SPC engine refused a batch of %d values: %s", len(fed.idx), exc)
            return
        if fill is not None:
            self._efill = fill
        n = len(pts)
        if n != done.shape[0]:
            log.error("engine returned %d points for %d completed subgroups", n, done.shape[0])
            done = done[:n]
            n = done.shape[0]
        if n == 0:
            return
        chars = pts.char[:n]
        times = np.array(fed.time, dtype=np.int64)[done]
        serials = [fed.serial[j] for j in done.tolist()]
        limits_ids = np.array(self.engine.limits_ids, dtype=object)[pts.limits[:n]].tolist()
        hit = (pts.mask[:n] | pts.disp_mask[:n]) != 0
        flagged = np.flatnonzero(hit).tolist()
        violations = [""] * n
        for j in flagged:
            codes = violation_codes(int(pts.mask[j])) + violation_codes(int(pts.disp_mask[j]))
            violations[j] = ",".join(dict.fromkeys(codes))
        contexts = [fed.ctx[j] for j in done.tolist()]
        # alarms first: their commit and publish do not wait for the series encoding
        self._judge_alarms(pts, n, chars, times, serials, limits_ids, flagged, contexts, lines)
        self._pend_pts.append(
            (
                chars.tolist(),
                {
                    "statistic": pts.statistic[:n],
                    "center": pts.center[:n],
                    "lcl": pts.lcl[:n],
                    "ucl": pts.ucl[:n],
                    "sigma": pts.sigma[:n],
                    "ewma": pts.ewma[:n],
                    "cusum_upper": pts.cusum_upper[:n],
                    "cusum_lower": pts.cusum_lower[:n],
                    "n": pts.n[:n].astype(np.int64),
                    "violations": violations,
                    "limits_id": limits_ids,
                },
                times,
            )
        )
        self.stats.points += n
        self._pend_views.append((chars, pts.center[:n], pts.lcl[:n], pts.ucl[:n], hit))
        if self.point_listeners:
            self._pend_judged.append(
                JudgedPoints(pts, n, times, serials, limits_ids, violations, contexts)
            )

    def _judge_alarms(
        self,
        pts: Points,
        n: int,
        chars: np.ndarray,
        times: np.ndarray,
        serials: list[str | None],
        limits_ids: list[str],
        flagged: list[int],
        contexts: list[Mapping[str, Any] | None],
        lines: list[str],
    ) -> None:
        """Every plotted point (centre and dispersion chart) to the alarm lifecycle, columnar.

        The context of a violating point is its completing sample's (contract shape).
        """
        dj = np.flatnonzero(self._has_disp[chars])
        d = dj.tolist()
        # the centre rows, then the dispersion rows of the characteristics that have one
        serial_rows = serials + [serials[j] for j in d]
        limits_rows = limits_ids + [limits_ids[j] for j in d]
        if not flagged and not self._alarm_backlog:
            # nothing violated: when that commits nothing, only the sample rings move
            c = chars.tolist()
            keys = [2 * i for i in c] + [2 * c[j] + 1 for j in d]
            t = times.tolist()
            if self.alarms.quiet(keys, t + [t[j] for j in d], serial_rows, limits_rows):
                return

        def both(centre: np.ndarray, disp: np.ndarray) -> np.ndarray:
            return np.concatenate([centre[:n], disp[:n][dj]]) if d else centre[:n]

        context: list[Mapping[str, Any] | None] = [None] * (n + len(d))
        disp_flag = np.flatnonzero(pts.disp_mask[:n][dj]).tolist() if d else []

        def ctx_of(j: int) -> dict[str, Any]:
            snap = contexts[j]
            if snap is None:  # a padded value, or Phase I values restored after a restart
                snap = self.index.snapshot(int(chars[j]))
            return contract_context(snap, int(times[j]))

        for j in flagged:
            context[j] = ctx_of(j)
        for k in disp_flag:
            context[n + k] = ctx_of(d[k])
        batch = PointBatch(
            char=both(chars, chars),
            chart=both(self._centre_names[chars], self._disp_names[chars]),
            mask=both(pts.mask, pts.disp_mask),
            value=both(pts.statistic, pts.disp_statistic),
            center=both(pts.center, pts.disp_center),
            lcl=both(pts.lcl, pts.disp_lcl),
            ucl=both(pts.ucl, pts.disp_ucl),
            sigma=both(pts.sigma, pts.disp_sigma),
            limits_id=limits_rows,
            time_us=both(times, times),
            serial=serial_rows,
            context=context,
        )
        if self._alarm_backlog:
            self._alarm_backlog.append(batch)  # in order behind the ones waiting
        elif not self._alarm_call(lambda: self.alarms.judge(batch, _now_us()), lines):
            self._alarm_backlog.append(batch)
        self.stats.alarm_pending = len(self._alarm_backlog)

    def _update_views(
        self,
        chars: np.ndarray,
        center: np.ndarray,
        lcl: np.ndarray,
        ucl: np.ndarray,
        hit: np.ndarray,
    ) -> None:
        """The live table's view of each characteristic: its newest of these points (columns
        of the same rows; ``hit``: the point broke a rule)."""
        char_list = chars.tolist()
        counts = collections.Counter(char_list)
        last = {i: j for j, i in enumerate(char_list)}  # each characteristic's newest point
        rows = list(last.values())
        centres = center[rows].tolist()
        lcls, ucls = lcl[rows].tolist(), ucl[rows].tolist()
        flagged = hit[rows].tolist()
        for k, i in enumerate(last):
            view = self.views[i]
            view.n_points += counts[i]
            view.center = centres[k]
            lo, hi = lcls[k], ucls[k]
            if math.isfinite(lo) or math.isfinite(hi):
                view.lcl, view.ucl = lo, hi
            view.in_control = not flagged[k]


def _until(payload: Mapping[str, Any], now_us: int) -> int:
    """A shelve command's expiry: ``until`` (RFC 3339) or ``minutes`` from now."""
    if payload.get("until"):
        try:
            return parse_rfc3339(str(payload["until"]), require_zone=True)
        except ValueError as exc:
            raise AlarmError("until", f"not an RFC 3339 time with its zone: {exc}") from None
    minutes = payload.get("minutes")
    if isinstance(minutes, int | float) and not isinstance(minutes, bool) and minutes > 0:
        return now_us + int(minutes * 60_000_000)
    raise AlarmError("until", "give until (RFC 3339) or minutes (> 0)")


def _up_to(entries: list[Any], max_lines: int) -> tuple[list[Any], int]:
    """The first entries holding at most ``max_lines`` lines together (at least one), and their lines."""
    total = 0
    for k, e in enumerate(entries):
        lines = e.payload.count(b"\n") + 1
        if total + lines > max_lines and k:
            return entries[:k], total
        total += lines
    return entries, total


class _NoCounts:
    pending = 0


_NO_COUNTS: Any = _NoCounts()
