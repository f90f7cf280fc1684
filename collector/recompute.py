"""Limits from a window of measurements: what ``shopspc limits recompute`` and the HTTP API's
``POST /api/v1/characteristics/{path}/limits/recompute`` share.

The window's good measurements (:func:`store_points`, from ``data_dir/series.db``)
are cut into subgroups as the gateway cuts them (:func:`subgroups`), the
exclusions (:func:`parse_exclusion`) are matched to plotted points
(:func:`match`), and :func:`build` estimates with the chart's method and makes
the :class:`~spc.limits.LimitsRecord`, each exclusion with its reason. Every
refusal is a :class:`~collector.cliutil.UsageError` whose message says what and
where (:class:`WindowError` when the window's data cannot make limits); the
command line prints it, the API answers it with 422 (or 409).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.cliutil import UsageError, parse_time
from collector.timefmt import parse_rfc3339

if TYPE_CHECKING:
    from collector.config import Characteristic
    from spc.limits import LimitsRecord

__all__ = [
    "ExclusionSpec",
    "Point",
    "Recomputed",
    "WindowError",
    "abs_time",
    "build",
    "effective_us",
    "estimate_subgroups",
    "iso",
    "match",
    "parse_exclusion",
    "store_points",
    "subgroup_size",
    "subgroups",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WindowError(UsageError):
    """The window's measurements cannot make limits: too few usable points, or no variation."""


def iso(us: int | None) -> str:
    """A record's time (RFC 3339, µs, ``Z``); ``—`` for none."""
    if us is None:
        return "—"
    return (_EPOCH + timedelta(microseconds=int(us))).isoformat().replace("+00:00", "Z")


def subgroup_size(ch: Characteristic) -> int:
    """Values per plotted point, as the gateway forms them."""
    from collector.pipeline import subgroup_width

    return subgroup_width(ch)


@dataclass
class Point:
    """One good measurement of the window (``group``: its subgroup, once cut)."""

    time_us: int | None
    value: float
    serial: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    group: int = -1


@dataclass
class ExclusionSpec:
    """One exclusion as written: ``index:N``, ``serial:S``, ``time:T`` or ``time:T1..T2``."""

    kind: str  # index | auto-index | serial | time
    text: str
    reason: str
    origin: str  # where it was written, for messages
    index: int = 0
    lo: int = 0
    hi: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.text}"


def parse_exclusion(raw: str, default_reason: str, origin: str) -> ExclusionSpec:
    """``SPEC[=REASON]``; an unprefixed integer is an index, a timestamp a time, else a serial."""
    spec, sep, reason = raw.partition("=")
    spec = spec.strip()
    reason = reason.strip() if sep else default_reason
    if not spec:
        raise UsageError(f"{origin}: empty exclusion")
    if not reason:
        raise UsageError(f"{origin}: exclusion {spec!r} has an empty reason")
    kind, colon, rest = spec.partition(":")
    if colon and kind in ("index", "serial", "time"):
        text = rest.strip()
    elif re.fullmatch(r"\d+", spec):
        kind, text = "auto-index", spec
    elif re.match(r"\d{4}-\d\d-\d\d", spec):
        kind, text = "time", spec
    else:
        kind, text = "serial", spec
    ex = ExclusionSpec(kind, text, reason, origin)
    if kind in ("index", "auto-index"):
        if not re.fullmatch(r"\d+", text):
            raise UsageError(f"{origin}: index {text!r} is not a non-negative integer")
        ex.index = int(text)
    elif kind == "time":
        lo, dots, hi = text.partition("..")
        ex.lo = abs_time(lo, origin)
        ex.hi = abs_time(hi, origin) if dots else ex.lo + 1
        if ex.hi <= ex.lo:
            raise UsageError(f"{origin}: time range {text!r} is empty")
    return ex


def abs_time(text: str, origin: str) -> int:
    """µs since the epoch of an RFC 3339 time (UTC without a zone)."""
    try:
        return parse_rfc3339(text.strip())
    except ValueError:
        raise UsageError(f"{origin}: {text!r} is not an RFC 3339 time") from None


