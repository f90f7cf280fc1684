"""The gateway's HTTP API: ``create_app(gateway, settings)`` → FastAPI.

Versioned REST under ``/api/v1`` (OpenAPI at ``/api/v1/docs`` and
``/api/v1/openapi.json``), ``/healthz`` and ``/readyz`` (no sign-in: probes),
``/metrics`` (Prometheus; operator role unless ``metrics_public``).

Roles: **operator** reads everything and acknowledges alarms; **engineer**
also shelves/unshelves alarms, takes characteristics out of service and
recomputes limits; **admin** also manages users and tokens. Every
state-changing request under ``/api`` is audited (who, method, path, status,
a secret-free body summary). Errors are ``{"error": {"what", "message"}}``
with the status code: 401 no or bad credentials, 403 too low a role or a
missing CSRF header, 404 unknown characteristic/alarm, 409 a conflict (no
limits yet, ambiguous id), 422 bad input or a refused command, 429 too many
failed sign-ins, 503 a store that cannot be written.

The app registers listeners in ``gateway.point_listeners`` and
``gateway.alarm_listeners``; :func:`close_app` (also run at lifespan
shutdown) removes them and closes the user store. Handlers run in the event
loop, as the gateway's own calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from collector.alarmconfig import picklists
from collector.alarms import AlarmError
from collector.api.auth import (
    SAFE_METHODS,
    ApiError,
    AsEngineer,
    AsOperator,
    AuthError,
    AuthStore,
    LoginLimiter,
    Principal,
    auth_router,
    current_principal,
    summarise_body,
)
from collector.api.metrics import CONTENT_TYPE, ApiMetrics
from collector.api.recent import RecentPoints, RecentSaver
from collector.api.stream import CharStates, StreamHub, stream_router
from collector.config import ApiConfig
from collector.limitstore import LimitsStoreError, limits_values
from collector.outbox import OutboxError
from spc.errors import SpcInputError

__all__ = ["ApiSettings", "ApiState", "close_app", "create_app"]

log = logging.getLogger(__name__)

_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
# the OpenAPI pages load Swagger UI / ReDoc from their CDN with an inline bootstrap script
_CSP_DOCS = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; frame-ancestors 'none'"
)
_OPEN_STATUSES = ("active", "acknowledged", "cleared_unacked")
_SINCE = "source time from: RFC 3339, 'now', relative (-2h, -30m) or µs since the epoch"
_BODY_KEEP = 4096  # request bytes kept for the audit summary
# the manual-entry form's 5M1E fields (measurement field names), shown even when unbound
_ENTRY_FIELDS = ("operator", "machine", "lot", "method", "gauge_id")
_ENTRY_HIDDEN = ("status", "gauge_calibration_due")


class ApiSettings(ApiConfig):
    """Settings of the HTTP API (injected into :func:`create_app`): the configuration's
    ``api:`` section (:class:`collector.config.ApiConfig`) and the files in ``data_dir``."""

    users_db: Path = Field(
        description="SQLite file of users, API tokens, sessions and the request audit "
        "(create the first admin with `shopspc users add NAME --role admin --db FILE`)"
    )
    recent_file: Path | None = Field(
        None,
        description="file that keeps the recent points across restarts (the gateway's data "
        "directory/recent_points.npz under `shopspc run`; null: charts start empty)",
    )

    @classmethod
    def of(cls, cfg: Any, data_dir: Path) -> ApiSettings:
        """The settings a running gateway serves with: the configuration's ``api:`` section and
        its files in ``data_dir`` (``users.db``, ``recent_points.npz``)."""
        return cls(
            **cfg.api.model_dump(),
            users_db=Path(data_dir) / "users.db",
            recent_file=Path(data_dir) / "recent_points.npz",
        )


@dataclass
class ApiState:
    """What the handlers share (``app.state.api``)."""

    gateway: Any
    settings: ApiSettings
    auth: AuthStore
    limiter: LoginLimiter
    recent: RecentPoints
    stream: StreamHub
    metrics: ApiMetrics
    recent_saver: RecentSaver | None = None
    closed: bool = False


# --------------------------------------------------------------------------- helpers


def _floats(a: np.ndarray) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in np.asarray(a, dtype=np.float64).tolist()]


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _api(request: Request) -> ApiState:
    return request.app.state.api


def _time(text: str | None, what: str) -> int | None:
    from collector.cliutil import UsageError, parse_time

    if text is None or text == "":
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return parse_time(text, _now_us(), what)
    except UsageError as exc:
        raise ApiError(422, what, str(exc)) from None


def _now_us() -> int:
    import time

    return time.time_ns() // 1000


def _char_index(gw: Any, key: str) -> int:
    """A characteristic by path, or by id when that id is unique (404 / 409)."""
    key = key.strip("/")
    i = gw._path_index.get(key)
    if i is not None:
        return i
    hits = [k for k, ch in enumerate(gw.chars) if ch.id == key]
    if len(hits) == 1:
        return hits[0]
    if hits:
        paths = ", ".join(gw.chars[k].path for k in hits)
        raise ApiError(409, "characteristic", f"id {key!r} is ambiguous ({paths}); give the path")
    raise ApiError(404, "characteristic", f"no characteristic {key!r}")


def _width(ch: Any) -> int:
    from collector.pipeline import subgroup_width as width

    return width(ch)


def _record_json(rec: Any, m: int) -> dict[str, Any] | None:
    if rec is None:
        return None
    return _jsonable({**rec.to_json(), **(limits_values(rec, m) or {}), "subgroup_size": m})


def _summary(gw: Any, i: int) -> dict[str, Any]:
    ch = gw.chars[i]
    view = gw.views[i]
    rec = gw.records.get(i)
    return _jsonable(
        {
            "path": ch.path,
            "id": ch.id,
            "site": ch.site,
            "area": ch.area,
            "line": ch.line,
            "station": ch.station,
            "chart": ch.chart,
            "unit": ch.unit,
            "phase": view.phase,
            "last_value": view.last_value,
            "n_samples": view.n_samples,
            "n_points": view.n_points,
            "center": view.center,
            "lcl": view.lcl,
            "ucl": view.ucl,
            "in_control": view.in_control,
            "last_rule": view.last_rule,
            "phase1_have": view.phase1_have,
            "phase1_need": view.phase1_need,
            "limits_id": rec.id if rec is not None else None,
        }
    )


def _alarm_json(a: Mapping[str, Any]) -> dict[str, Any]:
    return _jsonable(dict(a))


# --------------------------------------------------------------------------- request bodies


class AckRequest(BaseModel):
    """Acknowledge an alarm (the user is the signed-in principal)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    comment: str = Field("", max_length=2000, description="free text")
    cause: str | None = Field(
        None, max_length=200, description="assignable cause: 'category:code' or a configured code"
    )
    action: str | None = Field(
        None, max_length=200, description="configured corrective action code"
    )


