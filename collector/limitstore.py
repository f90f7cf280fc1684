"""The audited limits store: which frozen limits record judges each characteristic, since when, and why.

One SQLite file (``data_dir/limits.db``, standard library ``sqlite3``, WAL,
``synchronous=FULL``: a change that returned survives a power cut) with three
tables:

* ``records`` — every :class:`~spc.limits.LimitsRecord` ever assigned, stored
  once per (characteristic path, content id) as its JSON. Immutable: a trigger
  refuses updates and deletes, and every read recomputes the content id, so a
  record edited behind the store's back is reported (:class:`TamperedRecordError`)
  instead of judging parts.
* ``assignments`` — the history with effective dating. The record in force for
  a characteristic at time *t* is that of the latest assignment (by
  ``effective_from_us``, ties by ``seq``, the later one wins) with
  ``effective_from_us ≤ t`` that was not cancelled. An assignment dated in the
  future is *pending* until then (:meth:`LimitsStore.pending`); a pending one
  may be cancelled (:meth:`LimitsStore.cancel`), nothing else of an assignment
  ever changes.
* ``audit`` — append-only (triggers refuse update and delete): who, when, why,
  action, old and new limits id and values (centre, LCL, UCL, σ, method, n),
  host. Each row carries the SHA-256 of the previous row's hash and its own
  content, so an edited or removed row breaks the chain (:meth:`LimitsStore.verify`).

Every change writes the record, the assignment and the audit row in ONE
transaction: either all three are there or none.

**Backdating.** Alarms already raised name the limits id they were judged
against; an assignment effective in the past would rewrite which record "was
in force" when they were raised. So :meth:`LimitsStore.assign` refuses an
``effective_from_us`` more than :data:`BACKDATE_TOLERANCE_US` (5 minutes:
clock skew between the CLI host and the gateway) before now unless
``allow_backdate=True``; a backdated change is audited like any other, with its
effective time. The running gateway applies changes as they come
(:meth:`LimitsStore.changes_since`), so a backdated change never re-judges
points already judged.

**For the running gateway.** Poll :meth:`LimitsStore.changes_since` with the
last audit ``seq`` seen (start from :meth:`LimitsStore.last_seq`), publish each
entry on the state topic, and take the records in force from
:meth:`LimitsStore.current_all` (also at each period, so a pending assignment
takes over when its time comes). Reading is safe while the CLI writes (WAL).

Errors are :class:`LimitsStoreError` naming the file and what was being done.
A file that is not a limits store (another SQLite database, garbage, a newer
schema) is refused at open and left untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.sqlitefile import check_identity
from spc.limits import LimitsRecord

__all__ = [
    "ACTIONS",
    "APPLICATION_ID",
    "BACKDATE_TOLERANCE_US",
    "SOURCES",
    "Assignment",
    "AuditEntry",
    "Change",
    "LimitsStore",
    "LimitsStoreError",
    "TamperedRecordError",
    "control_limits",
    "limits_values",
]

APPLICATION_ID = 0x5350434C  # "SPCL"
SCHEMA_VERSION = 1
BACKDATE_TOLERANCE_US = 300_000_000
SOURCES = ("phase1", "config", "cli", "api", "import")
ACTIONS = ("assign", "recompute", "set", "revert", "cancel", "phase1", "config", "import")
_ATTRIBUTE = ("p", "np", "c", "u")

_SCHEMA = """
CREATE TABLE records (
    path TEXT NOT NULL,
    limits_id TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (path, limits_id)
);
CREATE TABLE assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    limits_id TEXT NOT NULL,
    effective_from_us INTEGER NOT NULL,
    assigned_at_us INTEGER NOT NULL,
    user TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    cancelled_by INTEGER,
    FOREIGN KEY (path, limits_id) REFERENCES records (path, limits_id)
);
CREATE INDEX assignments_timeline ON assignments (path, effective_from_us, seq);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    path TEXT NOT NULL,
    why TEXT NOT NULL,
    source TEXT NOT NULL,
    effective_from_us INTEGER,
    assignment_seq INTEGER,
    old_limits_id TEXT,
    new_limits_id TEXT,
    old_values TEXT,
    new_values TEXT,
    host TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_path ON audit (path, seq);
