"""The alarm lifecycle: one active alarm per (characteristic, chart, rule), persisted with its events.

:class:`AlarmManager` turns judged points into alarm events for MES
(``contracts/alarms-mqtt.md``) and ``alarm`` lines for InfluxDB
(``contracts/timeseries.md``). It does no I/O besides its own SQLite file and
reads no clock: the wall time ``now_us`` (Unix µs) is passed in.

Lifecycle
    A violation of rule R on chart C of characteristic X raises an alarm
    unless one is active for (X, C, R); then the active one is *updated*
    (``count``, last sample and value; a journal row ``updated``, no MQTT
    event: the retained state message already names it). An alarm clears
    after ``clear_after`` consecutive points of (X, C) without R (event
    ``cleared``). Statuses: ``active`` (raised, unacknowledged) →
    ``acknowledged`` → ``closed`` at clear; or ``active`` → ``cleared_unacked``
    (still listed) → ``closed`` at ack. A later violation after the clear
    raises a new alarm with a new id. Acknowledging twice is idempotent
    (:meth:`AlarmManager.ack` returns ``None``, no event).

Identity and replay
    ``alarm_id`` is deterministic (path, chart for dispersion charts, rule,
    limits id, completing sample time and serial). A completing sample whose
    id exists already (active, or closed within ``retention_days``) is
    ignored: replaying points after a ``kill -9`` never raises an alarm twice.

Durability
    Every state change, journal row, ``seq`` draw (counter ``alarm-seq``) and
    stream entry of one call commits in one outbox transaction (one fsync per
    call, ``durability: full``). Streams: ``mqtt`` (envelopes
    ``{"topic", "qos": 1, "retain", "payload"}`` in publish order: alarm
    events and retained state messages) and ``webhook`` (alarm event payloads,
    only with ``webhook=True``). ``seq`` numbers published alarm events only,
    so an alarm-topic subscriber sees no gaps; state messages carry no seq.
    If a commit fails the in-memory state is reloaded from the file and the
    error propagates (nothing of that call happened).

Suppression, out of service, shelving, flood (what MES sees)
    * Out of service (per characteristic) and suppressing process states
      (``idle``/``changeover``/``setup`` of a configured line/station tag):
      violations raise nothing; one journal row ``suppressed`` per
      (characteristic, chart, rule, suppression period) counts them; the
      state topic shows ``suspended`` with the reason. Alarms active before
      still update and clear.
    * Shelving is per (characteristic, chart, rule) until a wall time: the
      shelved alarm's ``shelved`` and ``unshelved`` events are published, its
      ``cleared`` is published, its acks are not. New alarms raised at a
      shelved point are recorded but held; one still active at unshelve (or
      expiry, :meth:`AlarmManager.tick`) is published then as ``raised``.
      A wall clock set back delays expiry accordingly.
    * Flood: more than ``flood.max_alarms`` raises on one line within
      ``flood.window_s`` raise one flood alarm (rule ``FLOOD``, chart ``x``,
      path ``{site}/{area}/{line}/_line/_flood``, ``value`` = raises in the
      window, ``ucl`` = the limit, extension field ``held``). While it is
      active every new alarm on that line is recorded with all its detail
      but held (never published, journal only, queryable); the flood alarm
      clears once the rate stayed at or below the limit for a whole window.
    * Held alarms still appear in the state topic's ``active_alarms``.

Payload extensions beyond the contract (subscribers ignore unknown keys):
``count``, ``last_sample_time``, ``last_value`` on every event but
``raised``; ``clear_sample_time`` on ``cleared``; ``cause``, ``action``,
``source`` on ``acknowledged``; ``shelved_until`` on ``shelved``; ``held``
on flood events. The ``alarm`` InfluxDB line keeps ``chart`` as a tag (an X
and an MR alarm of one rule at one sample would overwrite each other) and
is stamped with the sample time for ``raised``, the event time otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from collector.alarmconfig import CATEGORIES, AlarmsConfig, resolve_severity
from collector.notify import compact_json as _dumps
from collector.notify import encode_envelope
from collector.outbox import Outbox, OutboxTransaction, StreamPolicy
from collector.timefmt import rfc3339
from connectors.influxdb.lineprotocol import Precision, encode_line
from spc.rules import BITS, MAX_WINDOW, RULE_TEXT, RULES, make_rule

__all__ = [
    "ALARM_SCHEMA",
    "CHARTS",
    "SEQ_COUNTER",
    "STATE_SCHEMA",
    "AlarmChar",
    "AlarmError",
    "AlarmManager",
    "Outcome",
    "PointBatch",
    "alarm_id",
    "rfc3339",
]

log = logging.getLogger(__name__)

ALARM_SCHEMA = "shopspc.alarm/1"
STATE_SCHEMA = "shopspc.state/1"
SEQ_COUNTER = "alarm-seq"
#: Outbox streams the alarm publishers drain (MQTT, webhook).
DELIVERY_STREAMS = ("mqtt", "webhook")
#: Chart names of the alarm contract.
CHARTS: tuple[str, ...] = ("x", "mr", "xbar", "r", "s", "p", "np", "c", "u", "ewma", "cusum")
_DISP_NAMES = frozenset({"mr", "r", "s"})
#: Up to this many rows are judged row by row (_few), more with array operations.
_FEW_ROWS = 32
_CHART_SET = frozenset(CHARTS)
_CODES = sorted(BITS.items(), key=lambda kv: kv[1])
_ALL_BITS = sum(1 << bit for _, bit in _CODES)
_OPEN = ("active", "acknowledged", "cleared_unacked")
_LIVE = ("active", "acknowledged")
_STATE_CODES = {"no_data": 0, "in_control": 1, "out_of_control": 2, "suspended": 3}
FLOOD_RULE = "FLOOD"
_PURGE_EVERY_US = 3_600_000_000

_TABLES = """
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    site TEXT NOT NULL,
    area TEXT NOT NULL,
    line TEXT NOT NULL,
    station TEXT NOT NULL,
    characteristic TEXT NOT NULL,
    chart TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    published INTEGER NOT NULL,
    held TEXT,
    raised_us INTEGER NOT NULL,
    cleared_us INTEGER,
    acked_us INTEGER,
    closed_us INTEGER,
    count INTEGER NOT NULL,
    last_time INTEGER NOT NULL,
    last_value REAL,
    last_serial TEXT,
    streak INTEGER NOT NULL,
    ack_user TEXT,
    ack_comment TEXT,
    ack_source TEXT,
    cause_category TEXT,
    cause_code TEXT,
    action_code TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_by_status ON alarms (status);
CREATE INDEX IF NOT EXISTS alarms_by_acked ON alarms (acked_us) WHERE acked_us IS NOT NULL;
DROP INDEX IF EXISTS alarms_by_ack;
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us INTEGER NOT NULL,
    event TEXT NOT NULL,
    alarm_id TEXT,
    path TEXT,
    chart TEXT,
    rule TEXT,
    seq INTEGER,
    published INTEGER NOT NULL,
    count INTEGER,
    user TEXT,
    comment TEXT,
    reason TEXT,
    cause_category TEXT,
    cause_code TEXT,
    action_code TEXT,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (time_us);
