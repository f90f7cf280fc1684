"""``shopspc limits``: see, recompute, set and revert the control limits of each characteristic.

Every change is an audited assignment in ``data_dir/limits.db``
(:mod:`collector.limitstore`): who (``--user``), why (``--reason``), when, the
old and the new values. The running gateway picks changes up from the store
and publishes them on the state topic.

Times (``--from``, ``--to``, ``--effective``, ``--since``): RFC 3339 / ISO 8601
(``2026-11-26T08:00:00Z``; without a zone: UTC), ``now``, or relative to now:
``-2h`` / ``2h`` (two hours ago), ``+30m`` (in 30 minutes); units s, m, h, d, w.
Windows are ``[--from, --to)``.

Exclusions (``recompute --exclude``, repeatable, or one per line in
``--exclude-file``, ``#`` starts a comment): ``index:N`` (the N-th plotted point
of the window, 0-based, as ``shopspc analyze`` counts), ``serial:S`` (the part
with that serial), ``time:T`` (the measurement at that instant) or
``time:T1..T2`` (every measurement in ``[T1, T2)``); an unprefixed integer is an
index, an unprefixed timestamp a time, anything else a serial. Append
``=REASON`` to give the exclusion its own reason (default: ``--reason``).
On a subgroup chart (X̄-R, X̄-S) a serial or time excludes the whole subgroup
(plotted point) it belongs to. An exclusion that matches nothing is an error.
With I-MR, a moving range is used only when both of its points are.

Every error prints one line ``shopspc limits <command>: what and where`` and
exits 2.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from collector.cliutil import UsageError as _UsageError
from collector.cliutil import (
    console,
    now_us,
    parse_time,
    print_json,
    table,
    when,
)
from collector.recompute import (
    ExclusionSpec,
    Point,
    abs_time,
    build,
    effective_us,
    parse_exclusion,
    store_points,
)
from collector.recompute import iso as _iso
from collector.recompute import subgroup_size as _m

if TYPE_CHECKING:
    from collector.config import Characteristic, GatewayConfig
    from collector.limitstore import Assignment, LimitsStore
    from spc.limits import LimitsRecord

__all__ = ["limits_app", "parse_time"]

EXIT_BAD = 2
_UNCHARTED = ("p", "np", "u")
_WHOLE = frozenset({"characteristic", "limits id", "since", "at", "effective from", "effective"})


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table(title, columns, rows, _WHOLE)


limits_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Control limits: list, show, history, audit, recompute, set, revert, cancel, import, verify. "
        "Times: RFC 3339 (UTC if no zone), 'now', or -2h / +30m relative to now."
    ),
)


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.8g}"


@contextmanager
def _errors(command: str) -> Iterator[None]:
    """Every failure as one line naming what and where, exit 2, never a traceback."""
    from collector.limitstore import LimitsStoreError
    from connectors.base import ConnectorError
    from spc.errors import SpcInputError

    try:
        yield
    except SpcInputError as exc:  # a ValueError: first
        sys.stderr.write(f"shopspc limits {command}: cannot estimate: {exc.message}\n")
        raise typer.Exit(EXIT_BAD) from None
    except (_UsageError, LimitsStoreError, ConnectorError, ValueError, OSError) as exc:
        sys.stderr.write(f"shopspc limits {command}: {exc}\n")
        raise typer.Exit(EXIT_BAD) from None


# --------------------------------------------------------------------------- config and store


@dataclass
class _Setup:
    cfg: GatewayConfig
    data_dir: Path

    @property
    def db(self) -> Path:
        return self.data_dir / "limits.db"

    def characteristic(self, key: str) -> Characteristic:
        """A characteristic by path, or by id when that id is unique."""
        chars = self.cfg.characteristics
        for ch in chars:
            if ch.path == key:
                return ch
        hits = [ch for ch in chars if ch.id == key]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise _UsageError(
                f"characteristic id {key!r} is ambiguous: "
                + ", ".join(h.path for h in hits)
                + " (give the path)"
            )
        known = ", ".join(ch.path for ch in chars) or "none configured"
        raise _UsageError(f"no characteristic {key!r} in the configuration (known: {known})")


def _setup(config: Path, data_dir: Path | None) -> _Setup:
    from collector.config import ConfigError, load_config

    try:
        cfg, _ = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_BAD) from None
    return _Setup(cfg, data_dir if data_dir is not None else Path(cfg.gateway.data_dir))


@contextmanager
def _store(setup: _Setup, *, write: bool) -> Iterator[LimitsStore | None]:
    """The limits store; None for reading when there is none yet (nothing assigned)."""
    from collector.limitstore import LimitsStore

    if not write and not setup.db.exists():
        yield None
        return
    if write:
        setup.data_dir.mkdir(parents=True, exist_ok=True)
    store = LimitsStore(setup.db, readonly=not write)
    try:
        yield store
    finally:
        store.close()


# --------------------------------------------------------------------------- output helpers


def _record_json(rec: LimitsRecord | None, m: int) -> dict[str, Any] | None:
    from collector.limitstore import control_limits

    if rec is None:
        return None
    lcl, ucl = control_limits(rec, m)
    return {**rec.to_json(), "lcl": lcl, "ucl": ucl, "subgroup_size": m}


def _assignment_json(a: Assignment | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "seq": a.seq,
        "limits_id": a.limits_id,
        "effective_from": _iso(a.effective_from_us),
        "effective_from_us": a.effective_from_us,
        "assigned_at": _iso(a.assigned_at_us),
        "user": a.user,
        "reason": a.reason,
        "source": a.source,
        "cancelled": a.cancelled,
    }


def _pct(old: float | None, new: float | None) -> str:
    if old is None or new is None or not (math.isfinite(old) and math.isfinite(new)):
        return ""
    if old == 0:
        return "" if new == 0 else "new"
    return f"{(new - old) / abs(old) * 100:+.2f} %"


def _compare(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[list[str]]:
    rows = []
    for key, label in (
        ("center", "centre"),
        ("lcl", "LCL"),
        ("ucl", "UCL"),
        ("sigma", "σ"),
        ("cpk", "Cpk (σ within)"),
        ("method", "method"),
        ("n_points", "points"),
        ("excluded", "excluded"),
        ("limits_id", "limits id"),
    ):
        o = None if old is None else old.get(key)
        n = None if new is None else new.get(key)
        if key == "cpk" and o is None and n is None:
            continue  # no specification limits configured
        if isinstance(o, (int, float)) or isinstance(n, (int, float)):
            change = _pct(o, n) if key not in ("n_points", "excluded") else ""
            rows.append([label, _num(o), _num(n), change])
        else:
            rows.append([label, "—" if o is None else str(o), "—" if n is None else str(n), ""])
    return rows


def _cpk(rec: LimitsRecord, ch: Characteristic) -> float | None:
    """Cpk = min(USL − μ, μ − LSL) / 3σ from the record's centre and σ (within), specs from config."""
    if rec.chart in ("p", "np", "c", "u") or not (math.isfinite(rec.sigma) and rec.sigma > 0):
        return None
    sides = []
    if ch.usl is not None:
        sides.append((ch.usl - rec.center) / (3 * rec.sigma))
    if ch.lsl is not None:
        sides.append((rec.center - ch.lsl) / (3 * rec.sigma))
    return min(sides) if sides else None


