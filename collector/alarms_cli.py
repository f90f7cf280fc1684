"""``shopspc alarms``: operators and engineers work alarms from the command line.

A running gateway owns ``data_dir/alarms.db`` (its in-memory alarm state must
stay in step with the file), so this command never writes it:

* **Reading** (``list``, ``show``, ``journal``, ``pareto``, ``causes``) opens
  ``alarms.db`` read-only (SQLite ``mode=ro``) and works while the gateway runs.
* **Changing** (``ack``, ``shelve``, ``unshelve``, ``service``) goes through the
  gateway: the command is published (QoS 1) on ``{prefix}/cmd/{path}/{verb}``
  to the broker of ``alarms.mqtt``, then the command waits (``--timeout``) for
  the gateway's confirming event on ``{prefix}/alarm/{path}`` (``acknowledged``,
  ``shelved``, ``unshelved`` with that ``alarm_id``) or, for ``service``, the
  retained state on ``{prefix}/state/{path}``, and prints it. An event the
  gateway records but does not publish (an alarm held by a flood or a shelved
  point) is confirmed from the read-only journal instead. The user gives only
  the alarm id: its characteristic path is read from ``alarms.db``. When the
  gateway's retained status (``{prefix}/gateway/{id}/status``) says
  ``offline``, nothing is sent: its persistent session would hold the command
  and carry it out whenever the gateway comes back.

Times (``--since``, ``--until``): RFC 3339 / ISO 8601 (no zone: UTC), ``now``,
``-2h`` / ``2h`` (ago) or ``+30m`` (ahead); units s, m, h, d, w.

Exit codes: 0 done (or nothing to do, e.g. acknowledged already); 1 no
confirmation from the gateway within ``--timeout``, the gateway offline or the
broker unreachable;
2 a bad request (unknown alarm, cause or action, bad config, no
``alarms.mqtt``), printed as one line ``shopspc alarms <command>: what and where``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from collector.alarmconfig import picklists
from collector.cliutil import UsageError as _UsageError
from collector.cliutil import (
    console,
    now_us,
    parse_time,
    print_json,
    table,
    when,
)
from collector.timefmt import rfc3339

if TYPE_CHECKING:
    from collector.config import Characteristic, GatewayConfig

__all__ = ["alarms_app"]

#: Commands connect with these credentials instead of alarms.mqtt's when they are set.
CMD_USER_ENV = "SHOPSPC_CMD_MQTT_USER"
CMD_PASSWORD_ENV = "SHOPSPC_CMD_MQTT_PASSWORD"
EXIT_NO_CONFIRMATION = 1
EXIT_BAD = 2
_OPEN = ("active", "acknowledged", "cleared_unacked")
_STATUSES = (*_OPEN, "closed")
#: 5M1E (人机料法环测): each category with its Chinese name.
_CATEGORIES = {
    "operator": "人",
    "machine": "机",
    "material": "料",
    "method": "法",
    "environment": "环",
    "measurement": "测",
}
_POLL_S = 0.2  # how often the read-only journal is looked at while waiting
_WHOLE = frozenset({"alarm id", "characteristic", "raised", "time", "code", "event"})


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table(title, columns, rows, _WHOLE)


alarms_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Alarms: list, show, journal, pareto, causes (read-only, while the gateway runs); "
        "ack, shelve, unshelve, service (sent through the gateway over MQTT)."
    ),
)


class _NoConfirmationError(Exception):
    """The gateway did not confirm: one line, exit 1."""


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return rfc3339(us)


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@contextlib.contextmanager
def _errors(command: str) -> Iterator[None]:
    """Every failure as one line naming what and where, never a traceback."""
    from connectors.base import ConnectorError

    try:
        yield
    except _NoConfirmationError as exc:
        sys.stderr.write(f"shopspc alarms {command}: {exc}\n")
        raise typer.Exit(EXIT_NO_CONFIRMATION) from None
    except ConnectorError as exc:
        sys.stderr.write(f"shopspc alarms {command}: {exc}\n")
        raise typer.Exit(EXIT_NO_CONFIRMATION if exc.retryable else EXIT_BAD) from None
    except (_UsageError, sqlite3.Error, ValueError, OSError) as exc:
        sys.stderr.write(f"shopspc alarms {command}: {exc}\n")
        raise typer.Exit(EXIT_BAD) from None


# --------------------------------------------------------------------------- config and store


@dataclass
class _Setup:
    cfg: GatewayConfig
    config: Path
    data_dir: Path

    @property
    def db(self) -> Path:
        return self.data_dir / "alarms.db"

    @property
    def prefix(self) -> str:
        return self.cfg.alarms.prefix

    def characteristic(self, key: str) -> Characteristic:
        """A configured characteristic by path, or by id when that id is unique."""
        chars = self.cfg.characteristics
        for ch in chars:
            if ch.path == key:
                return ch
        hits = [ch for ch in chars if ch.id == key]
        if len(hits) == 1:
            return hits[0]
        if hits:
            paths = ", ".join(h.path for h in hits)
            raise _UsageError(f"characteristic id {key!r} is ambiguous: {paths} (give the path)")
        known = ", ".join(ch.path for ch in chars) or "none configured"
        raise _UsageError(f"no characteristic {key!r} in {self.config} (known: {known})")


def _setup(config: Path, data_dir: Path | None) -> _Setup:
    from collector.config import ConfigError, load_config

    try:
        cfg, _ = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_BAD) from None
    return _Setup(cfg, config, data_dir if data_dir is not None else Path(cfg.gateway.data_dir))


@contextlib.contextmanager
def _ro(setup: _Setup) -> Iterator[sqlite3.Connection]:
    """``alarms.db`` opened read-only (the gateway is its only writer)."""
    if not setup.db.is_file():
        raise _UsageError(
            f"no alarm store {setup.db} (has the gateway run with this data_dir? --data-dir)"
        )
    uri = f"file:{quote(str(setup.db.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise _UsageError(f"cannot open {setup.db} read-only: {exc}") from None
    try:
        con.row_factory = sqlite3.Row
        yield con
    except sqlite3.Error as exc:
        raise _UsageError(f"reading {setup.db}: {exc}") from None
    finally:
        con.close()


def _alarm(con: sqlite3.Connection, setup: _Setup, alarm_id: str) -> dict[str, Any]:
    """One alarm row with its shelving, or a usage error naming the store."""
    row = con.execute(
        "SELECT a.*, s.until_us AS shelved_until_us, s.alarm_id AS shelved_alarm_id "
        "FROM alarms a LEFT JOIN shelves s ON s.point = a.path || '|' || a.chart || '|' || a.rule "
        "WHERE a.alarm_id = ?",
        (alarm_id,),
    ).fetchone()
    if row is None:
        raise _UsageError(f"no alarm {alarm_id!r} in {setup.db} (unknown or purged)")
    return _alarm_json(row)


def _alarm_json(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    payload = json.loads(out.pop("payload") or "{}")
    out["limits_id"] = payload.get("limits_id")
    out["payload"] = payload
    for key in ("raised", "cleared", "acked", "closed", "shelved_until"):
        out[key] = _iso(out.get(f"{key}_us"))
    out["last_time_iso"] = _iso(out.get("last_time"))
    return out


# --------------------------------------------------------------------------- output helpers


def _status(a: dict[str, Any]) -> str:
    s = a["status"]
    if a.get("shelved_until_us") is not None:
        s += f", shelved until {when(a['shelved_until_us'])}"
    if a.get("held"):
        s += f", held ({a['held']})"
    return s


# --------------------------------------------------------------------------- read commands

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", help="the gateway configuration (YAML): data_dir, alarms, mqtt"),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="state directory holding alarms.db (default: gateway.data_dir)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
AlarmArg = Annotated[str, typer.Argument(help="the alarm id (A-…), as `shopspc alarms list` shows")]
LineOpt = Annotated[
    str | None, typer.Option("--line", help="only this line: its id or site/area/line")
]
CharOpt = Annotated[
    str | None, typer.Option("--char", help="only this characteristic: its id or its path")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="from this time on (RFC 3339, -8h, -7d)")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="before this time (RFC 3339, -1d)")]


def _place_filter(
    line: str | None, char: str | None, where: list[str], params: list[Any], t: str = ""
) -> None:
    """Narrow alarms (table alias ``t``) to a line (id or site/area/line) and a characteristic."""
    if line is not None:
        where.append(f"({t}line = ? OR {t}site || '/' || {t}area || '/' || {t}line = ?)")
        params += [line, line]
    if char is not None:
        where.append(f"({t}characteristic = ? OR {t}path = ?)")
        params += [char, char]


@alarms_app.command("list")
def list_(
    config: ConfigOpt,
    data_dir: DataDirOpt = None,
    line: LineOpt = None,
    char: CharOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="active, acknowledged, cleared_unacked or closed (default: every open one)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Open alarms, oldest first: status, severity, rule, chart, where, raised, count, last value."""
    with _errors("list"):
        setup = _setup(config, data_dir)
        if status is not None and status not in _STATUSES:
            raise _UsageError(f"--status {status!r} is not one of {', '.join(_STATUSES)}")
        wanted = (status,) if status else _OPEN
        where = [f"a.status IN ({', '.join('?' * len(wanted))})"]
        params: list[Any] = list(wanted)
        _place_filter(line, char, where, params, "a.")
        with _ro(setup) as con:
            rows = con.execute(
                "SELECT a.*, s.until_us AS shelved_until_us, s.alarm_id AS shelved_alarm_id "
                "FROM alarms a LEFT JOIN shelves s "
                "ON s.point = a.path || '|' || a.chart || '|' || a.rule "
                f"WHERE {' AND '.join(where)} ORDER BY a.raised_us, a.alarm_id",
                params,
            ).fetchall()
            out = [_alarm_json(r) for r in rows]
    if as_json:
        for a in out:
            a.pop("payload")
        print_json(out)
        return
    _table(
        f"{len(out)} {status or 'open'} alarm(s) in {setup.db}",
        [
            "alarm id",
            "status",
            "severity",
            "rule",
            "chart",
            "characteristic",
            "raised",
            "count",
            "last value",
        ],
        [
            [
                a["alarm_id"],
                _status(a),
                a["severity"],
                a["rule"],
                a["chart"],
                a["path"],
                when(a["raised_us"]),
                str(a["count"]),
                _num(a["last_value"]),
            ]
            for a in out
        ],
    )