CREATE INDEX IF NOT EXISTS journal_by_alarm ON journal (alarm_id);
CREATE TABLE IF NOT EXISTS oos (
    path TEXT PRIMARY KEY,
    since_us INTEGER NOT NULL,
    user TEXT,
    comment TEXT
);
CREATE TABLE IF NOT EXISTS process_state (
    scope TEXT PRIMARY KEY,
    value TEXT,
    state TEXT NOT NULL,
    time_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    path TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS marks (
    point TEXT PRIMARY KEY,
    last_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shelves (
    point TEXT PRIMARY KEY,
    until_us INTEGER NOT NULL,
    alarm_id TEXT NOT NULL,
    user TEXT,
    comment TEXT
);
"""


def alarm_id(
    path: str, rule: str, limits_id: str, time_us: int, serial: str | None, *, chart: str = ""
) -> str:
    """Deterministic alarm id from characteristic path, rule, limits id and the completing sample.

    ``chart`` tells a dispersion-chart alarm (``mr``, ``r``, ``s``) from the centre chart's.
    The formula is ``collector.pipeline.alarm_id``'s, so ids stay the same.
    """
    key = f"{chart}:{rule}" if chart in _DISP_NAMES else rule
    body = f"{path}|{key}|{limits_id}|{time_us}|{serial or ''}"
    return "A-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


class AlarmError(Exception):
    """A refused alarm operation: ``what`` names the argument or object, ``message`` says why."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        self.message = message
        super().__init__(f"{what}: {message}")


@dataclass(frozen=True)
class AlarmChar:
    """One characteristic as the alarm manager needs it (index = position in the sequence).

    ``severity``: the characteristic's own map (rule code, ``CUSUM`` or
    ``default`` → severity; pass only what the user set, so class maps apply).
    ``windows``: points forming each rule's pattern when ``rule_params`` changed
    them (default: ``spc.rules.RULES[code].window``). ``rule_text``: wording
    when ``rule_params`` changed it (default: ``spc.rules.RULE_TEXT``).
    """

    path: str
    site: str
    area: str
    line: str
    station: str
    id: str
    klass: str | None = None
    severity: Mapping[str, str] = field(default_factory=dict)
    windows: Mapping[str, int] = field(default_factory=dict)
    rule_text: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, ch: Any, klass: str | None = None) -> AlarmChar:
        """From a configured characteristic (``collector.config.Characteristic`` or alike).

        Takes its place, its ``severity`` only when set in the file (so class
        maps apply otherwise) and the windows and wording of its ``rule_params``.
        """
        set_fields = getattr(ch, "model_fields_set", None)
        own = dict(ch.severity) if set_fields is None or "severity" in set_fields else {}
        windows: dict[str, int] = {}
        texts: dict[str, str] = {}
        for code, params in (getattr(ch, "rule_params", None) or {}).items():
            spec = make_rule(code, params, f"rule_params.{code}")
            windows[code] = spec.window
            texts[code] = spec.text
        return cls(
            ch.path, ch.site, ch.area, ch.line, ch.station, ch.id, klass, own, windows, texts
        )


@dataclass
class PointBatch:
    """Plotted points of a micro-batch, one row per point (violating or not), columnar.

    ``char`` indexes the manager's characteristics; ``chart`` is a contract
    chart name; ``mask`` the violation bits (``spc.rules.BITS``); ``time_us``
    the source time; ``context`` the 5M1E snapshot (read for violating rows only).
    """

    char: Any
    chart: Any
    mask: Any
    value: Any
    center: Any
    lcl: Any
    ucl: Any
    sigma: Any
    limits_id: Sequence[str]
    time_us: Any
    serial: Sequence[str | None]
    context: Sequence[Mapping[str, Any] | None]

    def __len__(self) -> int:
        return len(self.char)


@dataclass
class Outcome:
    """What one call did: published ``events`` (with seq), ``states`` messages, InfluxDB ``lines``.

    Counters: ``raised`` new alarms (published or held), ``held`` of those not
    published (flood or shelved point), ``updated``, ``cleared``,
    ``suppressed`` violations (out of service or process state) and
    ``duplicates`` (completing samples whose alarm exists already: replays).
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    raised: int = 0
    held: int = 0
    updated: int = 0
    cleared: int = 0
    suppressed: int = 0
    duplicates: int = 0
    _lines: list[str] = field(default_factory=list, repr=False, compare=False)
    _render: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)
    _logs: list[tuple[str, tuple[Any, ...]]] = field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def lines(self) -> list[str]:
        """The InfluxDB ``alarm`` lines; encoded when first asked for, so that a caller can
        publish the events before it pays for the series encoding."""
        if self._render is not None:
            render, self._render = self._render, None
            self._lines += render()
        return self._lines

    def log(self) -> None:
        """Write the call's log records (``ALARM …``, flood start and end), once.

        They are kept until the caller has published the events: a log handler (a file, the
        console) costs more than the publish, and a call whose commit failed logs nothing.
        """
        logs, self._logs = self._logs, []
        for msg, args in logs:
            log.warning(msg, *args)


@dataclass
class _Alarm:
    """One alarm's row (the ``alarms`` table); ``payload`` holds the raise-time fields."""

    alarm_id: str
    path: str
    site: str
    area: str
    line: str
    station: str
    characteristic: str
    chart: str
    rule: str
    severity: str
    status: str
    published: int
    held: str | None
    raised_us: int
    cleared_us: int | None
    acked_us: int | None
    closed_us: int | None
    count: int
    last_time: int
    last_value: float | None
    last_serial: str | None
    streak: int
    ack_user: str | None
    ack_comment: str | None
    ack_source: str | None
    cause_category: str | None
    cause_code: str | None
    action_code: str | None
    payload: dict[str, Any]

    @property
    def point(self) -> str:
        return f"{self.path}|{self.chart}|{self.rule}"


_COLUMNS = tuple(f.name for f in fields(_Alarm))
# an upsert in place (not INSERT OR REPLACE: that deletes and re-inserts the row under a new
# rowid, rewriting every index entry; about a third of an alarm commit's pages)
_UPSERT = (
    f"INSERT INTO alarms ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (alarm_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "alarm_id")
)


# an alarm's payload is written once, when it is raised: later events change only its state
_CHANGING = tuple(c for c in _COLUMNS if c not in ("alarm_id", "payload"))
_UPDATE = f"UPDATE alarms SET {', '.join(f'{c} = ?' for c in _CHANGING)} WHERE alarm_id = ?"


_ALL = operator.attrgetter(*_COLUMNS)
_PAYLOAD = _COLUMNS.index("payload")
_changes = operator.attrgetter(*_CHANGING, "alarm_id")  # the parameters of _UPDATE


def _row(a: _Alarm) -> tuple:
    row = list(_ALL(a))
    row[_PAYLOAD] = _dumps(a.payload).decode()
    return tuple(row)


def _by_key(keys: Sequence[int]) -> dict[int, list[int]]:
    """Row numbers per key, in batch order."""
    groups: dict[int, list[int]] = {}
    for r, k in enumerate(keys):
        groups.setdefault(k, []).append(r)
    return groups


def _mark_key(path: str, slot: int, rule: str) -> str:
    """The ``marks`` row of a point: characteristic path, chart slot (1: dispersion), rule."""
    return f"{path}|{slot}|{rule}"


def _from_row(row: Sequence[Any]) -> _Alarm:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["payload"] = json.loads(values["payload"])
    return _Alarm(**values)


def _public(a: _Alarm, shelved_until: int | None = None) -> dict[str, Any]:
    out = {c: getattr(a, c) for c in _COLUMNS if c != "payload"}
    out["limits_id"] = a.payload.get("limits_id")
    out["shelved_until"] = shelved_until
    return out


@dataclass
class _Flood:
    alarm: _Alarm | None = None
    times: deque[int] = field(default_factory=deque)
    calm_since: int | None = None


class _Work:
    """Everything one call will commit, collected before the transaction opens."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us
        self.dirty: dict[str, _Alarm] = {}
        self.new: set[str] = set()  # alarms raised in this call (their rows are inserted)
        self.journal: list[dict[str, Any]] = []
        self.messages: list[tuple[str, str, bool, dict[str, Any]]] = []  # kind, topic, retain, p
        self.lines: list[tuple[_Alarm, str, int, dict[str, Any]]] = []
        self.sql: list[tuple[str, tuple]] = []
        self.state_chars: set[int] = set()
        self.marks: dict[str, int] = {}
        self.supp_new: dict[tuple[int, str, str], dict[str, Any]] = {}
        self.out = Outcome()
        self.logs = self.out._logs  # warnings, written by Outcome.log after the publish

    def empty(self) -> bool:
        return not (self.dirty or self.journal or self.messages or self.sql or self.marks)


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    @functools.wraps(method)
    def wrapper(self: AlarmManager, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class AlarmManager:
    """Alarm lifecycle, persistence and payloads for a set of characteristics (see the module text).

    ``path``: the SQLite file (``data_dir/alarms.db``), created if missing;
    ``chars``: the characteristics, index = position; ``config``: the
    ``alarms:`` section; ``gateway_id``: named in every payload;
    ``webhook``: also fill the ``webhook`` stream; ``precision``: of the
    InfluxDB lines. Every public method holds one lock, so the pipeline's
    worker thread, the HTTP API and the MQTT ack handler may call it
    concurrently; each call that changes something costs one commit (an fsync
    with ``durability: full``): call it from a worker thread, not the event loop.
    """

    def __init__(
        self,
        path: str | Path,
        chars: Sequence[AlarmChar],
        config: AlarmsConfig | None = None,
        *,
        gateway_id: str,
        webhook: bool = False,
        mqtt: bool = True,
        precision: Precision = "us",
    ) -> None:
        self.config = config or AlarmsConfig()
        self.chars = list(chars)
        self.gateway_id = gateway_id
        self.webhook = webhook
        self.mqtt = mqtt
        self.precision = precision
        self._prefix = self.config.prefix
        n = len(self.chars)
        self._index = {c.path: i for i, c in enumerate(self.chars)}
        if len(self._index) != n:
            raise ValueError("two characteristics share a path")
        overrides = self.config.clear_overrides
        self._clear_after = [
            overrides.get(c.id, overrides.get(c.path, self.config.clear_after)) for c in self.chars
        ]
        self._severity: dict[tuple[int, str], str] = {}
        self._windows = [
            {
                code: min(MAX_WINDOW, max(1, int(c.windows.get(code, RULES[code].window))))
                if code in RULES
                else 1
                for code in BITS
            }
            for c in self.chars
        ]
        self._scopes = list(self.config.process_state)
        self._scope_index = {b.key: k for k, b in enumerate(self._scopes)}
        self._char_scopes = [
            [k for k, b in enumerate(self._scopes) if b.matches(c.site, c.area, c.line, c.station)]
            for c in self.chars
        ]
        self._causes = {
            item.code: (category, item)
            for category, items in self.config.causes.items()
            for item in items
        }
        self._actions = {item.code: item for item in self.config.actions}
        # per (char, slot) arrays: slot 0 = centre chart, 1 = dispersion chart
        self._count = np.zeros(2 * n, dtype=np.int64)
        self._small = 2 * n <= 65_536
        self._few_max = _FEW_ROWS
        self._ring_t = np.zeros((2 * n, MAX_WINDOW), dtype=np.int64)
        self._ring_s = np.full((2 * n, MAX_WINDOW), None, dtype=object)
        self._has_active = np.zeros(2 * n, dtype=bool)
        # per char
        self._seen = np.zeros(n, dtype=bool)
        self._suspended = np.zeros(n, dtype=bool)
        self._state_code = np.zeros(n, dtype=np.int8)
        self._limits = np.full(n, None, dtype=object)
        self._limits_info: dict[int, dict[str, Any]] = {}
        self._last_state: list[tuple | None] = [None] * n
        self._last_purge: int | None = None
        self._spare_lines: list[str] = []
        self._lock = threading.RLock()
        self._outbox = Outbox(
            path,
            synchronous="FULL" if self.config.durability == "full" else "NORMAL",
            tables=_TABLES,
            # the publishers' bookkeeping (ack after PUBACK, retry, dead letter) needs no fsync
            # of its own: one lost at a power cut only sends an event again (same alarm_id and
            # seq, which subscribers de-duplicate), and each event commit's fsync covers it.
            # Its fsync held the file's lock while the next alarm commit waited.
            streams={s: StreamPolicy(synchronous="NORMAL") for s in DELIVERY_STREAMS},
            # the alarm commit runs on the gateway's event loop: a whole checkpoint (about
            # 1 000 pages copied and fsynced) inside it stalled an alarm now and then; the
            # gateway checkpoints from a worker thread instead (Gateway._checkpoint_loop)
            checkpoint="background",
        )
        try:
            self._load()
        except BaseException:
            self._outbox.close()
            raise

    # -- state loading -------------------------------------------------------------

    def _load(self) -> None:
        """(Re)build the in-memory state from the file: at open and after a failed commit."""
        n = len(self.chars)
        self._open: dict[str, _Alarm] = {}
        self._active: dict[int, dict[str, _Alarm]] = {}
        self._floods: dict[str, _Flood] = getattr(self, "_floods", {})
        for fl in self._floods.values():
            fl.alarm = None
        self._has_active[:] = False
        rows = self._outbox.query(
            f"SELECT {', '.join(_COLUMNS)} FROM alarms WHERE status IN (?, ?, ?)", _OPEN
        )
        for row in rows:
            a = _from_row(row)
            self._open[a.alarm_id] = a
            if a.status not in _LIVE:
                continue
            if a.rule == FLOOD_RULE:
                self._floods.setdefault(self._line_key_of(a), _Flood()).alarm = a
                continue
            i = self._index.get(a.path)
            if i is None:
                continue  # characteristic no longer configured: listed and ackable only
            key = 2 * i + (a.chart in _DISP_NAMES)
            self._active.setdefault(key, {})[a.rule] = a
            self._has_active[key] = True
        # newest violating sample time per ((char, slot), rule): raised, updated or suppressed
        self._hw: dict[tuple[int, str], int] = {}
        for point, last in self._outbox.query("SELECT point, last_time FROM marks"):
            path, slot, rule = point.rsplit("|", 2)
            i = self._index.get(path)
            if i is not None:
                self._hw[(2 * i + int(slot), rule)] = last
        for a in self._open.values():  # an open alarm's samples are judged (a mark is older)
            i = self._index.get(a.path)
            if i is not None and a.rule != FLOOD_RULE:
                hk = (2 * i + (a.chart in _DISP_NAMES), a.rule)
                self._hw[hk] = max(self._hw.get(hk, a.last_time), a.last_time)
        self._oos: dict[int, tuple[int, str | None, str | None]] = {}
        for path, since, user, comment in self._outbox.query(
            "SELECT path, since_us, user, comment FROM oos"
        ):
            if path in self._index:
                self._oos[self._index[path]] = (since, user, comment)
        self._proc: dict[int, str] = {}
        for scope, state in self._outbox.query("SELECT scope, state FROM process_state"):
            if scope in self._scope_index:
                self._proc[self._scope_index[scope]] = state
        self._shelves: dict[str, tuple[int, str, str | None, str | None]] = {
            point: (until, aid, user, comment)
            for point, until, aid, user, comment in self._outbox.query(
                "SELECT point, until_us, alarm_id, user, comment FROM shelves"
            )
        }
        self._supp_rows: dict[tuple[int, str, str], int] = {}
        self._seen[:] = False
        for (path,) in self._outbox.query("SELECT path FROM seen"):
            if path in self._index:
                self._seen[self._index[path]] = True
        self._suspended[:] = [self._reason(i) is not None for i in range(n)]

    @staticmethod
    def _line_key_of(a: _Alarm) -> str:
        return f"{a.site}/{a.area}/{a.line}"

    def _line_key(self, i: int) -> str:
        c = self.chars[i]
        return f"{c.site}/{c.area}/{c.line}"

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._outbox.close()

    def __enter__(self) -> AlarmManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def outbox(self) -> Outbox:
        """The outbox holding the ``mqtt`` (and ``webhook``) streams the publishers drain."""
        return self._outbox

    # -- helpers -------------------------------------------------------------------

    def _reason(self, i: int) -> str | None:
        if i in self._oos:
            comment = self._oos[i][2]
            return "out_of_service" + (f": {comment}" if comment else "")
        for k in self._char_scopes[i]:
            state = self._proc.get(k)
            if state is not None and state in self._scopes[k].suppress:
                return f"process_state: {state} ({self._scopes[k].key})"
        return None

    def _sev(self, i: int, rule: str) -> str:
        key = (i, rule)
        sev = self._severity.get(key)
        if sev is None:
            c = self.chars[i]
            sev = resolve_severity(rule, dict(c.severity), c.klass, self.config)
            self._severity[key] = sev
        return sev

    def _topic(self, kind: str, path: str) -> str:
        return f"{self._prefix}/{kind}/{path}"

    def _payload(
        self,
        a: _Alarm,
        event: str,
        now_us: int,
        *,
        user: str | None = None,
        comment: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        p: dict[str, Any] = {
            "schema": ALARM_SCHEMA,
            "alarm_id": a.alarm_id,
            "event": event,
            "seq": None,
        }
        p.update(a.payload)
        p["event_time"] = rfc3339(now_us)
        if event in ("acknowledged", "shelved", "unshelved") or user is not None:
            p["user"] = user
            p["comment"] = comment or ""
        if event != "raised":
            p["count"] = a.count
            p["last_sample_time"] = rfc3339(a.last_time)
            p["last_value"] = _num(a.last_value)
        if extra:
            p.update(extra)
        return p

    def _event(
        self,
        w: _Work,
        a: _Alarm,
        event: str,
        *,
        publish: bool,
        user: str | None = None,
        comment: str | None = None,
        extra: Mapping[str, Any] | None = None,
        reason: str | None = None,
        line_time: int | None = None,
    ) -> dict[str, Any]:
        p = self._payload(a, event, w.now_us, user=user, comment=comment, extra=extra)
        w.journal.append(
            {
                "time_us": w.now_us,
                "event": event,
                "alarm_id": a.alarm_id,
                "path": a.path,
                "chart": a.chart,
                "rule": a.rule,
                "published": int(publish),
                "count": a.count,
                "user": user,
                "comment": comment,
                "reason": reason,
                "cause_category": a.cause_category if event == "acknowledged" else None,
                "cause_code": a.cause_code if event == "acknowledged" else None,
                "action_code": a.action_code if event == "acknowledged" else None,
                "payload": p,
            }
        )
        if publish:
            w.messages.append(("alarm", self._topic("alarm", a.path), False, p))
            w.out.events.append(p)
        w.lines.append((a, event, w.now_us if line_time is None else line_time, p))
        w.dirty[a.alarm_id] = a
        return p

    def _note(
        self,
        w: _Work,
        event: str,
        *,
        path: str | None = None,
        alarm: _Alarm | None = None,
        chart: str | None = None,
        rule: str | None = None,
        count: int | None = None,
        user: str | None = None,
        comment: str | None = None,
        reason: str | None = None,
        time_us: int | None = None,
    ) -> None:
        """A journal row that is not a published event (updated, suppressed, out_of_service, …)."""
        w.journal.append(
            {
                "time_us": w.now_us if time_us is None else time_us,
                "event": event,
                "alarm_id": alarm.alarm_id if alarm else None,
                "path": alarm.path if alarm else path,
                "chart": alarm.chart if alarm else chart,
                "rule": alarm.rule if alarm else rule,
                "published": 0,
                "count": alarm.count if alarm else count,
                "user": user,
                "comment": comment,
                "reason": reason,
                "cause_category": None,
                "cause_code": None,
                "action_code": None,
                "payload": None,
            }
        )

    def _set_live(self, a: _Alarm, live: bool) -> None:
        i = self._index.get(a.path)
        if a.rule == FLOOD_RULE or i is None:
            return
        key = 2 * i + (a.chart in _DISP_NAMES)
        bucket = self._active.setdefault(key, {})
        if live:
            bucket[a.rule] = a
        else:
            bucket.pop(a.rule, None)
        self._has_active[key] = bool(bucket)

    def _char_active_ids(self, i: int) -> list[str]:
        ids = []
        for key in (2 * i, 2 * i + 1):
            ids.extend(a.alarm_id for a in self._active.get(key, {}).values())
        return sorted(ids)

    def _state_message(self, i: int, now_us: int) -> tuple[tuple, dict[str, Any]]:
        reason = self._reason(i)
        ids = self._char_active_ids(i)
        if reason is not None:
            state = "suspended"
        elif ids:
            state = "out_of_control"
        elif not self._seen[i]:
            state = "no_data"
        else:
            state = "in_control"
        limits = self._limits[i]
        content = (state, tuple(ids), reason, limits)
        msg = {
            "schema": STATE_SCHEMA,
            "path": self.chars[i].path,
            "state": state,
            "active_alarms": ids,
            "reason": reason,
            "limits_id": limits,
            "time": rfc3339(now_us),
        }
        info = self._limits_info.get(i)
        if info is not None and info.get("limits_id") == limits:
            msg["limits"] = info
        return content, msg

    def _states(self, w: _Work, chars: Iterable[int], force: bool = False) -> None:
        for i in sorted(set(chars)):
            content, msg = self._state_message(i, w.now_us)
            self._state_code[i] = _STATE_CODES[content[0]]
            if force or content != self._last_state[i]:
                self._last_state[i] = content
                w.messages.append(("state", self._topic("state", self.chars[i].path), True, msg))
                w.out.states.append(msg)

    # -- committing ----------------------------------------------------------------

    def _commit(self, w: _Work) -> Outcome:
        if w.empty():
            return w.out
        try:
            with self._outbox.transaction() as tx:
                self._write(tx, w)
        except BaseException:
            # nothing of this call is stored: forget its in-memory effects too
            self._load()
            self._last_state = [None] * len(self.chars)
            raise
        if w.lines:
            # not inside the transaction (it holds the file), nor before the publish
            w.out._render = functools.partial(self._alarm_lines, w.lines)
        return w.out

    def _alarm_lines(self, rows: list[tuple[_Alarm, str, int, dict[str, Any]]]) -> list[str]:
        """The ``alarm`` measurement lines of committed events (``contracts/timeseries.md``)."""
        out: list[str] = []
        for a, event, time_us, p in rows:
            line = encode_line(
                "alarm",
                {
                    "gateway": self.gateway_id,
                    "line": a.line,
                    "station": a.station,
                    "characteristic": a.characteristic,
                    "rule": a.rule,
                    "severity": a.severity,
                    "chart": a.chart,
                },
                {
                    "alarm_id": a.alarm_id,
                    "event": event,
                    "value": p.get("value") if event == "raised" else p.get("last_value"),
                    "seq": p["seq"],
                    "user": p.get("user"),
                    "comment": p.get("comment"),
                },
                time_us,
                self.precision,
            )
            if line:
                out.append(line)
        return out

    def _write(self, tx: OutboxTransaction, w: _Work) -> None:
        n_events = sum(1 for kind, *_ in w.messages if kind == "alarm")
        if n_events:
            seqs = iter(tx.next_seq(SEQ_COUNTER, n_events))
            for kind, _, _, p in w.messages:
                if kind == "alarm":
                    p["seq"] = next(seqs)
        if w.dirty:
            new = w.new
            rows = [_row(a) for a in w.dirty.values() if a.alarm_id in new]
            if rows:
                tx.executemany(_UPSERT, rows)
            if len(rows) < len(w.dirty):
                tx.executemany(
                    _UPDATE, [_changes(a) for a in w.dirty.values() if a.alarm_id not in new]
                )
        for sql, params in w.sql:
            tx.execute(sql, params)
        if w.marks:
            tx.executemany(
                "INSERT INTO marks (point, last_time) VALUES (?, ?) ON CONFLICT (point) "
                "DO UPDATE SET last_time = max(last_time, excluded.last_time)",
                list(w.marks.items()),
            )
        if w.journal:
            tx.executemany(
                "INSERT INTO journal (time_us, event, alarm_id, path, chart, rule, seq, published, "
                "count, user, comment, reason, cause_category, cause_code, action_code, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        j["time_us"],
                        j["event"],
                        j["alarm_id"],
                        j["path"],
                        j["chart"],
                        j["rule"],
                        j["payload"]["seq"] if j["payload"] is not None else None,
                        j["published"],
                        j["count"],
                        j["user"],
                        j["comment"],
                        j["reason"],
                        j["cause_category"],
                        j["cause_code"],
                        j["action_code"],
                        None if j["payload"] is None else _dumps(j["payload"]).decode(),
                    )
                    for j in w.journal
                ],
            )
        if w.messages and self.mqtt:
            tx.append(
                "mqtt",
                [encode_envelope(topic, p, retain=retain) for _, topic, retain, p in w.messages],
            )
        if w.messages and self.webhook:
            hooks = [_dumps(p) for kind, _, _, p in w.messages if kind == "alarm"]
            if hooks:
                tx.append("webhook", hooks)

    # -- the hot path --------------------------------------------------------------

    @_locked
    def judge(self, batch: PointBatch, now_us: int) -> Outcome:
        """Judge a micro-batch of plotted points (all of them: in-control points clear alarms).

        Raises, updates and clears alarms, records suppressed violations,
        appends events and changed state messages to the streams and returns
        them with the InfluxDB ``alarm`` lines, all committed in one transaction.
        """
        w = _Work(now_us)
        n = len(batch.char)
        if n == 0:
            self._floods_check(w)
            return self._commit(w)
        char = np.asarray(batch.char, dtype=np.intp)
        mask = np.asarray(batch.mask, dtype=np.int64)
        times = np.asarray(batch.time_us, dtype=np.int64)
        for name, arr in (("mask", mask), ("time_us", times)):
            if len(arr) != n:
                raise ValueError(f"PointBatch.{name} has {len(arr)} rows, char has {n}")
        for name in ("chart", "value", "center", "lcl", "ucl", "sigma", "limits_id", "serial"):
            if len(getattr(batch, name)) != n:
                raise ValueError(
                    f"PointBatch.{name} has {len(getattr(batch, name))} rows, char has {n}"
                )
        if len(batch.context) != n:
            raise ValueError(f"PointBatch.context has {len(batch.context)} rows, char has {n}")
        if char.min() < 0 or char.max() >= len(self.chars):
            raise ValueError(f"PointBatch.char outside 0..{len(self.chars) - 1}")
        charts = list(batch.chart)
        names = set(charts)
        if not names <= _CHART_SET:
            bad = sorted(str(x) for x in names - _CHART_SET)
            raise ValueError(f"unknown chart names {bad} (expected one of {', '.join(CHARTS)})")
        if n <= self._few_max:
            self._few(w, batch, char, mask, times, charts)
            return self._commit(w)
        key = 2 * char
        if names & _DISP_NAMES:
            chart_arr = np.asarray(charts)
            for name in names & _DISP_NAMES:
                key += chart_arr == name
        serial = batch.serial
        no_serial = (
            serial.count(None) == n if isinstance(serial, list) else all(x is None for x in serial)
        )
        # rank of each row within its (char, slot) group, in batch order; a radix sort on
        # 16-bit keys keeps this linear
        order = np.argsort(key.astype(np.uint16) if self._small else key, kind="stable")
        sk = key[order]
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(sk[1:], sk[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        sizes = np.empty_like(starts)  # np.diff(append=) costs more than the arithmetic
        sizes[:-1] = starts[1:]
        sizes[-1] = n
        sizes -= starts
        rank_sorted = np.arange(n) - np.repeat(starts, sizes)
        pos = np.empty(n, dtype=np.intp)
        pos[order] = np.arange(n)

        # Python looks only at groups with an alarm now or a violation in this batch
        violating = (mask & _ALL_BITS) != 0
        if violating.any():  # a violation makes its whole (char, chart) group interesting
            hot = self._has_active.copy()
            hot[key[violating]] = True
            interesting = np.flatnonzero(hot[key])
        else:
            interesting = np.flatnonzero(self._has_active[key])
        if len(interesting):
            self._judge_rows(
                w, batch, interesting, char, key, mask, times, charts, serial, order, pos,
                rank_sorted,
            )  # fmt: skip

        # rings: the last MAX_WINDOW rows of each group (no index twice in one assignment)
        keys = sk[starts]
        keep = rank_sorted >= np.repeat(sizes, sizes) - MAX_WINDOW
        rows = order[keep]
        kk = sk[keep]
        col = (self._count[kk] + rank_sorted[keep]) % MAX_WINDOW
        self._ring_t[kk, col] = times[rows]
        if no_serial:
            self._ring_s[kk, col] = None
        else:
            self._ring_s[kk, col] = np.fromiter(serial, dtype=object, count=n)[rows]
        self._count[keys] += sizes

        # state topic: chars whose state code or limits changed, plus those touched above
        last_rows = order[starts + sizes - 1]
        uniq = keys >> 1
        lims_all = batch.limits_id
        lims = np.empty(len(keys), dtype=object)
        lims[:] = [lims_all[j] for j in last_rows.tolist()]
        fresh = uniq[~self._seen[uniq]]
        if fresh.size:
            # a characteristic with data keeps in_control/out_of_control across restarts
            w.sql.extend(
                ("INSERT OR IGNORE INTO seen (path) VALUES (?)", (self.chars[i].path,))
                for i in fresh.tolist()
            )
        self._seen[uniq] = True
        live_char = self._has_active[keys & ~1] | self._has_active[keys | 1]
        code = live_char.astype(np.int8) + 1
        code[self._suspended[uniq]] = 3
        changed = (code != self._state_code[uniq]) | (self._limits[uniq] != lims)
        self._limits[uniq] = lims
        w.state_chars.update(uniq[changed].tolist())
        self._floods_check(w)
        if w.state_chars:
            self._states(w, w.state_chars)
        return self._commit(w)

    def _ring_push(
        self, k: int, rows: list[int], times: Sequence[int], serials: Sequence[str | None]
    ) -> None:
        """Key ``k``'s samples at ``rows`` (batch order) into its ring (the last MAX_WINDOW)."""
        b = int(self._count[k])
        for j in range(max(0, len(rows) - MAX_WINDOW), len(rows)):
            col = (b + j) % MAX_WINDOW
            self._ring_t[k, col] = times[rows[j]]
            self._ring_s[k, col] = serials[rows[j]]
        self._count[k] = b + len(rows)

    @_locked
    def quiet(
        self,
        keys: Sequence[int],
        times: Sequence[int],
        serials: Sequence[str | None],
        limits_ids: Sequence[Any],
    ) -> bool:
        """:meth:`judge` of a few points that violate nothing, if that would commit nothing.

        ``keys[j]`` is ``2 * char`` for a centre-chart point, ``2 * char + 1`` for
        a dispersion-chart point; ``times``, ``serials`` and ``limits_ids`` as in
        :class:`PointBatch`. The caller has checked that no point's mask has a
        bit set. When no key has an open alarm, every characteristic has been
        seen, keeps its limits and state, and no flood alarm is open, judging
        them would only record their samples for later alarms: that is done
        here, without a :class:`PointBatch` or a transaction, and True is
        returned. Otherwise nothing changes and False is returned: call
        :meth:`judge`. For up to the row-by-row limit only (False beyond it).
        """
        n = len(keys)
        if n > self._few_max or len(times) != n or len(serials) != n or len(limits_ids) != n:
            return False
        if any(fl.alarm is not None for fl in self._floods.values()):
            return False  # _floods_check may end one
        active, seen, limits = self._has_active, self._seen, self._limits
        suspended, state_code = self._suspended, self._state_code
        for k, lim in zip(keys, limits_ids, strict=True):
            i = k >> 1
            if not 0 <= i < len(self.chars) or active[k] or not seen[i] or limits[i] != lim:
                return False
            code = 3 if suspended[i] else 1 + bool(active[k & ~1] or active[k | 1])
            if code != state_code[i]:
                return False
        for k, rows in _by_key(keys).items():
            self._ring_push(k, rows, times, serials)
        return True

    # -- the sample rings across restarts ------------------------------------------

    @_locked
    def rings_now(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the sample rings (times, serials, counts) for :meth:`encode_rings`.

        Cheap (array copies), so that the caller can take them on the event loop
        beside the engine's arrays and encode them in a worker thread."""
        return self._ring_t.copy(), self._ring_s.copy(), self._count.copy()

    def encode_rings(self, rings: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bytes:
        """The rings of :meth:`rings_now` as JSON: the (characteristic, chart) keys with data,
        their counts, and their ring rows as they lie (slot = sample number mod the ring
        size). Whole rows and no loop per key: this runs in a worker thread, and holding the
        interpreter lock there holds the event loop (100 characteristics: about 0.3 ms)."""
        ring_t, ring_s, count = rings
        keys = np.flatnonzero(count)
        doc = {
            "schema": "shopspc.alarm-rings/1",
            "paths": [c.path for c in self.chars],
            "keys": keys,
            "counts": count[keys],
            "times": ring_t[keys],  # orjson writes int64 arrays itself, without lists
            "serials": ring_s[keys].tolist(),
        }
        return _dumps(doc)

    @_locked
    def restore_rings(self, data: bytes) -> int:
        """Put rings saved by :meth:`encode_rings` back (same characteristics, same order);
        returns how many keys were restored. ValueError, changing nothing, for anything else."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("schema") != "shopspc.alarm-rings/1":
            raise ValueError("not a shopspc.alarm-rings/1 document")
        if doc.get("paths") != [c.path for c in self.chars]:
            raise ValueError("saved for other characteristics")
        missing = [f for f in ("keys", "counts", "times", "serials") if f not in doc]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        keys, counts = doc["keys"], doc["counts"]
        n = len(keys)
        if not (len(counts) == len(doc["times"]) == len(doc["serials"]) == n):
            raise ValueError("keys, counts, times and serials differ in length")
        try:
            k = np.array(keys, dtype=np.int64).reshape(n)
            c = np.array(counts, dtype=np.int64).reshape(n)
            t = np.array(doc["times"], dtype=np.int64).reshape(n, MAX_WINDOW)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"keys, counts and times must be integers, {MAX_WINDOW} a key"
            ) from exc
        ser = np.empty((n, MAX_WINDOW), dtype=object)
        for j, row in enumerate(doc["serials"]):
            # a serial that a mapping gave as a number was saved as one; payloads quote text
            if len(row) != MAX_WINDOW or not all(
                x is None or isinstance(x, str | int | float) for x in row
            ):
                raise ValueError(f"key {keys[j]}: {MAX_WINDOW} serials (text or null) expected")
            ser[j] = [x if x is None or isinstance(x, str) else str(x) for x in row]
        if n and (k.min() < 0 or k.max() >= len(self._count) or c.min() < 1):
            raise ValueError("a key out of range, or one without samples")
        self._ring_t[k] = t
        self._ring_s[k] = ser
        self._count[k] = c
        return n

    def _few(
        self,
        w: _Work,
        batch: PointBatch,
        char: np.ndarray,
        mask: np.ndarray,
        times: np.ndarray,
        charts: list[str],
    ) -> None:
        """:meth:`judge` for a few rows: grouping, sample rings and the state topic row by row
        (numpy's per-call cost exceeds the work here); the lifecycle as in the columnar path."""
        keys = [2 * c + (ch in _DISP_NAMES) for c, ch in zip(char.tolist(), charts, strict=True)]
        active = self._has_active
        groups = _by_key(keys)
        ordered = sorted(groups)  # the order the columnar path takes
        hot = {keys[r] for r in np.flatnonzero(mask & _ALL_BITS).tolist()}
        interesting = [r for r, k in enumerate(keys) if k in hot or active[k]]
        if interesting:
            # the rank of each row in its group, as the columnar path computes it
            order = [r for k in ordered for r in groups[k]]
            rank_sorted = [j for k in ordered for j in range(len(groups[k]))]
            pos = [0] * len(order)
            for j, r in enumerate(order):
                pos[r] = j
            self._judge_rows(
                w, batch, np.array(interesting, dtype=np.intp), char,
                np.array(keys, dtype=char.dtype), mask, times, charts, batch.serial,
                np.array(order, dtype=np.intp), np.array(pos, dtype=np.intp),
                np.array(rank_sorted, dtype=np.intp),
            )  # fmt: skip
        t_list = times.tolist()
        lims_all = batch.limits_id
        last_lim: list[tuple[int, int, Any]] = []  # (key, char, limits id of its last row)
        for k in ordered:
            rows = groups[k]
            self._ring_push(k, rows, t_list, batch.serial)
            last_lim.append((k, k >> 1, lims_all[rows[-1]]))
        # state topic: chars whose state code or limits changed
        changed: list[int] = []
        for k, i, lim in last_lim:
            if not self._seen[i]:
                self._seen[i] = True
                w.sql.append(
                    ("INSERT OR IGNORE INTO seen (path) VALUES (?)", (self.chars[i].path,))
                )
            code = 3 if self._suspended[i] else 1 + bool(active[k & ~1] or active[k | 1])
            if code != self._state_code[i] or self._limits[i] != lim:
                changed.append(i)
        for _, i, lim in last_lim:
            self._limits[i] = lim
        w.state_chars.update(changed)
        self._floods_check(w)
        if w.state_chars:
            self._states(w, w.state_chars)

    def _judge_rows(
        self,
        w: _Work,
        batch: PointBatch,
        rows: np.ndarray,
        char: np.ndarray,
        key: np.ndarray,
        mask: np.ndarray,
        times: np.ndarray,
        charts: list[str],
        serial: Sequence[str | None],
        order: np.ndarray,
        pos: np.ndarray,
        rank_sorted: np.ndarray,
    ) -> None:
        now_us = w.now_us
        for r in rows.tolist():
            i = int(char[r])
            k = int(key[r])
            m = int(mask[r])
            chart = str(charts[r])
            bucket = self._active.get(k)
            if bucket:
                for rule, a in list(bucket.items()):
                    if m >> BITS[rule] & 1:
                        continue
                    a.streak += 1
                    w.dirty[a.alarm_id] = a
                    if a.streak >= self._clear_after[i]:
                        self._clear(w, a, int(times[r]))
                        w.state_chars.add(i)
            if not m:
                continue
            for code, bit in _CODES:
                if not m >> bit & 1:
                    continue
                t = int(times[r])
                hw = self._hw.get((k, code))
                if hw is not None and t <= hw:
                    # a replayed completing sample: its alarm (or a later one) was judged; the
                    # mark commits with the alarm, so no look-up of alarm ids is needed
                    w.out.duplicates += 1
                    continue
                self._hw[(k, code)] = t
                # an open alarm's row carries its newest sample (last_time), which _load reads;
                # the mark is written when it closes (_closed) or, with no alarm, here
                a = bucket.get(code) if bucket else None
                if a is not None:
                    a.count += 1
                    a.streak = 0
                    a.last_time = int(times[r])
                    a.last_value = _num(batch.value[r])
                    a.last_serial = serial[r]
                    w.dirty[a.alarm_id] = a
                    self._note(w, "updated", alarm=a, time_us=now_us)
                    w.out.updated += 1
                    continue
                if self._suspended[i]:
                    w.marks[_mark_key(self.chars[i].path, k & 1, code)] = t
                    self._suppress(w, i, chart, code)
                    continue
                self._raise(
                    w,
                    batch,
                    r,
                    i,
                    chart,
                    code,
                    alarm_id(
                        self.chars[i].path, code, str(batch.limits_id[r]), t, serial[r], chart=chart
                    ),
                    key,
                    times,
                    serial,
                    order,
                    pos,
                    rank_sorted,
                )
                bucket = self._active.get(k)
                w.state_chars.add(i)

    def _samples(
        self,
        r: int,
        k: int,
        window: int,
        times: np.ndarray,
        serial: Sequence[str | None],
        order: np.ndarray,
        pos: np.ndarray,
        rank_sorted: np.ndarray,
    ) -> list[str]:
        """Times (or serials) of the ``window`` points ending at row ``r``, oldest first.

        Earlier points of the same group come from this batch, then from the
        ring (called before the ring takes this batch).
        """
        p = int(pos[r])
        rank = int(rank_sorted[p])
        inside = min(rank + 1, window)
        rows = order[p - inside + 1 : p + 1]
        pts = [(int(times[j]), serial[j]) for j in rows.tolist()]
        b = int(self._count[k])
        need = min(window - inside, b, MAX_WINDOW)
        if need > 0:
            cols = [(b - need + j) % MAX_WINDOW for j in range(need)]
            pts = [(int(self._ring_t[k, c]), self._ring_s[k, c]) for c in cols] + pts
        if all(s is not None for _, s in pts):
            return [str(s) for _, s in pts]
        return [rfc3339(t) for t, _ in pts]

    def _raise(
        self,
        w: _Work,
        batch: PointBatch,
        r: int,
        i: int,
        chart: str,
        code: str,
        aid: str,
        key: np.ndarray,
        times: np.ndarray,
        serial: Sequence[str | None],
        order: np.ndarray,
        pos: np.ndarray,
        rank_sorted: np.ndarray,
    ) -> None:
        c = self.chars[i]
        now_us = w.now_us
        serial_r = serial[r]
        samples = self._samples(
            r,
            int(key[r]),
            self._windows[i].get(code, 1),
            times,
            serial,
            order,
            pos,
            rank_sorted,
        )
        context = {k_: v for k_, v in (batch.context[r] or {}).items() if v is not None}
        severity = self._sev(i, code)
        t = int(times[r])
        base: dict[str, Any] = {
            "gateway_id": self.gateway_id,
            "site": c.site,
            "area": c.area,
            "line": c.line,
            "station": c.station,
            "characteristic": c.id,
            "chart": chart,
            "rule": code,
            "rule_text": c.rule_text.get(code) or RULE_TEXT.get(code, code),
            "severity": severity,
            "value": _num(batch.value[r]),
            "center": _num(batch.center[r]),
            "lcl": _num(batch.lcl[r]),
            "ucl": _num(batch.ucl[r]),
            "sigma": _num(batch.sigma[r]),
            "limits_id": str(batch.limits_id[r]),
            "sample_time": rfc3339(t),
            "samples": samples,
            "context": context,
        }
        if serial_r is not None:
            base["part_serial"] = str(serial_r)
        a = _Alarm(
            alarm_id=aid,
            path=c.path,
            site=c.site,
            area=c.area,
            line=c.line,
            station=c.station,
            characteristic=c.id,
            chart=chart,
            rule=code,
            severity=severity,
            status="active",
            published=1,
            held=None,
            raised_us=now_us,
            cleared_us=None,
            acked_us=None,
            closed_us=None,
            count=1,
            last_time=t,
            last_value=base["value"],
            last_serial=None if serial_r is None else str(serial_r),
            streak=0,
            ack_user=None,
            ack_comment=None,
            ack_source=None,
            cause_category=None,
            cause_code=None,
            action_code=None,
            payload=base,
        )
        w.new.add(aid)
        flood = self._flood_rate(w, i, t)
        if flood is not None:
            a.published, a.held = 0, f"flood:{flood.alarm.alarm_id}"  # type: ignore[union-attr]
            flood.alarm.count += 1  # type: ignore[union-attr]
            w.dirty[flood.alarm.alarm_id] = flood.alarm  # type: ignore[union-attr]
            w.out.held += 1
        elif a.point in self._shelves:
            a.published, a.held = 0, "shelved"
            w.out.held += 1
        self._open[aid] = a
        self._set_live(a, True)
        self._event(w, a, "raised", publish=bool(a.published), reason=a.held, line_time=t)
        w.out.raised += 1
        w.logs.append(
            (
                "ALARM %s %s chart %s %s (%s): value %s, limits [%s, %s], limits id %s%s",
                (
                    c.path,
                    code,
                    chart,
                    severity,
                    aid,
                    base["value"],
                    base["lcl"],
                    base["ucl"],
                    base["limits_id"],
                    f", held ({a.held})" if a.held else "",
                ),
            )
        )

    def _closed(self, w: _Work, a: _Alarm) -> None:
        """``a`` leaves the open alarms (which _load reads): its newest violating sample time
        becomes the mark of its point, so a replay of its samples after a restart is known."""
        a.status, a.closed_us = "closed", w.now_us
        self._open.pop(a.alarm_id, None)
        if a.rule == FLOOD_RULE:
            return
        slot = int(a.chart in _DISP_NAMES)
        i = self._index.get(a.path)
        last = a.last_time if i is None else self._hw.get((2 * i + slot, a.rule), a.last_time)
        point = _mark_key(a.path, slot, a.rule)
        w.marks[point] = max(last, a.last_time, w.marks.get(point, last))

    def _clear(self, w: _Work, a: _Alarm, sample_time: int) -> None:
        a.cleared_us = w.now_us
        if a.status == "acknowledged":
            self._closed(w, a)
        else:
            a.status = "cleared_unacked"
        self._set_live(a, False)
        # a shelved alarm's clear is published: MES saw it raised and must see it gone
        self._event(
            w,
            a,
            "cleared",
            publish=bool(a.published),
            extra={"clear_sample_time": rfc3339(sample_time)},
        )
        w.out.cleared += 1

    def _suppress(self, w: _Work, i: int, chart: str, code: str) -> None:
        w.out.suppressed += 1
        skey = (i, chart, code)
        first = self._supp_rows.get(skey)
        path = self.chars[i].path
        if first is None:
            self._supp_rows[skey] = w.now_us
            self._note(
                w, "suppressed", path=path, chart=chart, rule=code, count=1, reason=self._reason(i)
            )
            w.supp_new[skey] = w.journal[-1]
        elif skey in w.supp_new:
            w.supp_new[skey]["count"] += 1
        else:
            w.sql.append(
                (
                    "UPDATE journal SET count = count + 1 WHERE event = 'suppressed' AND path = ? "
                    "AND chart = ? AND rule = ? AND time_us = ?",
                    (path, chart, code, first),
                )
            )

    # -- flood ---------------------------------------------------------------------

    def _flood_rate(self, w: _Work, i: int, sample_time: int) -> _Flood | None:
        """Count a raise on the characteristic's line; the active flood if this one is held."""
        lk = self._line_key(i)
        fl = self._floods.setdefault(lk, _Flood())
        now = w.now_us
        window = int(self.config.flood.window_s * 1e6)
        if fl.times and fl.times[-1] > now:
            fl.times.clear()  # the wall clock went back: start counting afresh
        while fl.times and fl.times[0] <= now - window:
            fl.times.popleft()
        fl.times.append(now)
        limit = self.config.flood.max_alarms
        if len(fl.times) > limit:
            fl.calm_since = None
            if fl.alarm is None:
                self._start_flood(w, i, fl, sample_time)
        return fl if fl.alarm is not None else None

    def _start_flood(self, w: _Work, i: int, fl: _Flood, sample_time: int) -> None:
        c = self.chars[i]
        cfg = self.config.flood
        path = f"{c.site}/{c.area}/{c.line}/_line/_flood"
        limits_id = f"flood:{cfg.max_alarms}/{cfg.window_s:g}s"
        aid = alarm_id(path, FLOOD_RULE, limits_id, w.now_us, None)
        base = {
            "gateway_id": self.gateway_id,
            "site": c.site,
            "area": c.area,
            "line": c.line,
            "station": "_line",
            "characteristic": "_flood",
            "chart": "x",
            "rule": FLOOD_RULE,
            "rule_text": f"more than {cfg.max_alarms} alarms within {cfg.window_s:g} s on line "
            f"{c.line}; further alarms on this line are held",
            "severity": cfg.severity,
            "value": float(len(fl.times)),
            "center": None,
            "lcl": None,
            "ucl": float(cfg.max_alarms),
            "sigma": None,
            "limits_id": limits_id,
            "sample_time": rfc3339(sample_time),
            "samples": [],
            "context": {},
        }
        a = _Alarm(
            aid, path, c.site, c.area, c.line, "_line", "_flood", "x", FLOOD_RULE,
            cfg.severity, "active", 1, None, w.now_us, None, None, None, 0, sample_time,
            float(len(fl.times)), None, 0, None, None, None, None, None, None, base,
        )  # fmt: skip
        fl.alarm = a
        w.new.add(aid)
        self._open[aid] = a
        self._event(w, a, "raised", publish=True, extra={"held": 0}, line_time=sample_time)
        w.out.raised += 1
        w.logs.append(
            (
                "alarm flood on line %s: more than %d alarms within %g s; holding further "
                "alarms (%s)",
                (self._line_key(i), cfg.max_alarms, cfg.window_s, aid),
            )
        )

    def _floods_check(self, w: _Work) -> None:
        now = w.now_us
        window = int(self.config.flood.window_s * 1e6)
        for lk, fl in self._floods.items():
            if fl.alarm is None:
                continue
            if fl.times and fl.times[-1] > now:
                fl.times.clear()
            while fl.times and fl.times[0] <= now - window:
                fl.times.popleft()
            if len(fl.times) > self.config.flood.max_alarms:
                fl.calm_since = None
                continue
            if fl.calm_since is None or fl.calm_since > now:
                fl.calm_since = now
                continue
            if now - fl.calm_since >= window:
                a = fl.alarm
                fl.alarm, fl.calm_since = None, None
                a.cleared_us = now
                if a.status == "acknowledged":
                    self._closed(w, a)
                else:
                    a.status = "cleared_unacked"
                self._event(w, a, "cleared", publish=True, extra={"held": a.count})
                w.out.cleared += 1
                w.logs.append(("alarm flood on line %s is over (%d alarms held)", (lk, a.count)))

    # -- operator actions ----------------------------------------------------------

    def _lookup(self, alarm_id_: str) -> _Alarm | None:
        a = self._open.get(alarm_id_)
        if a is not None:
            return a
        rows = self._outbox.query(
            f"SELECT {', '.join(_COLUMNS)} FROM alarms WHERE alarm_id = ?", (alarm_id_,)
        )
        return _from_row(rows[0]) if rows else None

    def _resolve_cause(self, cause: str | None) -> tuple[str, str] | None:
        if cause is None or cause == "":
            return None
        category, sep, code = cause.rpartition(":")
        found = self._causes.get(code)
        if found is None or (sep and found[0] != category):
            listed = ", ".join(f"{cat}:{code_}" for code_, (cat, _) in sorted(self._causes.items()))
            raise AlarmError(
                "cause", f"unknown assignable cause {cause!r}; configured causes: {listed}"
            )
        return found[0], code

    def _resolve_action(self, action: str | None) -> str | None:
        if action is None or action == "":
            return None
        if action not in self._actions:
            raise AlarmError(
                "action",
                f"unknown corrective action {action!r}; configured actions: "
                f"{', '.join(sorted(self._actions))}",
            )
        return action

    @_locked
    def ack(
        self,
        alarm_id: str,
        user: str,
        comment: str = "",
        cause: str | None = None,
        action: str | None = None,
        *,
        now_us: int,
        source: Literal["mqtt", "api", "cli"] = "api",
    ) -> dict[str, Any] | None:
        """Acknowledge an alarm; returns the ``acknowledged`` event, or None if it was acknowledged already.

        ``cause`` is ``category:code`` or a bare ``code`` from the configured
        5M1E lists, ``action`` a configured action code. Raises
        :class:`AlarmError` for an unknown alarm, cause or action, or an empty user.
        The event is published unless the alarm is held or its point is shelved.
        """
        if not user or not str(user).strip():
            raise AlarmError("user", "an acknowledgement needs the user's name")
        if source not in ("mqtt", "api", "cli"):
            raise AlarmError("source", f"must be mqtt, api or cli, not {source!r}")
        found = self._resolve_cause(cause)
        act = self._resolve_action(action)
        a = self._lookup(alarm_id)
        if a is None:
            raise AlarmError("alarm_id", f"no alarm {alarm_id!r} (unknown or purged)")
        if a.acked_us is not None:
            return None
        w = _Work(now_us)
        a.acked_us, a.ack_user, a.ack_comment, a.ack_source = now_us, user, comment, source
        a.cause_category, a.cause_code = found if found else (None, None)
        a.action_code = act
        if a.status == "cleared_unacked":
            self._closed(w, a)
        else:
            a.status = "acknowledged"
        extra: dict[str, Any] = {"source": source}
        if found:
            cat, code = found
            item = self._causes[code][1]
            extra["cause"] = {
                "category": cat,
                "code": code,
                "text": item.text,
                "text_zh": item.text_zh,
            }
        if act:
            item = self._actions[act]
            extra["action"] = {"code": act, "text": item.text, "text_zh": item.text_zh}
        publish = bool(a.published) and a.point not in self._shelves
        p = self._event(
            w, a, "acknowledged", publish=publish, user=user, comment=comment, extra=extra
        )
        self._spare_lines += self._commit(w).lines
        log.info("alarm %s acknowledged by %s (%s)", alarm_id, user, source)
        return p

    @_locked
    def ack_command(
        self, path: str, payload: bytes | str | Mapping[str, Any], *, now_us: int
    ) -> dict[str, Any] | None:
        """Acknowledge from an MQTT command on ``{prefix}/cmd/{path}/ack`` (source ``mqtt``).

        ``payload`` is the message body (JSON object with ``alarm_id``, ``user``,
        optional ``comment``, ``cause``, ``action``) or the decoded object. The
        alarm must belong to ``path``. Malformed commands raise :class:`AlarmError`;
        the publisher logs them and drops the message (a retry would fail the same way).
        """
        if isinstance(payload, bytes | str):
            try:
                payload = json.loads(payload)
            except ValueError as e:
                raise AlarmError("payload", f"ack command on {path} is not JSON: {e}") from e
        if not isinstance(payload, Mapping):
            raise AlarmError("payload", f"ack command on {path} must be a JSON object")
        unknown = set(payload) - {"alarm_id", "user", "comment", "cause", "action"}
        if unknown:
            raise AlarmError("payload", f"ack command on {path}: unknown keys {sorted(unknown)}")
        for name in ("alarm_id", "user", "comment", "cause", "action"):
            value = payload.get(name)
            if value is not None and not isinstance(value, str):
                raise AlarmError(name, f"ack command on {path}: must be a string, not {value!r}")
        aid = payload.get("alarm_id")
        if not aid:
            raise AlarmError("alarm_id", f"ack command on {path} names no alarm_id")
        a = self._lookup(aid)
        if a is not None and a.path != path:
            raise AlarmError("alarm_id", f"alarm {aid!r} belongs to {a.path}, not {path}")
        return self.ack(
            aid,
            payload.get("user") or "",
            payload.get("comment") or "",
            payload.get("cause"),
            payload.get("action"),
            now_us=now_us,
            source="mqtt",
        )

    @_locked
    def shelve(
        self, alarm_id: str, user: str, comment: str, until_us: int, *, now_us: int
    ) -> dict[str, Any]:
        """Shelve the alarm's (characteristic, chart, rule) until ``until_us``; returns the event.

        Shelving again moves the expiry. Raises :class:`AlarmError` for an
        unknown or closed alarm, an empty user or an expiry not after ``now_us``.
        """
        if not user or not str(user).strip():
            raise AlarmError("user", "shelving needs the user's name")
        a = self._open.get(alarm_id)
        if a is None:
            known = self._lookup(alarm_id)
            raise AlarmError(
                "alarm_id",
                f"alarm {alarm_id!r} is closed" if known else f"no open alarm {alarm_id!r}",
            )
        if until_us <= now_us:
            raise AlarmError("until", f"shelve expiry {rfc3339(until_us)} is not in the future")
        w = _Work(now_us)
        self._shelves[a.point] = (until_us, alarm_id, user, comment)
        w.sql.append(
            (
                "INSERT OR REPLACE INTO shelves (point, until_us, alarm_id, user, comment) "
                "VALUES (?, ?, ?, ?, ?)",
                (a.point, until_us, alarm_id, user, comment),
            )
        )
        p = self._event(
            w,
            a,
            "shelved",
            publish=bool(a.published),
            user=user,
            comment=comment,
            extra={"shelved_until": rfc3339(until_us)},
        )
        self._spare_lines += self._commit(w).lines
        return p

    @_locked
    def unshelve(self, alarm_id: str, user: str, comment: str = "", *, now_us: int) -> Outcome:
        """End the shelving of the alarm's point (idempotent: nothing if not shelved).

        The ``unshelved`` event names the alarm that was shelved; alarms raised
        at the point meanwhile and still active are published as ``raised`` now.
        """
        a = self._lookup(alarm_id)
        if a is None:
            raise AlarmError("alarm_id", f"no alarm {alarm_id!r} (unknown or purged)")
        w = _Work(now_us)
        self._unshelve(w, a.point, user, comment)
        return self._commit(w)

    def _unshelve(self, w: _Work, point: str, user: str, comment: str) -> None:
        entry = self._shelves.pop(point, None)
        if entry is None:
            return
        _, shelved_id, _, _ = entry
        w.sql.append(("DELETE FROM shelves WHERE point = ?", (point,)))
        a = self._lookup(shelved_id)
        if a is not None:
            self._event(w, a, "unshelved", publish=bool(a.published), user=user, comment=comment)
        for b in list(self._open.values()):
            if b.point == point and b.held == "shelved" and b.status in _LIVE:
                b.published, b.held = 1, None
                self._event(w, b, "raised", publish=True, line_time=b.last_time)

    @_locked
    def expire_shelves(self, now_us: int) -> Outcome:
        """Unshelve every point whose expiry is at or before ``now_us`` (user ``system``)."""
        w = _Work(now_us)
        self._expire(w)
        return self._commit(w)

    def _expire(self, w: _Work) -> None:
        for point, (until, *_rest) in list(self._shelves.items()):
            if until <= w.now_us:
                self._unshelve(w, point, "system", "shelve expired")

    @_locked
    def tick(self, now_us: int) -> Outcome:
        """Periodic work (call every second or so): shelve expiry, flood end, retention purge."""
        w = _Work(now_us)
        self._expire(w)
        self._floods_check(w)
        if self._last_purge is None or not 0 <= now_us - self._last_purge < _PURGE_EVERY_US:
            self._last_purge = now_us
            cutoff = now_us - self.config.retention_days * 86_400_000_000
            w.sql.append(
                ("DELETE FROM alarms WHERE status = 'closed' AND closed_us < ?", (cutoff,))
            )
            w.sql.append(
                (
                    "DELETE FROM journal WHERE time_us < ? AND (alarm_id IS NULL OR alarm_id NOT IN "
                    "(SELECT alarm_id FROM alarms WHERE status != 'closed'))",
                    (cutoff,),
                )
            )
        return self._commit(w)

    @_locked
    def set_out_of_service(
        self, char: int, out_of_service: bool, user: str, comment: str = "", *, now_us: int
    ) -> Outcome:
        """Take a characteristic out of service (no raises, state ``suspended``) or back."""
        if not 0 <= char < len(self.chars):
            raise AlarmError("char", f"no characteristic with index {char}")
        if out_of_service == (char in self._oos):
            return Outcome()
        w = _Work(now_us)
        path = self.chars[char].path
        if out_of_service:
            self._oos[char] = (now_us, user, comment)
            w.sql.append(
                (
                    "INSERT OR REPLACE INTO oos (path, since_us, user, comment) VALUES (?, ?, ?, ?)",
                    (path, now_us, user, comment),
                )
            )
        else:
            del self._oos[char]
            w.sql.append(("DELETE FROM oos WHERE path = ?", (path,)))
        self._note(
            w,
            "out_of_service" if out_of_service else "in_service",
            path=path,
            user=user,
            comment=comment,
        )
        self._refresh_suspension(w, [char])
        log.info(
            "%s %s by %s", path, "out of service" if out_of_service else "back in service", user
        )
        return self._commit(w)

    def _refresh_suspension(self, w: _Work, chars: Iterable[int]) -> None:
        for i in chars:
            now_suspended = self._reason(i) is not None
            if not now_suspended:
                for skey in [s for s in self._supp_rows if s[0] == i]:
                    del self._supp_rows[skey]
            self._suspended[i] = now_suspended
            w.state_chars.add(i)
        self._states(w, w.state_chars)

    @_locked
    def set_process_state(self, scope: str | int, value: Any, time_us: int) -> Outcome:
        """A new value of a process-state tag (scope = the binding's ``key`` or its index).

        The value is mapped to a state name (``map``; unmapped values are the
        state). Entering or leaving a suppressing state is journaled and
        changes the state topic of the characteristics in the scope.
        """
        k = scope if isinstance(scope, int) else self._scope_index.get(scope)
        if k is None or not 0 <= k < len(self._scopes):
            known = ", ".join(self._scope_index) or "none configured"
            raise AlarmError("scope", f"no process_state binding {scope!r} ({known})")
        binding = self._scopes[k]
        if isinstance(value, bool):
            raw = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            raw = str(int(value))
        else:
            raw = str(value)
        state = binding.map.get(raw, raw)
        if self._proc.get(k) == state:
            return Outcome()
        w = _Work(time_us)
        was = self._proc.get(k)
        self._proc[k] = state
        w.sql.append(
            (
                "INSERT OR REPLACE INTO process_state (scope, value, state, time_us) "
                "VALUES (?, ?, ?, ?)",
                (binding.key, raw, state, time_us),
            )
        )
        self._note(w, "process_state", path=binding.key, reason=state, comment=f"value {raw}")
        if (was in binding.suppress) != (state in binding.suppress):
            log.info(
                "process state of %s is %s: alarms %s",
                binding.key,
                state,
                "suppressed" if state in binding.suppress else "raised again",
            )
        chars = [i for i, scopes in enumerate(self._char_scopes) if k in scopes]
        self._refresh_suspension(w, chars)
        return self._commit(w)

    @_locked
    def state_of(self, char: int) -> tuple[str, str | None] | None:
        """``(state, reason)`` of characteristic ``char`` as last published (None before that)."""
        content = self._last_state[int(char)]
        return None if content is None else (content[0], content[2])

    @_locked
    def set_limits_ids(self, ids: Mapping[int, str]) -> None:
        """The limits record each characteristic is judged against at start (no message)."""
        for i, lid in ids.items():
            self._limits[int(i)] = lid

    @_locked
    def limits_changed(self, char: int, info: Mapping[str, Any], *, now_us: int) -> Outcome:
        """New limits in force for ``char``: republish its retained state with ``limits``.

        ``info`` names the record (``limits_id``) and the audited change (who,
        when, why, old and new values); it travels in the state message's
        ``limits`` object until the next change.
        """
        i = int(char)
        if not 0 <= i < len(self.chars):
            raise AlarmError("char", f"no characteristic {char!r}")
        if not info.get("limits_id"):
            raise AlarmError("limits_id", "the change names no limits record")
        self._limits_info[i] = dict(info)
        self._limits[i] = info["limits_id"]
        w = _Work(now_us)
        self._note(w, "limits_changed", path=self.chars[i].path, reason=str(info["limits_id"]))
        self._states(w, [i], force=True)
        return self._commit(w)

    @_locked
    def initial_states(self, now_us: int) -> list[dict[str, Any]]:
        """State messages for every characteristic, appended to the ``mqtt`` stream (at start).

        ``no_data`` until a characteristic's first point ever (remembered across
        restarts), unless out of service/suppressed (``suspended``) or with
        active alarms restored from the file (``out_of_control``).
        """
        w = _Work(now_us)
        self._states(w, range(len(self.chars)), force=True)
        return self._commit(w).states

    @_locked
    def take_lines(self) -> list[str]:
        """InfluxDB lines of :meth:`ack` and :meth:`shelve` (they return the event), once."""
        lines, self._spare_lines = self._spare_lines, []
        return lines

    # -- queries -------------------------------------------------------------------

    @_locked
    def active(self, path: str | None = None) -> list[dict[str, Any]]:
        """Open alarms (active, acknowledged, cleared_unacked), oldest first, optionally of one path."""
        out = []
        for a in sorted(self._open.values(), key=lambda a: (a.raised_us, a.alarm_id)):
            if path is None or a.path == path:
                shelf = self._shelves.get(a.point)
                out.append(_public(a, shelf[0] if shelf else None))
        return out

    @_locked
    def get(self, alarm_id: str) -> dict[str, Any] | None:
        """One alarm (open or closed within retention) with its raise payload fields, or None."""
        a = self._lookup(alarm_id)
        return None if a is None else self._describe(a)

    def _describe(self, a: _Alarm) -> dict[str, Any]:
        shelf = self._shelves.get(a.point)
        out = _public(a, shelf[0] if shelf else None)
        out["payload"] = a.payload
        return out

    def find(self, where: str, params: Sequence[Any], limit: int) -> list[dict[str, Any]]:
        """Stored alarms matching ``where`` (an SQL condition on the ``alarms`` table with
        ``params``), newest raised first, at most ``limit``; as :meth:`get` describes them.

        The query runs on a snapshot of the file (:meth:`Outbox.snapshot`) without the
        manager's lock, so a long history search never holds up judging or its commits.
        """
        rows = self._outbox.snapshot(
            f"SELECT {', '.join(_COLUMNS)} FROM alarms WHERE {where} "
            "ORDER BY raised_us DESC, alarm_id LIMIT ?",
            (*params, int(limit)),
        )
        found = [_from_row(r) for r in rows]
        with self._lock:
            return [self._describe(self._open.get(a.alarm_id, a)) for a in found]

    def journal(
        self,
        since_us: int | None = None,
        until_us: int | None = None,
        path: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Journal rows (every event, update, suppression, held alarm) in time order."""
        where, params = ["1=1"], []
        if since_us is not None:
            where.append("time_us >= ?")
            params.append(since_us)
        if until_us is not None:
            where.append("time_us < ?")
            params.append(until_us)
        if path is not None:
            where.append("path = ?")
            params.append(path)
        cols = (
            "id, time_us, event, alarm_id, path, chart, rule, seq, published, count, user, "
            "comment, reason, cause_category, cause_code, action_code, payload"
        )
        rows = self._outbox.snapshot(  # no lock held: a long search never holds up judging
            f"SELECT {cols} FROM journal WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            (*params, int(limit)),
        )
        names = [c.strip() for c in cols.split(",")]
        out = []
        for row in rows:
            d = dict(zip(names, row, strict=True))
            d["payload"] = None if d["payload"] is None else json.loads(d["payload"])
            out.append(d)
        return out

    def pareto(
        self,
        since_us: int | None = None,
        until_us: int | None = None,
        line: str | None = None,
        characteristic: str | None = None,
        by: Literal["cause", "category"] = "cause",
    ) -> list[tuple[str, str, str, int]]:
        """Acknowledged alarms counted by assignable cause (or 5M1E category), most frequent first.

        Rows are ``(category, code, text, count)``; by category ``code`` is ``""``
        and ``text`` the category. The window applies to the ack time; ``line``
        is a line id or ``site/area/line``; ``characteristic`` an id or a path.
        """
        if by not in ("cause", "category"):
            raise AlarmError("by", f"must be 'cause' or 'category', not {by!r}")
        where, params = ["cause_code IS NOT NULL"], []
        if since_us is not None:
            where.append("acked_us >= ?")
            params.append(since_us)
        if until_us is not None:
            where.append("acked_us < ?")
            params.append(until_us)
        if line is not None:
            where.append("(line = ? OR site || '/' || area || '/' || line = ?)")
            params += [line, line]
        if characteristic is not None:
            where.append("(characteristic = ? OR path = ?)")
            params += [characteristic, characteristic]
        group = "cause_category, cause_code" if by == "cause" else "cause_category"
        code_col = "cause_code" if by == "cause" else "''"
        rows = self._outbox.snapshot(  # no lock held: a long search never holds up judging
            f"SELECT cause_category, {code_col}, count(*) "
            f"FROM alarms WHERE {' AND '.join(where)} GROUP BY {group}",
            params,
        )
        out = []
        for cat, code, count in rows:
            if by == "cause":
                item = self._causes.get(code)
                text = item[1].text if item else code
            else:
                text = cat
            out.append((cat, code, text, int(count)))
        out.sort(key=lambda r: (-r[3], CATEGORIES.index(r[0]) if r[0] in CATEGORIES else 99, r[1]))
        return out

    @_locked
    def counts(self) -> dict[str, int]:
        """Self-metrics: open alarms by status, shelved points, out-of-service and suspended
        characteristics, active floods, held alarms and the last seq drawn."""
        by_status = dict.fromkeys(_OPEN, 0)
        held = 0
        for a in self._open.values():
            by_status[a.status] += 1
            held += bool(a.held and a.status in _LIVE)
        return {
            **by_status,
            "held": held,
            "shelved": len(self._shelves),
            "out_of_service": len(self._oos),
            "suspended": int(self._suspended.sum()),
            "floods": sum(1 for f in self._floods.values() if f.alarm is not None),
            "seq": self._outbox.counter(SEQ_COUNTER),
        }