def effective_us(
    effective: str | None,
    now: int,
    allow_backdate: bool,
    *,
    name: str = "--effective",
    override: str = "--allow-backdate to do it anyway",
) -> int:
    """When a new record takes force (default now); a time in the past needs ``allow_backdate``.

    ``name`` is how the caller's user spells the field, ``override`` how the
    refusal says the past can be chosen all the same (the command line's options;
    the API, which never backdates, points to the command line)."""
    from collector.limitstore import BACKDATE_TOLERANCE_US

    eff = now if effective is None else parse_time(effective, now, name)
    if eff < now - BACKDATE_TOLERANCE_US and not allow_backdate:
        raise UsageError(
            f"{name} {iso(eff)}: effective_from is in the past; alarms already raised were "
            f"judged against the limits then in force ({override})"
        )
    return eff


def store_points(
    data_dir: Path, ch: Characteristic, since_us: int, until_us: int, *, hint: str = ""
) -> tuple[list[Point], str]:
    """The good measurements of ``ch`` in ``[since_us, until_us)`` of the local series store
    (``hint``: what the caller's user can do when there is none)."""
    from connectors.localstore.store import SeriesStore

    db = data_dir / "series.db"
    if not db.is_file():
        raise UsageError(f"no local series store at {db}{hint}")
    with SeriesStore(db, readonly=True) as store:
        rows = store.query(
            "measurement",
            tags={"characteristic": ch.id, "line": ch.line, "station": ch.station},
            since_us=since_us,
            until_us=until_us,
            limit=None,
        )
    points = []
    for r in rows:
        v = r.fields.get("value")
        if r.fields.get("quality") != "good" or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            continue
        serial = r.fields.get("serial")
        points.append(Point(r.time_us, float(v), None if serial is None else str(serial), r.fields))
    return points, str(db)


def subgroups(ch: Characteristic, points: list[Point]) -> tuple[list[list[Point]], int]:
    """The gateway's subgrouping: ``m`` consecutive parts; a close_on context change or an
    elapsed window_s (on source time) closes a subgroup early. Returns the complete-or-closed
    subgroups and how many values a trailing open subgroup left out."""
    from collector.pipeline import CONTEXT_FIELD

    m = subgroup_size(ch)
    sg = ch.subgroup
    groups: list[list[Point]] = []
    open_: list[Point] = []
    ctx: tuple[Any, ...] | None = None
    for p in points:
        changed = False
        if sg.close_on:
            key = tuple(p.fields.get(CONTEXT_FIELD[n]) for n in sg.close_on)
            changed = ctx is not None and key != ctx
            ctx = key
        if not changed and sg.window_s is not None and open_ and p.time_us is not None:
            first = open_[0].time_us
            changed = first is not None and p.time_us - first > sg.window_s * 1e6
        if changed and open_:
            groups.append(open_)
            open_ = []
        open_.append(p)
        if len(open_) == m:
            groups.append(open_)
            open_ = []
    for g, members in enumerate(groups):
        for p in members:
            p.group = g
    return groups, len(open_)


def match(specs: list[ExclusionSpec], points: list[Point], n_groups: int) -> dict[int, list[str]]:
    """Plotted point index → reasons. Every exclusion must match something."""
    hits: dict[int, list[str]] = {}
    serials = {p.serial for p in points if p.serial is not None}
    for ex in specs:
        if ex.kind == "auto-index" and ex.text in serials:
            raise UsageError(
                f"{ex.origin}: {ex.text!r} is both a point index and a serial in the window; "
                f"write index:{ex.text} or serial:{ex.text}"
            )
        if ex.kind in ("index", "auto-index"):
            if ex.index >= n_groups:
                raise UsageError(
                    f"{ex.origin}: index {ex.index} is outside the window's {n_groups} points "
                    f"(0…{n_groups - 1})"
                )
            found = {ex.index}
            label = f"index {ex.index}"
        elif ex.kind == "serial":
            found = {p.group for p in points if p.serial == ex.text and p.group >= 0}
            label = ex.label
        else:
            found = {
                p.group
                for p in points
                if p.time_us is not None and ex.lo <= p.time_us < ex.hi and p.group >= 0
            }
            label = ex.label
        if not found:
            raise UsageError(f"{ex.origin}: {label} matches no measurement in the window")
        for g in found:
            hits.setdefault(g, []).append(f"{label}: {ex.reason}")
    return hits