_JOURNAL_COLS = (
    "id, time_us, event, alarm_id, path, chart, rule, seq, published, count, user, comment, "
    "reason, cause_category, cause_code, action_code, payload"
)


def _journal_json(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["time"] = _iso(out["time_us"])
    out["payload"] = None if out["payload"] is None else json.loads(out["payload"])
    return out


def _journal_rows(out: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for j in out:
        what = j["alarm_id"] or ""
        detail = " ".join(
            x
            for x in (
                j["user"] and f"by {j['user']}",
                j["cause_code"] and f"cause {j['cause_category']}:{j['cause_code']}",
                j["action_code"] and f"action {j['action_code']}",
                j["reason"] and f"({j['reason']})",
                j["comment"] and f"“{j['comment']}”",
            )
            if x
        )
        rows.append(
            [
                when(j["time_us"]),
                j["event"],
                what,
                j["path"] or "",
                " ".join(x for x in (j["chart"], j["rule"]) if x),
                "" if j["seq"] is None else str(j["seq"]),
                detail,
            ]
        )
    return rows


_JOURNAL_HEAD = ["time", "event", "alarm id", "where", "chart rule", "seq", "detail"]


@alarms_app.command("show")
def show(
    alarm_id: AlarmArg, config: ConfigOpt, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """One alarm, every field, and its journal (raised, updated, acknowledged, shelved …)."""
    with _errors("show"):
        setup = _setup(config, data_dir)
        with _ro(setup) as con:
            a = _alarm(con, setup, alarm_id)
            journal = [
                _journal_json(r)
                for r in con.execute(
                    f"SELECT {_JOURNAL_COLS} FROM journal WHERE alarm_id = ? ORDER BY id",
                    (alarm_id,),
                )
            ]
    if as_json:
        print_json({"alarm": a, "journal": journal})
        return
    p = a["payload"]
    rows = [
        ["alarm id", a["alarm_id"]],
        ["status", _status(a)],
        ["characteristic", a["path"]],
        ["chart / rule", f"{a['chart']} / {a['rule']}: {p.get('rule_text', '')}"],
        ["severity", a["severity"]],
        ["raised", a["raised"] or "—"],
        [
            "sample",
            f"{p.get('sample_time', '—')}"
            + (f" part {p['part_serial']}" if p.get("part_serial") else ""),
        ],
        ["value", _num(p.get("value"))],
        ["centre / LCL / UCL", " / ".join(_num(p.get(k)) for k in ("center", "lcl", "ucl"))],
        ["σ", _num(p.get("sigma"))],
        ["limits id", str(a["limits_id"])],
        [
            "count / last value",
            f"{a['count']} / {_num(a['last_value'])} at {when(a['last_time'])}",
        ],
        ["context", ", ".join(f"{k}={v}" for k, v in (p.get("context") or {}).items()) or "—"],
        ["cleared", a["cleared"] or "—"],
        ["acknowledged", a["acked"] or "—"],
        ["closed", a["closed"] or "—"],
    ]
    if a["acked_us"] is not None:
        rows.append(["by", f"{a['ack_user']} ({a['ack_source']}): {a['ack_comment'] or ''}"])
        if a["cause_code"]:
            _, text, text_zh = _cause_texts(setup).get(a["cause_code"], ("", "", None))
            wording = " / ".join(t for t in (text, text_zh) if t)
            rows.append(["cause", f"{a['cause_category']}:{a['cause_code']} {wording}".strip()])
        if a["action_code"]:
            item = next((i for i in setup.cfg.alarms.actions if i.code == a["action_code"]), None)
            wording = " / ".join(t for t in (item.text, item.text_zh) if t) if item else ""
            rows.append(["action", f"{a['action_code']} {wording}".strip()])
    _table(a["alarm_id"], ["", ""], rows)
    _table(f"Journal of {a['alarm_id']}", _JOURNAL_HEAD, _journal_rows(journal))


@alarms_app.command("journal")
def journal(
    config: ConfigOpt,
    data_dir: DataDirOpt = None,
    since: SinceOpt = None,
    char: CharOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="at most this many rows (the newest)")
    ] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The alarm journal in time order: every event, update, suppression, shelving, service change."""
    with _errors("journal"):
        setup = _setup(config, data_dir)
        where, params = ["1=1"], []
        if since is not None:
            where.append("time_us >= ?")
            params.append(parse_time(since, now_us(), "--since"))
        if char is not None:
            paths = [c.path for c in setup.cfg.characteristics if char in (c.id, c.path)] or [char]
            where.append(f"path IN ({', '.join('?' * len(paths))})")
            params += paths
        with _ro(setup) as con:
            rows = con.execute(
                f"SELECT {_JOURNAL_COLS} FROM journal WHERE {' AND '.join(where)} "
                "ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        out = [_journal_json(r) for r in reversed(rows)]
    if as_json:
        print_json(out)
        return
    _table(f"Alarm journal ({len(out)} rows) in {setup.db}", _JOURNAL_HEAD, _journal_rows(out))


def _cause_texts(setup: _Setup) -> dict[str, tuple[str, str, str | None]]:
    """Cause code → (category, text, text_zh) from the configured lists."""
    return {
        item.code: (cat, item.text, item.text_zh)
        for cat, items in setup.cfg.alarms.causes.items()
        for item in items
    }


@alarms_app.command("pareto")
def pareto(
    config: ConfigOpt,
    data_dir: DataDirOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    line: LineOpt = None,
    char: CharOpt = None,
    by: Annotated[
        str, typer.Option("--by", help="cause (each assignable cause) or category (5M1E)")
    ] = "cause",
    as_json: JsonOpt = False,
) -> None:
    """Acknowledged assignable causes counted (window on the ack time), most frequent first."""
    with _errors("pareto"):
        setup = _setup(config, data_dir)
        if by not in ("cause", "category"):
            raise _UsageError(f"--by must be cause or category, not {by!r}")
        now = now_us()
        where, params = ["cause_code IS NOT NULL"], []
        if since is not None:
            where.append("acked_us >= ?")
            params.append(parse_time(since, now, "--since"))
        if until is not None:
            where.append("acked_us < ?")
            params.append(parse_time(until, now, "--until"))
        _place_filter(line, char, where, params)
        group = "cause_category, cause_code" if by == "cause" else "cause_category"
        code_col = "cause_code" if by == "cause" else "''"
        with _ro(setup) as con:
            rows = con.execute(
                f"SELECT cause_category, {code_col}, count(*) FROM alarms "
                f"WHERE {' AND '.join(where)} GROUP BY {group}",
                params,
            ).fetchall()
        texts = _cause_texts(setup)
        total = sum(r[2] for r in rows)
        out = []
        for cat, code, n in rows:
            if by == "cause":
                _, text, text_zh = texts.get(code, (cat, code, None))
            else:
                text, text_zh = cat, _CATEGORIES.get(cat)
            out.append(
                {"category": cat, "code": code, "text": text, "text_zh": text_zh, "count": n}
            )
        order = {c: k for k, c in enumerate(_CATEGORIES)}
        out.sort(key=lambda r: (-r["count"], order.get(r["category"], 99), r["code"]))
        cum = 0
        for r in out:
            cum += r["count"]
            r["percent"] = round(100 * r["count"] / total, 1)
            r["cumulative_percent"] = round(100 * cum / total, 1)
    if as_json:
        print_json(out)
        return
    counts = [
        [str(r["count"]), f"{r['percent']:.1f}", f"{r['cumulative_percent']:.1f}"] for r in out
    ]
    title = f"Pareto of assignable causes by {by} ({total} acknowledged alarms)"
    if by == "category":
        _table(
            title,
            ["category", "5M1E", "count", "%", "cum %"],
            [[r["category"], r["text_zh"] or "", *c] for r, c in zip(out, counts, strict=True)],
        )
        return
    _table(
        title,
        ["category", "code", "cause", "原因", "count", "%", "cum %"],
        [
            [r["category"], r["code"], r["text"] or "", r["text_zh"] or "", *c]
            for r, c in zip(out, counts, strict=True)
        ],
    )


@alarms_app.command("causes")
def causes(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """The configured 5M1E assignable causes and corrective actions to pick from when acknowledging."""
    with _errors("causes"):
        setup = _setup(config, None)
        out = picklists(setup.cfg.alarms)
    if as_json:
        print_json(out)
        return
    _table(
        "Assignable causes (--cause category:code)",
        ["category", "code", "cause", "原因"],
        [[c["category"], c["code"], c["text"], c["text_zh"] or ""] for c in out["causes"]],
    )
    _table(
        "Corrective actions (--action code)",
        ["code", "action", "措施"],
        [[a["code"], a["text"], a["text_zh"] or ""] for a in out["actions"]],
    )


# --------------------------------------------------------------------------- changing commands

UserOpt = Annotated[str, typer.Option("--user", help="who does it (journaled and published)")]
CommentOpt = Annotated[str, typer.Option("--comment", help="free text, journaled")]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="seconds to wait for the gateway's confirmation"),
]


def _need_mqtt(setup: _Setup, verb: str) -> None:
    if setup.cfg.alarms.mqtt is None:
        raise _UsageError(
            f"{verb} goes through the running gateway over MQTT and needs alarms.mqtt "
            f"(the broker the gateway uses) in {setup.config}"
        )


def _resolve_cause(setup: _Setup, cause: str) -> str:
    """``category:code`` (or a bare code) checked against the configured lists."""
    texts = _cause_texts(setup)
    category, sep, code = cause.rpartition(":")
    found = texts.get(code)
    if found is None or (sep and found[0] != category):
        listed = ", ".join(f"{cat}:{c}" for c, (cat, _, _) in texts.items())
        raise _UsageError(
            f"unknown assignable cause {cause!r} (alarms.causes in {setup.config}); "
            f"configured causes: {listed}"
        )
    return f"{found[0]}:{code}"


def _resolve_action(setup: _Setup, action: str) -> str:
    codes = [a.code for a in setup.cfg.alarms.actions]
    if action not in codes:
        raise _UsageError(
            f"unknown corrective action {action!r} (alarms.actions in {setup.config}); "
            f"configured actions: {', '.join(codes)}"
        )
    return action


@dataclass
class _Confirmation:
    """How the gateway confirmed: the MQTT message (topic, payload) and/or the journal row."""

    topic: str | None
    message: dict[str, Any] | None
    journal: dict[str, Any] | None


def _journal_mark(setup: _Setup) -> int:
    with _ro(setup) as con:
        return con.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0]


def _journal_since(
    setup: _Setup, mark: int, events: tuple[str, ...], alarm_id: str | None, path: str
) -> dict[str, Any] | None:
    with _ro(setup) as con:
        row = con.execute(
            f"SELECT {_JOURNAL_COLS} FROM journal WHERE id > ? "
            f"AND event IN ({', '.join('?' * len(events))}) AND path = ? "
            "AND (? IS NULL OR alarm_id = ?) ORDER BY id LIMIT 1",
            (mark, *events, path, alarm_id, alarm_id),
        ).fetchone()
    return None if row is None else _journal_json(row)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


async def _gateway_status(
    inbox: asyncio.Queue[tuple[str, bytes]], status_topic: str, until: float
) -> dict[str, Any] | None:
    """The gateway's retained status (online/offline), if the broker has one, before ``until``.

    Other messages that arrive meanwhile predate the command and are dropped.
    """
    loop = asyncio.get_running_loop()
    while (left := until - loop.time()) > 0:
        try:
            topic, raw = await asyncio.wait_for(inbox.get(), left)
        except TimeoutError:
            return None
        if topic == status_topic:
            return _json_object(raw)
    return None


async def _exchange(
    setup: _Setup,
    verb: str,
    path: str,
    payload: dict[str, Any],
    watch: str,
    matches: Callable[[dict[str, Any]], bool],
    journal: Callable[[int], dict[str, Any] | None],
    timeout: float,
) -> _Confirmation:
    """Publish the command, wait for its confirmation on ``watch`` (or an unpublished journal row)."""
    from connectors.base import ConnectorError
    from connectors.mqtt.client import MqttLink, Outgoing

    mqtt = setup.cfg.alarms.mqtt
    assert mqtt is not None
    password = None
    if mqtt.password_env is not None:
        password = os.environ.get(mqtt.password_env)
        if password is None:
            raise _UsageError(
                f"environment variable {mqtt.password_env} (alarms.mqtt.password_env in "
                f"{setup.config}) is not set"
            )
    cmd_user = os.environ.get(CMD_USER_ENV)
    if cmd_user:
        # the operator's own broker account (an ACL that lets only MES users send commands)
        password = os.environ.get(CMD_PASSWORD_ENV)
        if password is None:
            raise _UsageError(f"{CMD_USER_ENV} is set but {CMD_PASSWORD_ENV} is not")
    # a throw-away session: nothing of this client should outlive the command at the broker
    cfg = mqtt.model_copy(
        update={
            "username": cmd_user or mqtt.username,
            "session_expiry_s": 0,
            "connect_timeout_s": min(mqtt.connect_timeout_s, max(timeout, 1.0)),
            "publish_timeout_s": min(mqtt.publish_timeout_s, max(timeout, 1.0)),
        }
    )
    inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)

    def on_message(topic: str, body: bytes) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood of other events: the journal tells
            inbox.put_nowait((topic, body))

    client_id = f"shopspc-cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    link = MqttLink(cfg, client_id, password=password, on_message=on_message)
    where = f"the broker {mqtt.host}:{mqtt.port} (alarms.mqtt in {setup.config})"
    cmd_topic = f"{setup.prefix}/cmd/{path}/{verb}"
    status_topic = f"{setup.prefix}/gateway/{setup.cfg.gateway.id}/status"
    loop = asyncio.get_running_loop()
    try:
        try:
            await link.connect()
            await link.subscribe(status_topic, 1)
            await link.subscribe(watch, 1)
        except ConnectorError as exc:
            raise ConnectorError(
                where, f"{exc.message}; nothing was sent", retryable=exc.retryable
            ) from None
        status = await _gateway_status(inbox, status_topic, loop.time() + min(1.0, timeout))
        if status is not None and status.get("status") != "online":
            # its persistent session would hold the command and carry it out whenever it is back
            raise _NoConfirmationError(
                f"gateway {setup.cfg.gateway.id} is {status.get('status')} (its status on "
                f"{status_topic}, {status.get('time')}): nothing was sent; start the gateway "
                "and check its log"
            )
        mark = _journal_mark(setup)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            await link.publish_many([Outgoing(cmd_topic, body, 1, False)])
        except ConnectorError as exc:
            raise ConnectorError(
                where, f"publishing {cmd_topic}: {exc.message}", retryable=exc.retryable
            ) from None
        deadline = loop.time() + timeout
        next_look = loop.time() + _POLL_S
        recorded: dict[str, Any] | None = None
        while (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                topic, raw = await asyncio.wait_for(inbox.get(), min(left, _POLL_S))
                msg = _json_object(raw)
                if topic != status_topic and msg is not None and matches(msg):
                    return _Confirmation(topic, msg, recorded)
            if recorded is None and loop.time() >= next_look:
                next_look = loop.time() + _POLL_S
                recorded = journal(mark)
                if recorded is not None and not recorded["published"] and verb != "service":
                    # held (flood) or shelved point: the gateway records it but publishes nothing
                    return _Confirmation(None, None, recorded)
        if recorded is not None:
            return _Confirmation(None, None, recorded)
        raise _NoConfirmationError(
            f"no confirmation from the gateway within {timeout:g} s after publishing "
            f"{cmd_topic} to {mqtt.host}:{mqtt.port}. Is gateway {setup.cfg.gateway.id} running "
            "and connected to that broker? Check the gateway log for a refused command "
            f"('{verb} command for {path} refused: …'). The command may still be carried out "
            "when the gateway (re)connects: check with `shopspc alarms show` before sending again"
        )
    finally:
        await link.close()


def _send(
    setup: _Setup,
    verb: str,
    path: str,
    payload: dict[str, Any],
    watch: str,
    matches: Callable[[dict[str, Any]], bool],
    events: tuple[str, ...],
    alarm_id: str | None,
    timeout: float,
) -> _Confirmation:
    _need_mqtt(setup, verb)

    def journal(mark: int) -> dict[str, Any] | None:
        return _journal_since(setup, mark, events, alarm_id, path)

    return asyncio.run(_exchange(setup, verb, path, payload, watch, matches, journal, timeout))


def _report(c: _Confirmation, text: str, as_json: bool) -> None:
    if as_json:
        print_json({"topic": c.topic, "message": c.message, "journal": c.journal})
        return
    con = console()
    con.print(text)
    if c.message is not None:
        seq = c.message.get("seq")
        con.print(f"confirmed by the gateway on {c.topic}" + (f" (seq {seq})" if seq else ""))
    elif c.journal is not None and not c.journal["published"]:
        con.print(
            f"recorded by the gateway in its journal at {when(c.journal['time_us'])} "
            "(not published: the alarm is held or its point is shelved)"
        )
    else:
        con.print(
            "recorded by the gateway in its journal, but its MQTT message was not seen in time "
            "(the gateway publishes it once the broker takes it)"
        )


def _open_alarm(setup: _Setup, alarm_id: str) -> dict[str, Any]:
    with _ro(setup) as con:
        return _alarm(con, setup, alarm_id)


@alarms_app.command("ack")
def ack(
    alarm_id: AlarmArg,
    config: ConfigOpt,
    user: UserOpt,
    comment: CommentOpt = "",
    cause: Annotated[
        str | None,
        typer.Option(
            "--cause", help="assignable cause category:code (see `shopspc alarms causes`)"
        ),
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="corrective action code (see causes)")
    ] = None,
    data_dir: DataDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Acknowledge an alarm (with cause and action) through the running gateway."""
    with _errors("ack"):
        setup = _setup(config, data_dir)
        _need_mqtt(setup, "ack")
        if not user.strip():
            raise _UsageError("--user must name who acknowledges")
        payload: dict[str, Any] = {"alarm_id": alarm_id, "user": user, "comment": comment}
        if cause:
            payload["cause"] = _resolve_cause(setup, cause)
        if action:
            payload["action"] = _resolve_action(setup, action)
        a = _open_alarm(setup, alarm_id)
        if a["acked_us"] is not None:
            console().print(
                f"{alarm_id} was acknowledged already by {a['ack_user']} at "
                f"{when(a['acked_us'])}: nothing sent"
            )
            return
        c = _send(
            setup,
            "ack",
            a["path"],
            payload,
            f"{setup.prefix}/alarm/{a['path']}",
            lambda m: m.get("alarm_id") == alarm_id and m.get("event") == "acknowledged",
            ("acknowledged",),
            alarm_id,
            timeout,
        )
    extra = "".join(
        f", {k} {payload[k]}" for k in ("cause", "action") if payload.get(k) is not None
    )
    _report(c, f"acknowledged {alarm_id} ({a['path']} {a['rule']}) by {user}{extra}", as_json)


@alarms_app.command("shelve")
def shelve(
    alarm_id: AlarmArg,
    config: ConfigOpt,
    user: UserOpt,
    minutes: Annotated[
        float | None, typer.Option("--minutes", min=0.0, help="shelve for this many minutes")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="shelve until this time (RFC 3339, +2h)")
    ] = None,
    comment: CommentOpt = "",
    data_dir: DataDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Shelve the alarm's (characteristic, chart, rule): new alarms there are held until then."""
    with _errors("shelve"):
        setup = _setup(config, data_dir)
        _need_mqtt(setup, "shelve")
        if not user.strip():
            raise _UsageError("--user must name who shelves")
        if (minutes is None) == (until is None):
            raise _UsageError("give exactly one of --minutes N and --until TIME")
        payload: dict[str, Any] = {"alarm_id": alarm_id, "user": user, "comment": comment}
        now = now_us()
        if until is not None:
            until_us = parse_time(until, now, "--until")
            if until_us <= now:
                raise _UsageError(f"--until {until!r} ({_iso(until_us)}) is not in the future")
            payload["until"] = _iso(until_us)
        else:
            assert minutes is not None
            if minutes <= 0:
                raise _UsageError("--minutes must be more than 0")
            payload["minutes"] = minutes
            until_us = now + int(minutes * 60_000_000)
        a = _open_alarm(setup, alarm_id)
        if a["status"] == "closed":
            raise _UsageError(f"alarm {alarm_id} is closed: nothing to shelve")
        c = _send(
            setup,
            "shelve",
            a["path"],
            payload,
            f"{setup.prefix}/alarm/{a['path']}",
            lambda m: m.get("alarm_id") == alarm_id and m.get("event") == "shelved",
            ("shelved",),
            alarm_id,
            timeout,
        )
    shown = (c.message or {}).get("shelved_until") or _iso(until_us)
    _report(c, f"shelved {a['path']} {a['chart']} {a['rule']} until {shown} by {user}", as_json)


@alarms_app.command("unshelve")
def unshelve(
    alarm_id: AlarmArg,
    config: ConfigOpt,
    user: UserOpt,
    comment: CommentOpt = "",
    data_dir: DataDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """End the shelving of the alarm's point; alarms held there meanwhile are raised now."""
    with _errors("unshelve"):
        setup = _setup(config, data_dir)
        _need_mqtt(setup, "unshelve")
        if not user.strip():
            raise _UsageError("--user must name who unshelves")
        a = _open_alarm(setup, alarm_id)
        shelved = a.get("shelved_alarm_id")
        if shelved is None:
            console().print(f"{a['path']} {a['chart']} {a['rule']} is not shelved: nothing sent")
            return
        c = _send(
            setup,
            "unshelve",
            a["path"],
            {"alarm_id": alarm_id, "user": user, "comment": comment},
            f"{setup.prefix}/alarm/{a['path']}",
            lambda m: m.get("alarm_id") == shelved and m.get("event") == "unshelved",
            ("unshelved",),
            shelved,
            timeout,
        )
    _report(c, f"unshelved {a['path']} {a['chart']} {a['rule']} by {user}", as_json)


@alarms_app.command("service")
def service(
    char: Annotated[str, typer.Argument(help="characteristic: its path or its (unique) id")],
    config: ConfigOpt,
    user: UserOpt,
    out: Annotated[
        bool | None,
        typer.Option("--out/--in", help="take out of service (no alarms raised) or back in"),
    ] = None,
    comment: CommentOpt = "",
    data_dir: DataDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Take a characteristic out of service (alarms not raised, state suspended) or back in."""
    with _errors("service"):
        setup = _setup(config, data_dir)
        _need_mqtt(setup, "service")
        if out is None:
            raise _UsageError("give --out (out of service) or --in (back in service)")
        if not user.strip():
            raise _UsageError("--user must name who changes the service state")
        path = setup.characteristic(char).path
        with _ro(setup) as con:
            now_out = con.execute("SELECT 1 FROM oos WHERE path = ?", (path,)).fetchone()
        if bool(now_out) == out:
            console().print(f"{path} is {'out of' if out else 'in'} service already: nothing sent")
            return

        def matches(m: dict[str, Any]) -> bool:
            suspended_oos = m.get("state") == "suspended" and str(m.get("reason") or "").startswith(
                "out_of_service"
            )
            return "state" in m and suspended_oos == out

        c = _send(
            setup,
            "service",
            path,
            {"in_service": not out, "user": user, "comment": comment},
            f"{setup.prefix}/state/{path}",
            matches,
            ("out_of_service" if out else "in_service",),
            None,
            timeout,
        )
    state = (c.message or {}).get("state")
    _report(
        c,
        f"{path} {'out of service' if out else 'back in service'} by {user}"
        + (f": state {state}" if state else ""),
        as_json,
    )