CREATE TRIGGER records_immutable BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'limits records are immutable'); END;
CREATE TRIGGER records_kept BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'limits records are never deleted'); END;
CREATE TRIGGER assignments_kept BEFORE DELETE ON assignments
    BEGIN SELECT RAISE(ABORT, 'assignments are never deleted'); END;
CREATE TRIGGER assignments_fixed BEFORE UPDATE OF
    seq, path, limits_id, effective_from_us, assigned_at_us, user, reason, source ON assignments
    BEGIN SELECT RAISE(ABORT, 'an assignment never changes (only a pending one is cancelled)'); END;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

_ASSIGNMENT_COLS = (
    "seq, path, limits_id, effective_from_us, assigned_at_us, user, reason, source, cancelled_by"
)
_AUDIT_COLS = (
    "seq, at_us, user, action, path, why, source, effective_from_us, assignment_seq, "
    "old_limits_id, new_limits_id, old_values, new_values, host, prev_hash, hash"
)


class LimitsStoreError(Exception):
    """A limits store problem, naming the file and what was being done."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.message = message


class TamperedRecordError(LimitsStoreError):
    """A stored record whose content no longer matches its id (edited outside the store)."""

    def __init__(self, path: str | Path, limits_id: str, detail: str) -> None:
        super().__init__(path, f"limits record {limits_id} was altered: {detail}")
        self.limits_id = limits_id


@dataclass(frozen=True, slots=True)
class Assignment:
    """One entry of a characteristic's limits history: record ``limits_id`` in force from ``effective_from_us``."""

    seq: int
    path: str
    limits_id: str
    effective_from_us: int
    assigned_at_us: int
    user: str
    reason: str
    source: str
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the append-only audit trail.

    ``old``/``new`` are :func:`limits_values` of the record in force before and
    after the change at ``effective_from_us`` (None where there was none).
    """

    seq: int
    at_us: int
    user: str
    action: str
    path: str
    why: str
    source: str
    effective_from_us: int | None
    assignment_seq: int | None
    old_limits_id: str | None
    new_limits_id: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    host: str

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (what the gateway publishes on the state topic)."""
        return {
            "seq": self.seq,
            "at_us": self.at_us,
            "user": self.user,
            "action": self.action,
            "path": self.path,
            "why": self.why,
            "source": self.source,
            "effective_from_us": self.effective_from_us,
            "assignment_seq": self.assignment_seq,
            "old_limits_id": self.old_limits_id,
            "new_limits_id": self.new_limits_id,
            "old": self.old,
            "new": self.new,
            "host": self.host,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """What one audited change did: the audit row, the new assignment, the record and its predecessor."""

    audit: AuditEntry
    assignment: Assignment
    record: LimitsRecord
    previous: LimitsRecord | None


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def control_limits(
    record: LimitsRecord, subgroup_size: int = 1
) -> tuple[float | None, float | None]:
    """The centre chart's (LCL, UCL) from a record, or (None, None) where they vary per point.

    I-MR: centre ∓ k·σ; X̄: centre ∓ k·σ/√n; c: c̄ ∓ k·√c̄ (LCL clipped at 0).
    p, np, u (limits depend on each sample size), EWMA and CUSUM (on λ, L, k, h
    and the point's position) have no single pair. k is the record's ``nsigmas``.
    """
    k = dict(record.params).get("nsigmas", 3.0)
    c, s = record.center, record.sigma
    if record.chart == "c":
        if not math.isfinite(c) or c < 0:
            return None, None
        half = k * math.sqrt(c)
        return max(0.0, c - half), c + half
    if record.chart in ("imr", "xbar-r", "xbar-s") and math.isfinite(s) and math.isfinite(c):
        m = 1 if record.chart == "imr" else max(1, int(subgroup_size))
        half = k * s / math.sqrt(m)
        return c - half, c + half
    return None, None


def limits_values(record: LimitsRecord | None, subgroup_size: int = 1) -> dict[str, Any] | None:
    """The values an audit row keeps of a record: chart, centre, LCL, UCL, σ, method, n, k, subgroup size."""
    if record is None:
        return None
    lcl, ucl = control_limits(record, subgroup_size)
    return {
        "chart": record.chart,
        "center": _finite(record.center),
        "lcl": lcl,
        "ucl": ucl,
        "sigma": _finite(record.sigma),
        "method": record.method,
        "n_points": record.n_points,
        "excluded": len(record.exclusions),
        "nsigmas": dict(record.params).get("nsigmas"),
        "subgroup_size": int(subgroup_size),
    }


def _now_us() -> int:
    return time.time_ns() // 1000


def _required(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: must not be empty (every limits change names who and why)")
    return value.strip()


def _chain(prev_hash: str, row: dict[str, Any]) -> str:
    body = json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


class LimitsStore:
    """The audited, effective-dated limits store in one SQLite file (see the module docstring).

    ``readonly`` opens an existing store for reading only (the CLI's ``list``
    while the gateway runs); otherwise the file is created when missing.
    Thread-safe (one connection behind a lock) and blocking (a change waits
    for an fsync): from asyncio call it through :func:`asyncio.to_thread`. Several
    processes may open the same file (the gateway and the CLI); writes are
    serialised by SQLite (``busy_timeout`` seconds of waiting). Use as a
    context manager or call :meth:`close`.
    """

    def __init__(
        self, path: str | Path, *, readonly: bool = False, busy_timeout: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = self._open(busy_timeout)

    # -- opening -----------------------------------------------------------------

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        if self.path.exists() and not self.path.is_file():
            raise LimitsStoreError(self.path, "exists but is not a regular file")
        if self.readonly and not self.path.is_file():
            raise LimitsStoreError(self.path, "no limits store here")
        if not self.readonly and not self.path.parent.is_dir():
            raise LimitsStoreError(self.path, f"directory {self.path.parent} does not exist")
        try:
            if self.readonly:
                conn = sqlite3.connect(
                    self.path.resolve().as_uri() + "?mode=rw",
                    uri=True,
                    timeout=busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as e:
            raise LimitsStoreError(self.path, f"cannot open: {e}") from e
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        fresh = check_identity(
            conn,
            self.path,
            what="shopspc limits store",
            application_id=APPLICATION_ID,
            schema_version=SCHEMA_VERSION,
            error=LimitsStoreError,
        )
        if fresh and self.readonly:
            raise LimitsStoreError(self.path, "is an empty file, not a limits store")
        try:
            if self.readonly:
                conn.execute("PRAGMA query_only=1")
                return
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LimitsStoreError(
                    self.path, f"cannot switch to WAL mode (journal_mode={mode})"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if fresh:
                conn.execute("BEGIN IMMEDIATE")
                # statement by statement: executescript would commit the open transaction
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise LimitsStoreError(self.path, f"cannot prepare the store: {e}") from e

    def __enter__(self) -> LimitsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- plumbing ----------------------------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LimitsStoreError(self.path, "the store is closed")
        return self._conn

    @contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._live()
            try:
                yield conn
            except sqlite3.Error as e:
                raise LimitsStoreError(self.path, f"{doing}: {e}") from e

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise LimitsStoreError(self.path, f"{doing}: opened read-only")
        with self._lock:
            conn = self._live()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise LimitsStoreError(self.path, f"{doing}: {e}") from e

    def _load(self, conn: sqlite3.Connection, path: str, limits_id: str) -> LimitsRecord | None:
        row = conn.execute(
            "SELECT record FROM records WHERE path = ? AND limits_id = ?", (path, limits_id)
        ).fetchone()
        return None if row is None else self._decode(limits_id, row[0])

    def _decode(self, limits_id: str, text: str) -> LimitsRecord:
        try:
            data = json.loads(text)
            rec = LimitsRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise TamperedRecordError(self.path, limits_id, str(e)) from None
        if rec.id != limits_id:
            raise TamperedRecordError(self.path, limits_id, f"its content now has the id {rec.id}")
        return rec

    def _effective_row(
        self, conn: sqlite3.Connection, path: str, at_us: int, without: int = 0
    ) -> tuple[Any, ...] | None:
        return conn.execute(
            f"SELECT {_ASSIGNMENT_COLS} FROM assignments WHERE path = ? AND effective_from_us <= ? "
            "AND cancelled_by IS NULL AND seq != ? "
            "ORDER BY effective_from_us DESC, seq DESC LIMIT 1",
            (path, int(at_us), without),
        ).fetchone()

    def _effective(
        self, conn: sqlite3.Connection, path: str, at_us: int, without: int = 0
    ) -> LimitsRecord | None:
        row = self._effective_row(conn, path, at_us, without)
        return None if row is None else self._assigned(conn, path, row[2], row[0])

    def _assigned(
        self, conn: sqlite3.Connection, path: str, limits_id: str, seq: int
    ) -> LimitsRecord:
        """The record an assignment names; its absence is damage, never "no limits"."""
        rec = self._load(conn, path, limits_id)
        if rec is None:
            raise TamperedRecordError(
                self.path, limits_id, f"assignment #{seq} of {path} names it but it is missing"
            )
        return rec

    def _append_audit(self, conn: sqlite3.Connection, **fields: Any) -> AuditEntry:
        last = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev_hash = "" if last is None else last[0]
        seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit").fetchone()[0])
        row = {"seq": seq, "host": self._host, **fields}
        for key in ("old", "new"):
            row[key] = None if row[key] is None else json.dumps(row[key], sort_keys=True)
        digest = _chain(prev_hash, row)
        conn.execute(
            f"INSERT INTO audit ({_AUDIT_COLS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                row["at_us"],
                row["user"],
                row["action"],
                row["path"],
                row["why"],
                row["source"],
                row["effective_from_us"],
                row["assignment_seq"],
                row["old_limits_id"],
                row["new_limits_id"],
                row["old"],
                row["new"],
                row["host"],
                prev_hash,
                digest,
            ),
        )
        return AuditEntry(seq=seq, host=self._host, **fields)

    # -- changing ----------------------------------------------------------------

    def assign(
        self,
        path: str,
        record: LimitsRecord,
        *,
        user: str,
        reason: str,
        source: str,
        effective_from_us: int | None = None,
        now_us: int | None = None,
        action: str = "assign",
        allow_backdate: bool = False,
        subgroup_size: int = 1,
    ) -> Change:
        """Put ``record`` in force for ``path`` from ``effective_from_us`` (default: now); audited.

        Writes the record (once per id), the assignment and the audit row in
        one transaction. ``user`` and ``reason`` must not be empty, ``source``
        is one of :data:`SOURCES`, ``action`` one of :data:`ACTIONS`
        (``recompute``, ``set``, ``revert`` … say how the record came about).
        An effective time more than :data:`BACKDATE_TOLERANCE_US` before
        ``now_us`` is refused unless ``allow_backdate``. ``subgroup_size`` is
        the characteristic's subgroup size, for the LCL/UCL in the audit values.
        Raises ValueError naming the offending argument.
        """
        path = _required("path", path)
        user = _required("user", user)
        reason = _required("reason", reason)
        if source not in SOURCES:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCES)}")
        if action not in ACTIONS or action == "cancel":
            raise ValueError(f"action: {action!r} is not an assigning action")
        if record.id != record.content_id():
            raise ValueError(
                f"record: id {record.id} does not match its content ({record.content_id()})"
            )
        now = _now_us() if now_us is None else int(now_us)
        eff = now if effective_from_us is None else int(effective_from_us)
        if eff < now - BACKDATE_TOLERANCE_US and not allow_backdate:
            raise ValueError(
                f"effective_from: {(now - eff) / 1e6:.0f} s in the past; alarms already raised "
                "were judged against the limits then in force (pass allow_backdate to do it anyway)"
            )
        text = json.dumps(record.to_json(), sort_keys=True, allow_nan=False)
        with self._write(f"assign {record.id} to {path}") as conn:
            previous = self._effective(conn, path, eff)
            stored = self._load(conn, path, record.id)
            if stored is None:
                conn.execute(
                    "INSERT INTO records (path, limits_id, record, created_at_us) VALUES (?, ?, ?, ?)",
                    (path, record.id, text, now),
                )
                stored = record
            cur = conn.execute(
                "INSERT INTO assignments (path, limits_id, effective_from_us, assigned_at_us, "
                "user, reason, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, record.id, eff, now, user, reason, source),
            )
            seq = int(cur.lastrowid or 0)
            entry = self._append_audit(
                conn,
                at_us=now,
                user=user,
                action=action,
                path=path,
                why=reason,
                source=source,
                effective_from_us=eff,
                assignment_seq=seq,
                old_limits_id=None if previous is None else previous.id,
                new_limits_id=record.id,
                old=limits_values(previous, subgroup_size),
                new=limits_values(stored, subgroup_size),
            )
        assignment = Assignment(seq, path, record.id, eff, now, user, reason, source)
        return Change(entry, assignment, stored, previous)

    def revert(
        self,
        path: str,
        limits_id: str,
        *,
        user: str,
        reason: str,
        source: str = "cli",
        effective_from_us: int | None = None,
        now_us: int | None = None,
        allow_backdate: bool = False,
        subgroup_size: int = 1,
    ) -> Change:
        """Put an earlier record of ``path`` back in force (audited as ``revert``).

        Raises ValueError when ``limits_id`` was never assigned to ``path``.
        """
        rec = self.record(limits_id, path)
        if rec is None:
            raise ValueError(f"limits_id: {limits_id} was never assigned to {path}")
        return self.assign(
            path,
            rec,
            user=user,
            reason=reason,
            source=source,
            effective_from_us=effective_from_us,
            now_us=now_us,
            action="revert",
            allow_backdate=allow_backdate,
            subgroup_size=subgroup_size,
        )

    def cancel(
        self,
        seq: int,
        *,
        user: str,
        reason: str,
        source: str = "cli",
        now_us: int | None = None,
        subgroup_size: int = 1,
    ) -> AuditEntry:
        """Cancel a pending (future-dated) assignment; audited as ``cancel``.

        Only an assignment not yet in force can be cancelled: one in force is
        replaced by a new assignment (:meth:`revert`), never undone. Raises
        ValueError naming the assignment otherwise.
        """
        user = _required("user", user)
        reason = _required("reason", reason)
        if source not in SOURCES:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCES)}")
        now = _now_us() if now_us is None else int(now_us)
        with self._write(f"cancel assignment {seq}") as conn:
            row = conn.execute(
                f"SELECT {_ASSIGNMENT_COLS} FROM assignments WHERE seq = ?", (int(seq),)
            ).fetchone()
            if row is None:
                raise ValueError(f"seq: no assignment {seq}")
            a = _assignment(row)
            if a.cancelled:
                raise ValueError(f"seq: assignment {seq} is already cancelled")
            if a.effective_from_us <= now:
                raise ValueError(
                    f"seq: assignment {seq} is already in force; assign or revert instead"
                )
            before = self._effective(conn, a.path, a.effective_from_us)
            after = self._effective(conn, a.path, a.effective_from_us, without=a.seq)
            entry = self._append_audit(
                conn,
                at_us=now,
                user=user,
                action="cancel",
                path=a.path,
                why=reason,
                source=source,
                effective_from_us=a.effective_from_us,
                assignment_seq=a.seq,
                old_limits_id=None if before is None else before.id,
                new_limits_id=None if after is None else after.id,
                old=limits_values(before, subgroup_size),
                new=limits_values(after, subgroup_size),
            )
            conn.execute(
                "UPDATE assignments SET cancelled_by = ? WHERE seq = ?", (entry.seq, a.seq)
            )
        return entry

    def import_json(
        self, file: str | Path, *, user: str = "import", now_us: int | None = None
    ) -> list[Change]:
        """Adopt the records of a legacy ``limits.json`` (path → record JSON) as in force now.

        Only characteristics without any assignment yet are imported (source and
        action ``import``, audited); running it again imports nothing. Raises
        :class:`LimitsStoreError` naming the file when it cannot be read or a
        record does not match its id.
        """
        src = Path(file)
        try:
            data = json.loads(src.read_text(encoding="utf-8"))
            records = {str(p): LimitsRecord.from_json(d) for p, d in data.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LimitsStoreError(src, f"cannot import limits records: {e}") from None
        known = set(self.paths())
        return [
            self.assign(
                path,
                rec,
                user=user,
                reason=f"imported from {src}",
                source="import",
                now_us=now_us,
                action="import",
            )
            for path, rec in sorted(records.items())
            if path not in known
        ]

    # -- reading -----------------------------------------------------------------

    def effective(self, path: str, at_us: int) -> LimitsRecord | None:
        """The record in force for ``path`` at ``at_us`` (None: none assigned by then)."""
        with self._read(f"effective limits of {path}") as conn:
            return self._effective(conn, path, at_us)

    def effective_assignment(self, path: str, at_us: int) -> Assignment | None:
        """The assignment that puts ``path``'s record in force at ``at_us``."""
        with self._read(f"effective assignment of {path}") as conn:
            row = self._effective_row(conn, path, at_us)
        return None if row is None else _assignment(row)

    def current_assignments(self, at_us: int) -> dict[str, Assignment]:
        """The assignment in force at ``at_us`` for every characteristic that has one."""
        with self._read("current assignments") as conn:
            rows = conn.execute(
                f"SELECT {_ASSIGNMENT_COLS} FROM (SELECT *, ROW_NUMBER() OVER ("
                "PARTITION BY path ORDER BY effective_from_us DESC, seq DESC) AS rn "
                "FROM assignments WHERE effective_from_us <= ? AND cancelled_by IS NULL) "
                "WHERE rn = 1 ORDER BY path",
                (int(at_us),),
            ).fetchall()
        return {r[1]: _assignment(r) for r in rows}

    def current_all(self, at_us: int) -> dict[str, LimitsRecord]:
        """The record in force at ``at_us`` for every characteristic that has one."""
        current = self.current_assignments(at_us)
        with self._read("current records") as conn:
            out: dict[str, LimitsRecord] = {}
            for path, a in current.items():
                out[path] = self._assigned(conn, path, a.limits_id, a.seq)
            return out

    def history(self, path: str) -> list[Assignment]:
        """All assignments of ``path`` on its timeline: by effective time, ties by ``seq``."""
        with self._read(f"history of {path}") as conn:
            rows = conn.execute(
                f"SELECT {_ASSIGNMENT_COLS} FROM assignments WHERE path = ? "
                "ORDER BY effective_from_us, seq",
                (path,),
            ).fetchall()
        return [_assignment(r) for r in rows]

    def pending(self, at_us: int, path: str | None = None) -> list[Assignment]:
        """Assignments not cancelled that come into force after ``at_us`` (of ``path`` or all)."""
        sql = (
            f"SELECT {_ASSIGNMENT_COLS} FROM assignments WHERE effective_from_us > ? "
            "AND cancelled_by IS NULL"
        )
        args: list[Any] = [int(at_us)]
        if path is not None:
            sql += " AND path = ?"
            args.append(path)
        with self._read("pending assignments") as conn:
            rows = conn.execute(sql + " ORDER BY effective_from_us, seq", args).fetchall()
        return [_assignment(r) for r in rows]

    def record(self, limits_id: str, path: str | None = None) -> LimitsRecord | None:
        """A stored record by id (of ``path`` when given); its content id is verified."""
        with self._read(f"record {limits_id}") as conn:
            if path is not None:
                return self._load(conn, path, limits_id)
            row = conn.execute(
                "SELECT record FROM records WHERE limits_id = ? LIMIT 1", (limits_id,)
            ).fetchone()
            return None if row is None else self._decode(limits_id, row[0])

    def paths(self) -> list[str]:
        """Every characteristic path that ever had an assignment, sorted."""
        with self._read("paths") as conn:
            return [
                r[0] for r in conn.execute("SELECT DISTINCT path FROM assignments ORDER BY path")
            ]

    def audit(
        self, path: str | None = None, since_seq: int = 0, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit rows after ``since_seq`` (of ``path`` or all), oldest first, at most ``limit``."""
        sql = f"SELECT {_AUDIT_COLS} FROM audit WHERE seq > ?"
        args: list[Any] = [int(since_seq)]
        if path is not None:
            sql += " AND path = ?"
            args.append(path)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._read("audit") as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_audit_entry(r) for r in rows]

    def changes_since(self, seq: int) -> list[AuditEntry]:
        """Every audit row after ``seq``: what the running gateway applies and publishes."""
        return self.audit(since_seq=seq)

    def last_seq(self) -> int:
        """The newest audit ``seq`` (0 when empty): where a poller of :meth:`changes_since` starts."""
        with self._read("last seq") as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0])

    def verify(self) -> list[str]:
        """Check every record's content id and the audit hash chain; returns the problems found."""
        problems: list[str] = []
        with self._read("verify") as conn:
            for path, limits_id, text in conn.execute(
                "SELECT path, limits_id, record FROM records ORDER BY path, limits_id"
            ).fetchall():
                try:
                    self._decode(limits_id, text)
                except TamperedRecordError as e:
                    problems.append(f"{path}: {e.message}")
            prev = ""
            expected_seq = 1
            for r in conn.execute(f"SELECT {_AUDIT_COLS} FROM audit ORDER BY seq").fetchall():
                seq = r[0]
                if seq != expected_seq:
                    problems.append(f"audit: rows {expected_seq}…{seq - 1} are missing")
                expected_seq = seq + 1
                row = {
                    "seq": seq,
                    "at_us": r[1],
                    "user": r[2],
                    "action": r[3],
                    "path": r[4],
                    "why": r[5],
                    "source": r[6],
                    "effective_from_us": r[7],
                    "assignment_seq": r[8],
                    "old_limits_id": r[9],
                    "new_limits_id": r[10],
                    "old": r[11],
                    "new": r[12],
                    "host": r[13],
                }
                if r[14] != prev:
                    problems.append(f"audit {seq}: does not follow the previous row")
                if _chain(r[14], row) != r[15]:
                    problems.append(f"audit {seq}: content does not match its hash")
                prev = r[15]
            # AUTOINCREMENT remembers the highest seq ever written: a cut-off tail shows here
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
            if top is not None and int(top[0]) >= expected_seq:
                problems.append(f"audit: rows {expected_seq}…{top[0]} are missing")
        return problems


def _statements(script: str) -> list[str]:
    """Split the schema into statements; trigger bodies hold ``;`` and end with ``END;``."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        stripped = buf.strip()
        if stripped.upper().startswith("CREATE TRIGGER") and not stripped.upper().endswith("END;"):
            continue
        if stripped != ";":
            out.append(stripped)
        buf = ""
    return out


def _assignment(r: tuple[Any, ...]) -> Assignment:
    return Assignment(
        seq=int(r[0]),
        path=r[1],
        limits_id=r[2],
        effective_from_us=int(r[3]),
        assigned_at_us=int(r[4]),
        user=r[5],
        reason=r[6],
        source=r[7],
        cancelled=r[8] is not None,
    )


def _audit_entry(r: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        seq=int(r[0]),
        at_us=int(r[1]),
        user=r[2],
        action=r[3],
        path=r[4],
        why=r[5],
        source=r[6],
        effective_from_us=r[7],
        assignment_seq=r[8],
        old_limits_id=r[9],
        new_limits_id=r[10],
        old=None if r[11] is None else json.loads(r[11]),
        new=None if r[12] is None else json.loads(r[12]),
        host=r[13],
    )