def _values(rec: LimitsRecord | None, ch: Characteristic) -> dict[str, Any] | None:
    from collector.limitstore import limits_values

    v = limits_values(rec, _m(ch))
    if v is not None and rec is not None:
        v["limits_id"] = rec.id
        v["cpk"] = _cpk(rec, ch)
    return v


# --------------------------------------------------------------------------- read commands

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", help="the gateway configuration (YAML): data_dir and characteristics"),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="state directory holding limits.db (default: gateway.data_dir)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
CharArg = Annotated[str, typer.Argument(help="characteristic: its path or its (unique) id")]
UserOpt = Annotated[str, typer.Option("--user", help="who makes the change (audited)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (audited)")]
EffectiveOpt = Annotated[
    str | None,
    typer.Option("--effective", help="in force from (default now): RFC 3339, or +2h from now"),
]
BackdateOpt = Annotated[
    bool,
    typer.Option(
        "--allow-backdate",
        help="allow --effective more than 5 min in the past (alarms already raised keep "
        "naming the limits they were judged against)",
    ),
]


@limits_app.command("list")
def list_(config: ConfigOpt, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Every characteristic: the limits in force now, since when and by whom."""
    with _errors("list"):
        setup = _setup(config, data_dir)
        now = now_us()
        out = []
        with _store(setup, write=False) as store:
            current = store.current_assignments(now) if store else {}
            pending = store.pending(now) if store else []
            for ch in setup.cfg.characteristics:
                a = current.get(ch.path)
                rec = store.record(a.limits_id, ch.path) if store and a else None
                out.append(
                    {
                        "path": ch.path,
                        "chart": ch.chart,
                        "limits": _record_json(rec, _m(ch)),
                        "assignment": _assignment_json(a),
                        "pending": sum(1 for p in pending if p.path == ch.path),
                    }
                )
            configured = {ch.path for ch in setup.cfg.characteristics}
            # limits of characteristics removed from the configuration stay visible
            for path, a in current.items():
                if path not in configured and store is not None:
                    rec = store.record(a.limits_id, path)
                    out.append(
                        {
                            "path": path,
                            "chart": "not configured",
                            "limits": _record_json(rec, 1),
                            "assignment": _assignment_json(a),
                            "pending": sum(1 for p in pending if p.path == path),
                        }
                    )
    if as_json:
        print_json(out)
        return
    rows = []
    for item in out:
        lim, a = item["limits"], item["assignment"]
        if lim is None:
            rows.append([item["path"], item["chart"], "none (Phase I or config)"] + [""] * 8)
            continue
        rows.append(
            [
                item["path"],
                item["chart"],
                lim["id"],
                _num(lim["center"]),
                _num(lim["lcl"]),
                _num(lim["ucl"]),
                _num(lim["sigma"]),
                lim["method"],
                when(a["effective_from_us"]),
                f"{a['user']} ({a['source']})",
                str(item["pending"] or ""),
            ]
        )
    _table(
        f"Limits in force at {when(now)}",
        [
            "characteristic",
            "chart",
            "limits id",
            "centre",
            "LCL",
            "UCL",
            "σ",
            "method",
            "since",
            "by",
            "pending",
        ],
        rows,
    )


@limits_app.command("show")
def show(
    char: CharArg,
    config: ConfigOpt,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="the record in force at this time instead of now (-3d, RFC 3339)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The record in force for one characteristic (now or --at), in full, and pending assignments."""
    with _errors("show"):
        setup = _setup(config, data_dir)
        ch = setup.characteristic(char)
        m = _m(ch)
        now = now_us()
        at_us = now if at is None else parse_time(at, now, "--at")
        with _store(setup, write=False) as store:
            a = store.effective_assignment(ch.path, at_us) if store else None
            rec = store.record(a.limits_id, ch.path) if store and a else None
            pending = []
            for p in store.pending(now, ch.path) if store else []:
                prec = store.record(p.limits_id, ch.path) if store else None
                pending.append({**(_assignment_json(p) or {}), "limits": _record_json(prec, m)})
    out = {
        "path": ch.path,
        "at": _iso(at_us),
        "limits": _record_json(rec, m),
        "assignment": _assignment_json(a),
        "pending": pending,
    }
    if as_json:
        print_json(out)
        return
    con = console()
    if rec is None or a is None:
        con.print(f"{ch.path}: no limits in force at {when(at_us)} in {setup.db}")
    else:
        lim = out["limits"]
        rows = [
            ["limits id", rec.id],
            ["chart", rec.chart],
            ["centre", _num(lim["center"])],
            ["LCL / UCL", f"{_num(lim['lcl'])} / {_num(lim['ucl'])}"],
            ["σ", _num(lim["sigma"])],
            ["method", rec.method],
            ["points", str(rec.n_points)],
            ["window", " … ".join(rec.window)],
            ["params", ", ".join(f"{k}={v:g}" for k, v in rec.params)],
            ["record made by", f"{rec.created_by} at {rec.created_at}: {rec.reason}"],
            ["in force since", when(a.effective_from_us)],
            ["assigned by", f"{a.user} ({a.source}) at {when(a.assigned_at_us)}: {a.reason}"],
        ]
        rows += [[f"excluded #{e.index}", e.reason] for e in rec.exclusions]
        _table(ch.path, ["", ""], rows)
    for p in pending:
        lim = p["limits"] or {}
        con.print(
            f"pending #{p['seq']}: {p['limits_id']} from {p['effective_from']} "
            f"(centre {_num(lim.get('center'))}, σ {_num(lim.get('sigma'))}) "
            f"by {p['user']}: {p['reason']}"
        )


@limits_app.command("history")
def history(
    char: CharArg, config: ConfigOpt, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Every assignment of one characteristic on its timeline (effective dating)."""
    with _errors("history"):
        setup = _setup(config, data_dir)
        ch = setup.characteristic(char)
        m = _m(ch)
        now = now_us()
        out = []
        with _store(setup, write=False) as store:
            hist = store.history(ch.path) if store else []
            in_force = store.effective_assignment(ch.path, now) if store else None
            for a in hist:
                rec = store.record(a.limits_id, ch.path) if store else None
                if a.cancelled:
                    status = "cancelled"
                elif in_force is not None and a.seq == in_force.seq:
                    status = "in force"
                elif a.effective_from_us > now:
                    status = "pending"
                else:
                    status = "superseded"
                out.append(
                    {
                        **(_assignment_json(a) or {}),
                        "status": status,
                        "limits": _record_json(rec, m),
                    }
                )
    if as_json:
        print_json(out)
        return
    rows = [
        [
            str(x["seq"]),
            when(x["effective_from_us"]),
            x["status"],
            x["limits_id"],
            _num((x["limits"] or {}).get("center")),
            _num((x["limits"] or {}).get("sigma")),
            (x["limits"] or {}).get("method", ""),
            f"{x['user']} ({x['source']})",
            x["reason"],
        ]
        for x in out
    ]
    _table(
        f"History of {ch.path}",
        ["#", "effective from", "status", "limits id", "centre", "σ", "method", "by", "reason"],
        rows,
    )


@limits_app.command("audit")
def audit(
    config: ConfigOpt,
    char: Annotated[str | None, typer.Argument(help="only this characteristic")] = None,
    data_dir: DataDirOpt = None,
    since: Annotated[
        str | None, typer.Option("--since", help="only changes made since (time or -7d)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit trail: who changed what, when and why, old → new."""
    with _errors("audit"):
        setup = _setup(config, data_dir)
        path = setup.characteristic(char).path if char else None
        since_us = parse_time(since, now_us(), "--since") if since else None
        with _store(setup, write=False) as store:
            entries = store.audit(path) if store else []
    entries = [e for e in entries if since_us is None or e.at_us >= since_us]
    if as_json:
        print_json([{**e.to_json(), "at": _iso(e.at_us)} for e in entries])
        return

    def brief(v: dict[str, Any] | None, lid: str | None) -> str:
        if v is None:
            return "—"
        return f"{lid} (centre {_num(v.get('center'))}, σ {_num(v.get('sigma'))})"

    rows = [
        [
            str(e.seq),
            when(e.at_us),
            f"{e.user}@{e.host}",
            e.action,
            e.path,
            f"{brief(e.old, e.old_limits_id)} → {brief(e.new, e.new_limits_id)}",
            when(e.effective_from_us),
            e.why,
        ]
        for e in entries
    ]
    _table(
        "Limits audit trail",
        ["#", "at", "who", "action", "characteristic", "old → new", "effective", "why"],
        rows,
    )


@limits_app.command("import")
def import_(
    config: ConfigOpt,
    user: UserOpt,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="the legacy limits.json (default: data_dir/limits.json)"),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Adopt the gateway's legacy limits.json into the audited store (characteristics not yet managed)."""
    with _errors("import"):
        _who(user, "import")
        setup = _setup(config, data_dir)
        src = file if file is not None else setup.data_dir / "limits.json"
        if not src.is_file():
            raise _UsageError(f"--file {src}: no such file")
        with _store(setup, write=True) as store:
            assert store is not None
            changes = store.import_json(src, user=user)
    for c in changes:
        sys.stdout.write(f"imported {c.record.id} for {c.assignment.path} (audit #{c.audit.seq})\n")
    sys.stdout.write(f"{len(changes)} record(s) imported from {src} into {setup.db}\n")


@limits_app.command("verify")
def verify(config: ConfigOpt, data_dir: DataDirOpt = None) -> None:
    """Check every stored record against its id and the audit trail's hash chain (exit 1 if not intact)."""
    with _errors("verify"):
        setup = _setup(config, data_dir)
        with _store(setup, write=False) as store:
            problems = store.verify() if store else []
            n = store.last_seq() if store else 0
    for p in problems:
        sys.stdout.write(f"{setup.db}: {p}\n")
    if problems:
        raise typer.Exit(1)
    sys.stdout.write(f"{setup.db}: intact ({n} audit rows)\n")


# --------------------------------------------------------------------------- changes


def _report_change(
    setup: _Setup,
    ch: Characteristic,
    old: LimitsRecord | None,
    new: LimitsRecord,
    *,
    assigned: Any,
    effective_us: int,
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    ov, nv = _values(old, ch), _values(new, ch)
    if as_json:
        print_json(
            {
                "path": ch.path,
                "old": ov,
                "new": nv,
                "record": new.to_json(),
                "effective_from": _iso(effective_us),
                "assigned": assigned is not None,
                "audit_seq": None if assigned is None else assigned.audit.seq,
                **(extra or {}),
            }
        )
        return
    _table(f"{ch.path}: old → new", ["", "old", "new", "change"], _compare(ov, nv))
    con = console()
    for e in new.exclusions:
        con.print(f"excluded point {e.index}: {e.reason}")
    if assigned is None:
        con.print("dry run: nothing assigned")
    else:
        con.print(
            f"assigned {new.id} to {ch.path}, in force from {_iso(effective_us)} "
            f"(audit #{assigned.audit.seq}, {setup.db})"
        )


def _who(user: str, reason: str) -> None:
    """Refuse an empty --user or --reason before anything is read or written."""
    for name, value in (("--user", user), ("--reason", reason)):
        if not value.strip():
            raise _UsageError(f"{name}: must not be empty (every limits change names who and why)")


@limits_app.command("set")
def set_(
    char: CharArg,
    config: ConfigOpt,
    user: UserOpt,
    reason: ReasonOpt,
    center: Annotated[float, typer.Option("--center", help="the known process centre")],
    sigma: Annotated[
        float | None,
        typer.Option("--sigma", help="the known process σ (variables charts; not for p/np/c/u)"),
    ] = None,
    effective: EffectiveOpt = None,
    allow_backdate: BackdateOpt = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Assign known standards (method ``known``): centre and σ given, not estimated."""
    from collector.pipeline import chart_params
    from spc.limits import LimitsRecord

    with _errors("set"):
        _who(user, reason)
        setup = _setup(config, data_dir)
        ch = setup.characteristic(char)
        attribute = ch.chart in ("p", "np", "c", "u")
        if not math.isfinite(center):
            raise _UsageError(f"--center {center} is not a finite number")
        if attribute and sigma is not None:
            raise _UsageError(
                f"--sigma: a {ch.chart} chart's σ follows from its centre; leave it out"
            )
        if not attribute and (sigma is None or not math.isfinite(sigma) or sigma <= 0):
            raise _UsageError(f"--sigma: a {ch.chart} chart needs a known σ > 0")
        now = now_us()
        eff = effective_us(effective, now, allow_backdate)
        rec = LimitsRecord(
            chart=ch.chart,
            center=float(center),
            sigma=math.nan if sigma is None else float(sigma),
            method="known",
            n_points=0,
            params=chart_params(ch),
            created_by=user,
            created_at=_iso(now),
            reason=reason,
        )
        with _store(setup, write=True) as store:
            assert store is not None
            old = store.effective(ch.path, eff)
            if old is not None and old.id == rec.id:
                raise _UsageError(f"{ch.path}: {rec.id} is already in force at {_iso(eff)}")
            change = store.assign(
                ch.path,
                rec,
                user=user,
                reason=reason,
                source="cli",
                effective_from_us=eff,
                now_us=now,
                action="set",
                allow_backdate=allow_backdate,
                subgroup_size=_m(ch),
            )
    _report_change(
        setup, ch, old, change.record, assigned=change, effective_us=eff, as_json=as_json
    )


@limits_app.command("revert")
def revert(
    char: CharArg,
    config: ConfigOpt,
    to: Annotated[str, typer.Option("--to", help="the earlier limits id to put back in force")],
    user: UserOpt,
    reason: ReasonOpt,
    effective: EffectiveOpt = None,
    allow_backdate: BackdateOpt = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Put an earlier limits record of this characteristic back in force (audited as revert)."""
    with _errors("revert"):
        _who(user, reason)
        setup = _setup(config, data_dir)
        ch = setup.characteristic(char)
        now = now_us()
        eff = effective_us(effective, now, allow_backdate)
        if not setup.db.exists():
            raise _UsageError(f"--to {to}: never assigned to {ch.path} (no {setup.db} yet)")
        with _store(setup, write=True) as store:
            assert store is not None
            old = store.effective(ch.path, eff)
            if old is not None and old.id == to:
                raise _UsageError(f"{ch.path}: {to} is already in force at {_iso(eff)}")
            if store.record(to, ch.path) is None:
                known = sorted({a.limits_id for a in store.history(ch.path)})
                raise _UsageError(
                    f"--to {to}: never assigned to {ch.path} (its records: "
                    f"{', '.join(known) or 'none'})"
                )
            change = store.revert(
                ch.path,
                to,
                user=user,
                reason=reason,
                effective_from_us=eff,
                now_us=now,
                allow_backdate=allow_backdate,
                subgroup_size=_m(ch),
            )
    _report_change(
        setup, ch, old, change.record, assigned=change, effective_us=eff, as_json=as_json
    )


@limits_app.command("cancel")
def cancel(
    seq: Annotated[int, typer.Argument(help="the pending assignment's # (see history / show)")],
    config: ConfigOpt,
    user: UserOpt,
    reason: ReasonOpt,
    data_dir: DataDirOpt = None,
) -> None:
    """Cancel a pending (future-dated) assignment before it comes into force (audited)."""
    with _errors("cancel"):
        _who(user, reason)
        setup = _setup(config, data_dir)
        with _store(setup, write=True) as store:
            assert store is not None
            entry = store.cancel(seq, user=user, reason=reason)
    sys.stdout.write(
        f"cancelled assignment #{seq} of {entry.path} (audit #{entry.seq}); "
        f"in force at {_iso(entry.effective_from_us)}: {entry.new_limits_id or 'none'}\n"
    )


# --------------------------------------------------------------------------- recompute


def _read_exclusions(
    items: list[str], file: Path | None, default_reason: str
) -> list[ExclusionSpec]:
    specs = [parse_exclusion(x, default_reason, f"--exclude {x!r}") for x in items]
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise _UsageError(f"--exclude-file {file}: cannot read: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                specs.append(parse_exclusion(line, default_reason, f"{file}:{n}"))
    return specs


def _csv_points(
    file: Path, column: str | None, ch: Characteristic, since_us: int | None, until_us: int | None
) -> tuple[list[Point], str]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"--csv {file}: cannot read: {exc}") from None
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise _UsageError(f"--csv {file}: empty file")
    reader.fieldnames = header
    col = column or "value"
    if col not in header:
        raise _UsageError(
            f"{file}:1: no column {col!r} (columns: {', '.join(header)}); name it with --column"
        )
    filters = {
        "measurement": "measurement",
        "characteristic": ch.id,
        "line": ch.line,
        "station": ch.station,
        "quality": "good",
    }
    points = []
    for n, row in enumerate(reader, 2):
        if any(k in row and (row[k] or "").strip() != v for k, v in filters.items()):
            continue
        cell = (row.get(col) or "").strip()
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            raise _UsageError(f"{file}:{n}:{col}: not a number: {cell!r}") from None
        if not math.isfinite(value):
            raise _UsageError(f"{file}:{n}:{col}: not a finite number: {cell!r}")
        t: int | None = None
        if (row.get("time_us") or "").strip():
            try:
                t = int(row["time_us"])
            except ValueError:
                raise _UsageError(
                    f"{file}:{n}:time_us: not an integer: {row['time_us']!r}"
                ) from None
        elif (row.get("time") or "").strip():
            t = abs_time(row["time"], f"{file}:{n}:time")
        if t is not None and (
            (since_us is not None and t < since_us) or (until_us is not None and t >= until_us)
        ):
            continue
        if t is None and (since_us is not None or until_us is not None):
            raise _UsageError(f"{file}:{n}: no time or time_us column to apply --from/--to to")
        serial = (row.get("serial") or "").strip() or None
        points.append(Point(t, value, serial, {k: row.get(k) for k in header}))
    if any(p.time_us is not None for p in points):
        points.sort(key=lambda p: p.time_us or 0)
    return points, str(file)


@limits_app.command("recompute")
def recompute(
    char: CharArg,
    config: ConfigOpt,
    user: UserOpt,
    reason: ReasonOpt,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="window start (inclusive); required unless --csv"),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="window end (exclusive); required unless --csv")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="index:N | serial:S | time:T | time:T1..T2, optionally =REASON (repeatable)",
        ),
    ] = None,
    exclude_file: Annotated[
        Path | None, typer.Option("--exclude-file", help="exclusions, one per line")
    ] = None,
    effective: EffectiveOpt = None,
    allow_backdate: BackdateOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show old vs new, assign nothing")
    ] = False,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="read a CSV (e.g. `shopspc series export --format csv`) instead of series.db",
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="CSV value column (default: value)")
    ] = None,
    min_points: Annotated[
        int | None,
        typer.Option(
            "--min-points",
            min=2,
            help="usable plotted points needed (default: the characteristic's "
            "limits.phase1_subgroups)",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate limits from a window of good measurements, with exclusions; assign them (audited).

    Reads the characteristic's good-quality values in [--from, --to) from the
    local series store (data_dir/series.db) or a CSV, forms subgroups as the
    gateway does, leaves out the excluded points (each with its reason, kept
    in the record), estimates with the chart's method (I-MR: mean and MR̄/d2;
    X̄-R: R̄; X̄-S: S̄; c: c̄), shows old vs new and, unless --dry-run, assigns
    the new record.

    Exclusions: index:N (plotted point, 0-based), serial:S, time:T or
    time:T1..T2 ([T1, T2)), each optionally =REASON (default: --reason). An
    unprefixed integer is an index, a timestamp a time, anything else a serial.
    On X̄ charts a serial or time excludes its whole subgroup. An exclusion that
    matches nothing is an error.

    Times: RFC 3339 (UTC if no zone), 'now', -2h (ago), +30m (ahead).
    """
    with _errors("recompute"):
        _who(user, reason)
        setup = _setup(config, data_dir)
        ch = setup.characteristic(char)
        if ch.chart in _UNCHARTED:
            raise _UsageError(
                f"{ch.path}: {ch.chart} charts need sample sizes the gateway does not collect "
                "yet; use `shopspc limits set`"
            )
        now = now_us()
        since_us = parse_time(from_, now, "--from") if from_ else None
        until_us = parse_time(to, now, "--to") if to else None
        if csv_file is None and (since_us is None or until_us is None):
            raise _UsageError("--from and --to are required (the window in the local series store)")
        if since_us is not None and until_us is not None and until_us <= since_us:
            raise _UsageError(f"--to {_iso(until_us)} is not after --from {_iso(since_us)}")
        specs = _read_exclusions(exclude or [], exclude_file, reason)
        eff = effective_us(effective, now, allow_backdate)
        if csv_file is not None:
            points, origin = _csv_points(csv_file, column, ch, since_us, until_us)
        else:
            assert since_us is not None and until_us is not None
            points, origin = store_points(
                setup.data_dir, ch, since_us, until_us, hint=" (give --csv FILE, or --data-dir)"
            )
        made = build(
            ch,
            points,
            origin,
            specs,
            since_us=since_us,
            until_us=until_us,
            min_points=min_points,
            user=user,
            reason=reason,
            now_us=now,
        )
        rec, m, left_over = made.record, made.subgroup_size, made.left_over
        extra = made.counts(origin)
        with _store(setup, write=not dry_run) as store:
            old = store.effective(ch.path, eff) if store else None
            change = None
            if old is not None and old.id == rec.id:
                if as_json:
                    print_json({"path": ch.path, "unchanged": rec.id, **extra})
                else:
                    sys.stdout.write(f"{ch.path}: unchanged, {rec.id} is already in force\n")
                return
            if not dry_run:
                assert store is not None
                change = store.assign(
                    ch.path,
                    rec,
                    user=user,
                    reason=reason,
                    source="cli",
                    effective_from_us=eff,
                    now_us=now,
                    action="recompute",
                    allow_backdate=allow_backdate,
                    subgroup_size=m,
                )
    if left_over and not as_json:
        sys.stderr.write(
            f"note: the last {left_over} measurement(s) form no complete subgroup and were not used\n"
        )
    _report_change(
        setup, ch, old, rec, assigned=change, effective_us=eff, as_json=as_json, extra=extra
    )