def estimate_subgroups(
    ch: Characteristic, groups: Sequence[Sequence[Any]], hits: Mapping[int, Any]
) -> tuple[Any, float]:
    """Phase I estimate from ``ch``'s subgroups of points (``.value``), those in ``hits``
    (subgroup index → reasons) excluded: (estimate, spread), the spread being c̄ on a c
    chart and σ̂ otherwise."""
    import numpy as np

    from spc.charts.attributes import estimate_c
    from spc.charts.variables import estimate_imr, estimate_xbar

    m = subgroup_size(ch)
    values = np.full((len(groups), m), np.nan)
    for g, members in enumerate(groups):
        values[g, : len(members)] = [p.value for p in members]
    mask = np.zeros(len(groups), dtype=bool)
    mask[list(hits)] = True
    if ch.chart == "c":
        est = estimate_c(values[:, 0], exclude=mask)
    elif m == 1:
        est = estimate_imr(values[:, 0], exclude=mask)
    else:
        method = "sbar" if ch.chart == "xbar-s" else "rbar"
        est = estimate_xbar(values, method=method, exclude=mask)
    return est, float(est.center if ch.chart == "c" else est.sigma)


@dataclass(frozen=True)
class Recomputed:
    """A new record and what it was made of."""

    record: LimitsRecord
    subgroup_size: int
    measurements: int
    subgroups: int
    left_over: int  # values of a trailing subgroup that never completed (not used)
    usable: int  # subgroups not excluded

    def counts(self, source: str) -> dict[str, Any]:
        """The figures both front ends report beside old and new."""
        return {
            "measurements": self.measurements,
            "subgroups": self.subgroups,
            "left_over": self.left_over,
            "usable": self.usable,
            "source": source,
        }


def build(
    ch: Characteristic,
    points: list[Point],
    origin: str,
    specs: list[ExclusionSpec],
    *,
    since_us: int | None,
    until_us: int | None,
    min_points: int | None,
    user: str,
    reason: str,
    now_us: int,
    min_points_name: str = "--min-points",
) -> Recomputed:
    """Subgroup ``points`` (read from ``origin``), exclude ``specs``, estimate, make the record.

    The window named in the record is ``[since_us, until_us)``, or the span of
    the points' times when neither is given (a CSV without ``--from``/``--to``).
    Refuses fewer usable subgroups than ``min_points`` (default: the
    characteristic's ``limits.phase1_subgroups``) and a window without variation.
    """
    from collector.pipeline import chart_params
    from spc.limits import Exclusion, LimitsRecord

    m = subgroup_size(ch)
    groups, left_over = subgroups(ch, points)
    need = min_points if min_points is not None else ch.limits.phase1_subgroups
    hits = match(specs, points, len(groups))
    usable = len(groups) - len(hits)
    windowed = since_us is not None or until_us is not None
    where = f"{origin}, {iso(since_us)} … {iso(until_us)}" if windowed else origin
    if usable < need:
        raise WindowError(
            f"{ch.path}: too few points in {where}: {len(points)} good measurements make "
            f"{len(groups)} subgroups of {m}, {len(hits)} excluded, {usable} usable; "
            f"{need} needed ({min_points_name})"
        )
    est, spread = estimate_subgroups(ch, groups, hits)
    if not (math.isfinite(spread) and spread > 0):
        what = "c̄" if ch.chart == "c" else "σ̂"
        raise WindowError(
            f"{ch.path}: no variation in {where} ({what} = {spread:g}); "
            "limits would flag every point"
        )
    if windowed:
        window = (iso(since_us), iso(until_us))
    else:
        times = [p.time_us for p in points if p.time_us is not None]
        window = (iso(min(times)), iso(max(times))) if times else (origin, "")
    rec = LimitsRecord(
        chart=ch.chart,
        center=float(est.center),
        sigma=float(est.sigma),
        method=est.method,
        n_points=len(groups),
        window=window,
        exclusions=tuple(Exclusion(g, "; ".join(r)) for g, r in sorted(hits.items())),
        params=chart_params(ch),
        created_by=user,
        created_at=iso(now_us),
        reason=reason,
    )
    return Recomputed(rec, m, len(points), len(groups), left_over, usable)