class ShelveRequest(BaseModel):
    """Shelve the alarm's (characteristic, chart, rule) until a time or for some minutes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    comment: str = Field(min_length=1, max_length=2000, description="why it is shelved")
    until: str | None = Field(None, description="RFC 3339 expiry (with a zone)")
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60, description="or minutes from now")


class UnshelveRequest(BaseModel):
    """Unshelve an alarm's point."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    comment: str = Field("", max_length=2000, description="free text")


class ServiceRequest(BaseModel):
    """Take a characteristic out of service (no alarms raised) or back into service."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    in_service: bool = Field(description="false: out of service")
    comment: str = Field("", max_length=2000, description="why")


class MeasurementRequest(BaseModel):
    """A value typed in at the line (a gauge without an interface)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(description="the measured value, in the characteristic's unit")
    serial: str | None = Field(None, max_length=200, description="part serial, when known")
    confirm: bool = Field(
        False, description="true to store a value outside the specification limits"
    )
    context: dict[str, str] = Field(
        default_factory=dict,
        description="5M1E context of this part (machine, lot, method, gauge_id …); "
        "operator defaults to the signed-in user",
    )


def _check_manual(ch: Any, body: MeasurementRequest) -> None:
    """Plausibility, resolution and (unless confirmed) specification checks of a typed value."""
    v, m = body.value, ch.manual
    if not math.isfinite(v):
        raise ApiError(422, "value", "must be a finite number")
    if m.plausible_min is not None and v < m.plausible_min:
        raise ApiError(422, "value", f"{v:g} is below the plausible minimum {m.plausible_min:g}")
    if m.plausible_max is not None and v > m.plausible_max:
        raise ApiError(422, "value", f"{v:g} is above the plausible maximum {m.plausible_max:g}")
    if m.decimals is not None and round(v, m.decimals) != v:
        raise ApiError(422, "value", f"{v!r} has more than {m.decimals} decimals")
    outside = (ch.lsl is not None and v < ch.lsl) or (ch.usl is not None and v > ch.usl)
    if outside and not body.confirm:
        raise ApiError(
            409,
            "confirm",
            f"{v:g} is outside the specification [{ch.lsl}, {ch.usl}]: "
            "check the part and send confirm: true to store it",
        )


class RecomputeRequest(BaseModel):
    """Recompute limits from a window of good measurements in the local series store."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str = Field(alias="from", description="window start: RFC 3339, 'now' or -2h")
    to: str = Field(description="window end (exclusive)")
    reason: str = Field(min_length=1, max_length=2000, description="why (audited)")
    exclude: tuple[str, ...] = Field(
        (), description="index:N | serial:S | time:T | time:T1..T2, each optionally =REASON"
    )
    effective: str | None = Field(None, description="in force from (default: now)")
    min_points: int | None = Field(None, ge=2, description="usable plotted points needed")
    dry_run: bool = Field(False, description="estimate and compare, assign nothing")


# --------------------------------------------------------------------------- middleware


class AuditAndHeaders:
    """Pure ASGI middleware: security headers on every response, an audit row per unsafe request.

    Reads the principal the auth dependency left in the request state after
    the response, so refusals (401/403/422) are audited too.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        https = scope.get("scheme") == "https"
        docs = path.startswith(("/api/v1/docs", "/api/v1/redoc"))
        audited = scope.get("method", "GET") not in SAFE_METHODS and path.startswith("/api/")
        state = scope.setdefault("state", {})
        status = [500]
        body = bytearray()

        async def receive_wrapper() -> Any:
            msg = await receive()
            if msg.get("type") == "http.request" and len(body) < _BODY_KEEP:
                body.extend(msg.get("body", b"")[: _BODY_KEEP - len(body)])
            return msg

        async def send_wrapper(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                headers = list(msg.get("headers", []))
                headers += [
                    (b"content-security-policy", (_CSP_DOCS if docs else _CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if https:
                    headers.append(
                        (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
                    )
                if path.startswith("/api/") and not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                msg = {**msg, "headers": headers}
            await send(msg)

        try:
            await self.app(scope, receive_wrapper if audited else receive, send_wrapper)
        finally:
            if audited:
                self._audit(scope, state, status[0], bytes(body))

    def _audit(
        self, scope: dict[str, Any], state: dict[str, Any], status: int, body: bytes
    ) -> None:
        api: ApiState | None = getattr(getattr(scope.get("app"), "state", None), "api", None)
        if api is None or api.closed:
            return
        p: Principal | None = state.get("principal")
        if p is not None:
            who, via = p.name, p.via
        elif state.get("login_name"):
            who, via = str(state["login_name"]), "login"
        else:
            who, via = "anonymous", "none"
        client = scope.get("client") or ("?", 0)
        try:
            api.auth.audit(
                who,
                via,
                scope.get("method", "?"),
                scope.get("path", "?"),
                status,
                str(client[0]),
                summarise_body(body),
            )
        except Exception as exc:  # the answer is sent already; the failure is logged loudly
            log.error("request audit not written to %s: %s", api.auth.path, exc)


def _error(
    status: int, what: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"what": what, "message": message}},
        status_code=status,
        headers=dict(headers or {}),
    )


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.what, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("request",), "msg": "invalid"}
        what = ".".join(str(x) for x in first.get("loc", ()))
        msg = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors
        )
        return _error(422, what, msg)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(AlarmError)
    async def alarm_error(request: Request, exc: AlarmError) -> JSONResponse:
        return _error(422, exc.what, exc.message)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        status = (
            404
            if "no user" in exc.message
            else 409
            if "exists" in exc.message or "last enabled admin" in exc.message
            else 422
        )
        return _error(status, exc.what, exc.message)

    @app.exception_handler(OutboxError)
    async def store_error(request: Request, exc: OutboxError) -> JSONResponse:
        return _error(503, "store", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal", f"{type(exc).__name__} (see the gateway log)")

    @app.exception_handler(LimitsStoreError)
    async def limits_error(request: Request, exc: LimitsStoreError) -> JSONResponse:
        return _error(503, "limits_store", str(exc))


# --------------------------------------------------------------------------- routes


def _characteristics_router() -> APIRouter:
    r = APIRouter(tags=["characteristics"])

    @r.get("/characteristics")
    async def list_characteristics(request: Request, p: AsOperator) -> list[dict[str, Any]]:
        """Every configured characteristic with its current state and open-alarm count.

        ``state`` is the alarm state topic's: ``in_control``, ``out_of_control``,
        ``no_data`` or ``suspended`` (out of service or a suppressing process
        state, ``state_reason`` says which).
        """
        api = _api(request)
        gw = api.gateway
        open_by_path: dict[str, int] = {}
        for a in gw.alarms.active():
            open_by_path[a["path"]] = open_by_path.get(a["path"], 0) + 1
        out = []
        for i in range(len(gw.chars)):
            row = _summary(gw, i)
            row["open_alarms"] = open_by_path.get(row["path"], 0)
            known = api.stream.states.state(i) if api.stream.states is not None else None
            if known is None:  # nothing published yet: what the alarm manager would say
                n_open = row["open_alarms"]
                known = ("out_of_control" if n_open else "in_control", None)
                if not n_open and not row["n_points"]:
                    known = ("no_data", None)
            row["state"], row["state_reason"] = known
            out.append(row)
        return out

    # the specific routes first: {c:path} would swallow their suffixes
    @r.get("/characteristics/{c:path}/points")
    async def points(
        c: str,
        request: Request,
        p: AsOperator,
        since: Annotated[str | None, Query(description=_SINCE)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000, description="newest points at most")] = 500,
    ) -> dict[str, Any]:
        """Recent plotted points (oldest first, columnar): statistic, limits, zone, violations."""
        api = _api(request)
        i = _char_index(api.gateway, c)
        cols = api.recent.query(i, since_us=_time(since, "since"), limit=limit)
        return {
            "path": api.gateway.chars[i].path,
            "n": len(cols),
            "time_us": cols.time_us.tolist(),
            "statistic": _floats(cols.statistic),
            "center": _floats(cols.center),
            "lcl": _floats(cols.lcl),
            "ucl": _floats(cols.ucl),
            "sigma": _floats(cols.sigma),
            "z": _floats(cols.z),
            "zone": cols.zone,
            "violations": cols.violations,
            "disp_statistic": _floats(cols.disp_statistic),
            "disp_center": _floats(cols.disp_center),
            "disp_lcl": _floats(cols.disp_lcl),
            "disp_ucl": _floats(cols.disp_ucl),
            "limits_id": cols.limits_id,
            "serial": cols.serial,
            "context": cols.context,
        }

    @r.get("/characteristics/{c:path}/capability")
    async def capability(
        c: str,
        request: Request,
        p: AsOperator,
        since: Annotated[str | None, Query(description=_SINCE)] = None,
        limit: Annotated[int, Query(ge=2, le=100_000)] = 1000,
        confidence: Annotated[float, Query(gt=0, lt=1)] = 0.95,
    ) -> dict[str, Any]:
        """Capability against LSL/USL and the limits in force (centre, σ within).

        Individual charts (I-MR, EWMA/CUSUM of single parts): the last ``limit``
        recent points since ``since``. Subgroup charts (X̄-R, X̄-S): every good
        measurement since ``since`` (default: the last 24 h) in the local series
        store. ``stable`` is false when a recent point in the window broke a rule.
        """
        from spc.capability import capability as cap

        api = _api(request)
        gw = api.gateway
        i = _char_index(gw, c)
        ch = gw.chars[i]
        if ch.lsl is None and ch.usl is None:
            raise ApiError(409, "specs", f"{ch.path} has no lsl/usl configured")
        if ch.chart not in ("imr", "ewma", "cusum", "xbar-r", "xbar-s"):
            raise ApiError(409, "chart", f"{ch.path}: no capability for a {ch.chart} chart")
        rec = gw.records.get(i)
        if rec is None:
            raise ApiError(409, "limits", f"{ch.path} is still in Phase I (no limits yet)")
        since_us = _time(since, "since")
        if _width(ch) == 1:
            cols = api.recent.query(i, since_us=since_us, limit=limit)
            x = cols.statistic[np.isfinite(cols.statistic)]
            source = "recent points"
            span = (int(cols.time_us[0]), int(cols.time_us[-1])) if len(cols) else (None, None)
        else:
            since_us = _now_us() - 86_400_000_000 if since_us is None else since_us
            x, source, span = await asyncio.to_thread(_stored_values, gw, ch, since_us)
            cols = api.recent.query(i, since_us=since_us)
        if x.shape[0] < 2:
            raise ApiError(409, "points", f"{ch.path}: {x.shape[0]} values in {source}, 2 needed")
        try:
            report = cap(
                x,
                center=rec.center,
                sigma_within=rec.sigma,
                lsl=ch.lsl,
                usl=ch.usl,
                confidence=confidence,
                in_control=not bool(((cols.mask | cols.disp_mask) != 0).any()),
            )
        except SpcInputError as exc:
            raise ApiError(422, "capability", str(exc)) from None
        return {
            "path": ch.path,
            "limits_id": rec.id,
            "source": source,
            "from_us": span[0],
            "to_us": span[1],
            "capability": report.to_json(),
        }

    @r.get("/characteristics/{c:path}/limits")
    async def limits(c: str, request: Request, p: AsOperator) -> dict[str, Any]:
        """Limits in force, the assignment history and the audit trail of a characteristic."""
        gw = _api(request).gateway
        i = _char_index(gw, c)
        ch = gw.chars[i]
        store = gw.limits_store
        return _jsonable(
            {
                "path": ch.path,
                "in_force": _record_json(gw.records.get(i), _width(ch)),
                "history": [asdict(a) for a in store.history(ch.path)],
                "pending": [asdict(a) for a in store.pending(_now_us(), ch.path)],
                "audit": [e.to_json() for e in store.audit(ch.path)],
            }
        )

    @r.post("/characteristics/{c:path}/limits/recompute")
    async def recompute(
        c: str, body: RecomputeRequest, request: Request, p: AsEngineer
    ) -> dict[str, Any]:
        """Estimate limits from a window of the local series store, with exclusions; assign (audited)."""
        gw = _api(request).gateway
        i = _char_index(gw, c)
        return _recompute(gw, i, body, p)

    @r.post("/characteristics/{c:path}/service")
    async def service(
        c: str, body: ServiceRequest, request: Request, p: AsEngineer
    ) -> dict[str, Any]:
        """Take a characteristic out of service or back (engineer)."""
        gw = _api(request).gateway
        i = _char_index(gw, c)
        path = gw.chars[i].path
        payload = {"in_service": body.in_service, "user": p.name, "comment": body.comment}
        gw.command(path, payload, "service", source="api")
        return {"path": path, "in_service": body.in_service}

    @r.get("/characteristics/{c:path}/entry")
    async def entry_form(c: str, request: Request, p: AsOperator) -> dict[str, Any]:
        """What the manual-entry form needs: unit, specs, entry checks and the context now.

        ``fields`` are the 5M1E context fields to pre-fill (measurement field
        names, as ``POST …/measurements`` takes them in ``context``; operator is
        the signed-in user), ``context`` the same snapshot in the alarm
        contract's shape.
        """
        from collector.pipeline import contract_context

        gw = _api(request).gateway
        i = _char_index(gw, c)
        ch = gw.chars[i]
        snap = gw.index.snapshot(i)
        fields: dict[str, str | None] = dict.fromkeys(_ENTRY_FIELDS)
        for key, v in snap.items():
            if key not in _ENTRY_HIDDEN:
                fields[key] = str(v)
        fields["operator"] = p.name
        m = ch.manual
        return _jsonable(
            {
                "path": ch.path,
                "id": ch.id,
                "unit": ch.unit,
                "chart": ch.chart,
                "lsl": ch.lsl,
                "usl": ch.usl,
                "nominal": ch.nominal,
                "manual": {
                    "plausible_min": m.plausible_min,
                    "plausible_max": m.plausible_max,
                    "decimals": m.decimals,
                },
                "fields": fields,
                "context": contract_context({**snap, "operator": p.name}, _now_us()),
            }
        )

    @r.post("/characteristics/{c:path}/measurements", status_code=201)
    async def enter_measurement(
        c: str, body: MeasurementRequest, request: Request, p: AsOperator
    ) -> dict[str, Any]:
        """Enter a value by hand: checked, then stored and judged like an acquired sample.

        422 when it is not a finite number, outside the configured plausible range
        or with more decimals than the gauge resolves; 409 when it is outside the
        specification limits and ``confirm`` is not set.
        """
        gw = _api(request).gateway
        i = _char_index(gw, c)
        ch = gw.chars[i]
        _check_manual(ch, body)
        await gw.enter(
            ch.path, body.value, user=p.name, serial=body.serial, context=body.context or None
        )
        return {"path": ch.path, "value": body.value, "serial": body.serial, "stored": True}

    @r.get("/characteristics/{c:path}")
    async def characteristic(c: str, request: Request, p: AsOperator) -> dict[str, Any]:
        """One characteristic: configuration, state, limits in force and open alarms."""
        gw = _api(request).gateway
        i = _char_index(gw, c)
        ch = gw.chars[i]
        return _jsonable(
            {
                **_summary(gw, i),
                "config": ch.model_dump(mode="json", exclude_none=True),
                "limits": _record_json(gw.records.get(i), _width(ch)),
                "alarms": [_alarm_json(a) for a in gw.alarms.active(ch.path)],
            }
        )

    return r


def _stored_values(
    gw: Any, ch: Any, since_us: int
) -> tuple[np.ndarray, str, tuple[int | None, int | None]]:
    """Good measurements of ``ch`` from ``since_us`` on in the local series store."""
    from collector.cliutil import UsageError
    from collector.recompute import store_points

    try:
        points, origin = store_points(gw.data_dir, ch, since_us, _now_us() + 1)
    except UsageError as exc:
        raise ApiError(409, "series", str(exc)) from None
    times = [pt.time_us for pt in points if pt.time_us is not None]
    span = (min(times), max(times)) if times else (None, None)
    return np.array([pt.value for pt in points], dtype=np.float64), origin, span


def _recompute(gw: Any, i: int, body: RecomputeRequest, p: Principal) -> dict[str, Any]:
    """The API's ``shopspc limits recompute`` (:mod:`collector.recompute`: the same
    subgrouping, exclusions, estimators and refusals)."""
    from collector import recompute as rc
    from collector.cliutil import UsageError, parse_time

    ch = gw.chars[i]
    if ch.chart in ("p", "np", "u"):
        raise ApiError(409, "chart", f"{ch.path}: {ch.chart} limits are set, not recomputed")
    now = _now_us()
    try:
        since = parse_time(body.from_, now, "from")
        until = parse_time(body.to, now, "to")
        if until <= since:
            raise ApiError(422, "to", "the window end is not after its start")
        specs = [rc.parse_exclusion(x, body.reason, f"exclude {x!r}") for x in body.exclude]
        eff = rc.effective_us(
            body.effective,
            now,
            False,
            name="effective",
            override="only `shopspc limits recompute --allow-backdate` does that",
        )
        points, origin = rc.store_points(gw.data_dir, ch, since, until)
        made = rc.build(
            ch,
            points,
            origin,
            specs,
            since_us=since,
            until_us=until,
            min_points=body.min_points,
            user=p.name,
            reason=body.reason,
            now_us=now,
            min_points_name="min_points",
        )
    except rc.WindowError as exc:
        raise ApiError(422, "window", str(exc)) from None
    except UsageError as exc:
        raise ApiError(422, "recompute", str(exc)) from None
    rec, m = made.record, made.subgroup_size
    old = gw.limits_store.effective(ch.path, eff)
    out: dict[str, Any] = {
        "path": ch.path,
        "dry_run": body.dry_run,
        "old": _record_json(old, m),
        "new": _record_json(rec, m),
        **made.counts(origin),
        "assigned": None,
    }
    if old is not None and old.id == rec.id:
        out["unchanged"] = True
        return out
    if not body.dry_run:
        try:
            change = gw.limits_store.assign(
                ch.path,
                rec,
                user=p.name,
                reason=body.reason,
                source="api",
                effective_from_us=eff,
                now_us=now,
                action="recompute",
                subgroup_size=m,
            )
        except ValueError as exc:
            raise ApiError(422, "recompute", str(exc)) from None
        out["assigned"] = _jsonable(change.audit.to_json())
    return out


def _alarms_router() -> APIRouter:
    r = APIRouter(tags=["alarms"])

    @r.get("/alarms")
    async def alarms(
        request: Request,
        p: AsOperator,
        status: Literal[
            "open", "active", "acknowledged", "cleared_unacked", "closed", "all"
        ] = "open",
        line: str | None = None,
        characteristic: str | None = None,
        since: Annotated[str | None, Query(description=_SINCE)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """Alarms, newest first: ``status`` open (default), one status, closed or all; filters by
        line (id or site/area/line), characteristic (id or path) and raise time ``since``."""
        gw = _api(request).gateway
        since_us = _time(since, "since")
        if status == "open" or status in _OPEN_STATUSES:
            rows = [a for a in gw.alarms.active() if status == "open" or a["status"] == status]
        else:
            # closed ones live in the store only: filtered and limited there
            where, params = ["1=1"], []
            if status == "closed":
                where.append("status = 'closed'")
            if line is not None:
                where.append("(line = ? OR site || '/' || area || '/' || line = ?)")
                params += [line, line]
            if characteristic is not None:
                where.append("(characteristic = ? OR path = ?)")
                params += [characteristic, characteristic]
            if since_us is not None:
                where.append("raised_us >= ?")
                params.append(since_us)
            rows = await asyncio.to_thread(  # a history query: off the loop
                gw.alarms.find, " AND ".join(where), params, limit
            )
        out = []
        for a in rows:
            if line is not None and line not in (a["line"], f"{a['site']}/{a['area']}/{a['line']}"):
                continue
            if characteristic is not None and characteristic not in (
                a["characteristic"],
                a["path"],
            ):
                continue
            if since_us is not None and a["raised_us"] < since_us:
                continue
            a = dict(a)
            a.pop("payload", None)
            out.append(_alarm_json(a))
        out.sort(key=lambda a: (-a["raised_us"], a["alarm_id"]))
        return out[:limit]

    @r.get("/alarms/pareto")
    async def pareto(
        request: Request,
        p: AsOperator,
        since: Annotated[str | None, Query(description=_SINCE)] = None,
        until: Annotated[str | None, Query(description="end (exclusive), as since")] = None,
        line: str | None = None,
        characteristic: str | None = None,
        by: Literal["cause", "category"] = "cause",
    ) -> list[dict[str, Any]]:
        """Acknowledged alarms counted by assignable cause (or 5M1E category), most frequent first."""
        gw = _api(request).gateway
        rows = await asyncio.to_thread(  # a history query: off the loop
            gw.alarms.pareto, _time(since, "since"), _time(until, "until"), line, characteristic, by
        )
        return [{"category": c, "code": k, "text": t, "count": n} for c, k, t, n in rows]

    @r.get("/alarms/causes")
    async def causes(request: Request, p: AsOperator) -> dict[str, Any]:
        """The configured 5M1E assignable causes and corrective actions (acknowledge picklists)."""
        return picklists(_api(request).gateway.cfg.alarms)

    @r.get("/alarms/{alarm_id}")
    async def alarm(alarm_id: str, request: Request, p: AsOperator) -> dict[str, Any]:
        """One alarm with its raise payload (open, or closed within retention)."""
        a = _api(request).gateway.alarms.get(alarm_id)
        if a is None:
            raise ApiError(404, "alarm", f"no alarm {alarm_id!r}")
        return _alarm_json(a)

    def _found(request: Request, alarm_id: str) -> tuple[Any, str]:
        gw = _api(request).gateway
        a = gw.alarms.get(alarm_id)
        if a is None:
            raise ApiError(404, "alarm", f"no alarm {alarm_id!r}")
        return gw, a["path"]

    def _answer(gw: Any, alarm_id: str, event: Any) -> dict[str, Any]:
        a = dict(gw.alarms.get(alarm_id) or {})
        a.pop("payload", None)
        return {"event": _jsonable(event), "alarm": _alarm_json(a)}

    @r.post("/alarms/{alarm_id}/ack")
    async def ack(
        alarm_id: str, body: AckRequest, request: Request, p: AsOperator
    ) -> dict[str, Any]:
        """Acknowledge (operator); ``event`` is null when it was acknowledged already."""
        gw, path = _found(request, alarm_id)
        payload = {"alarm_id": alarm_id, "user": p.name, "comment": body.comment}
        if body.cause:
            payload["cause"] = body.cause
        if body.action:
            payload["action"] = body.action
        return _answer(gw, alarm_id, gw.command(path, payload, "ack", source="api"))

    @r.post("/alarms/{alarm_id}/shelve")
    async def shelve(
        alarm_id: str, body: ShelveRequest, request: Request, p: AsEngineer
    ) -> dict[str, Any]:
        """Shelve the alarm's point until ``until`` or for ``minutes`` (engineer)."""
        gw, path = _found(request, alarm_id)
        payload: dict[str, Any] = {"alarm_id": alarm_id, "user": p.name, "comment": body.comment}
        if body.until is not None:
            payload["until"] = body.until
        if body.minutes is not None:
            payload["minutes"] = body.minutes
        return _answer(gw, alarm_id, gw.command(path, payload, "shelve", source="api"))

    @r.post("/alarms/{alarm_id}/unshelve")
    async def unshelve(
        alarm_id: str, body: UnshelveRequest, request: Request, p: AsEngineer
    ) -> dict[str, Any]:
        """Unshelve the alarm's point (engineer)."""
        gw, path = _found(request, alarm_id)
        payload = {"alarm_id": alarm_id, "user": p.name, "comment": body.comment}
        return _answer(gw, alarm_id, gw.command(path, payload, "unshelve", source="api"))

    @r.get("/journal")
    async def journal(
        request: Request,
        p: AsOperator,
        since: Annotated[str | None, Query(description=_SINCE)] = None,
        until: Annotated[str | None, Query(description="end (exclusive), as since")] = None,
        characteristic: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """The alarm journal (every event, update, suppression), oldest first."""
        gw = _api(request).gateway
        path = None
        if characteristic is not None:
            path = gw.chars[_char_index(gw, characteristic)].path
        rows = await asyncio.to_thread(  # a history query: off the loop
            gw.alarms.journal, _time(since, "since"), _time(until, "until"), path, limit
        )
        return [_jsonable(r) for r in rows]

    return r


_READY_STATES = ("connected", "disconnected")


def _health_router() -> APIRouter:
    r = APIRouter(tags=["health"])

    @r.get("/health/connectors")
    async def connectors(request: Request, p: AsOperator) -> dict[str, Any]:
        """Every source and sink (state, counters, last error) and the outbox counts."""
        gw = _api(request).gateway
        conns = []
        for role, items in (("source", gw.sources), ("sink", gw.sinks)):
            for c in items:
                conns.append(
                    {
                        "name": c.name,
                        "role": role,
                        "kind": getattr(c, "kind", None) or gw._kinds.get(c.name),
                        **asdict(c.stats),
                    }
                )
        counts = await asyncio.to_thread(gw.outbox.counts)  # the loop never waits for its lock
        return {
            "gateway": gw.gateway_id,
            "connectors": conns,
            "outbox": {"path": counts.path, "file_bytes": counts.file_bytes}
            | {name: asdict(sc) for name, sc in counts.streams.items()},
            "pipeline": gw.stats.as_dict(),
        }

    return r


def _store_problems(gw: Any) -> list[str]:
    """Why the outbox or the alarm store is not usable (empty when both are)."""
    reasons = []
    try:
        gw.outbox.counts()
        if not os.access(gw.outbox.path, os.W_OK):
            reasons.append(f"outbox {gw.outbox.path}: not writable")
    except Exception as exc:
        reasons.append(f"outbox: {exc}")
    try:
        gw.alarms.counts()
    except Exception as exc:
        reasons.append(f"alarm store: {exc}")
    return reasons


def _probe_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive and answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """200 when every source reported a state (connected or backing off), the outbox is
        writable and the alarm store is open; else 503 with the reasons."""
        gw = _api(request).gateway
        reasons = []
        for s in gw.sources:
            if s.stats.state not in _READY_STATES:
                reasons.append(f"source {s.name}: {s.stats.state}")
        # in a worker thread: a store's lock may be held by a commit, the loop must not wait
        reasons += await asyncio.to_thread(_store_problems, gw)
        body = {"ready": not reasons, "reasons": reasons}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text format (operator credentials unless ``metrics_public``)."""
        api = _api(request)
        if not api.settings.metrics_public:
            from collector.api.auth import require

            p = await current_principal(request)
            await require("operator")(p)
        # rendered in a worker thread: it reads the stores' counts, whose locks commits hold
        return Response(await asyncio.to_thread(api.metrics.render), media_type=CONTENT_TYPE)


# --------------------------------------------------------------------------- the app


def create_app(gateway: Any, settings: ApiSettings, *, close_at_shutdown: bool = True) -> FastAPI:
    """The HTTP API of ``gateway`` (see the module docstring); call :func:`close_app` when done.

    ``close_at_shutdown``: the server's lifespan shutdown runs :func:`close_app`. A caller
    that runs the gateway beside the server passes False and closes the app once the gateway
    has stopped: the points it judges while draining still reach the rings and the saved file.
    """
    auth = AuthStore(settings.users_db)
    stream = StreamHub(
        gateway.paths,
        queue_size=settings.stream_queue,
        keepalive_s=settings.stream_keepalive_s,
        states=CharStates(gateway.alarms, gateway.paths),
    )
    state = ApiState(
        gateway=gateway,
        settings=settings,
        auth=auth,
        limiter=LoginLimiter(settings.login_max_failures, settings.login_window_s),
        recent=RecentPoints(len(gateway.chars), settings.recent_points),
        stream=stream,
        metrics=ApiMetrics(gateway, stream),
    )
    if settings.recent_file is not None:
        state.recent_saver = RecentSaver(state.recent, settings.recent_file, gateway.chars)
        state.recent_saver.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        saver = state.recent_saver
        task = asyncio.create_task(saver.run(settings.recent_save_s)) if saver else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if close_at_shutdown:
                close_app(app)

    app = FastAPI(
        title="shopspc gateway API",
        version="1",
        docs_url="/api/v1/docs",
        redoc_url="/api/v1/redoc",
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.api = state
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token"],
        )
    app.add_middleware(AuditAndHeaders)
    _install_errors(app)
    for router in (
        auth_router(),
        _characteristics_router(),
        _alarms_router(),
        _health_router(),
        stream_router(),
    ):
        app.include_router(router, prefix="/api/v1")
    _probe_routes(app)
    gateway.point_listeners += [state.recent.on_points, stream.on_points]
    gateway.alarm_listeners += [stream.on_alarm, state.metrics.on_alarm]
    from collector.api.webapp import mount_web

    mount_web(app, settings)
    return app


def close_app(app: FastAPI) -> None:
    """Remove the app's gateway listeners, save the recent points, end live streams, close the
    user store (idempotent)."""
    state: ApiState = app.state.api
    if state.closed:
        return
    state.closed = True
    if state.recent_saver is not None:
        try:
            state.recent_saver.save()
        except (OSError, ValueError) as exc:
            log.error("could not save the chart history to %s: %s", state.recent_saver.path, exc)
    gw = state.gateway
    for listener in (state.recent.on_points, state.stream.on_points):
        with contextlib.suppress(ValueError):
            gw.point_listeners.remove(listener)
    for listener in (state.stream.on_alarm, state.metrics.on_alarm):
        with contextlib.suppress(ValueError):
            gw.alarm_listeners.remove(listener)
    state.stream.close()
    state.auth.close()
