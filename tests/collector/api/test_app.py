"""Every REST endpoint of the API against a real Gateway (in-process ASGI, no sockets).

Happy path, 401 without credentials, 403 with a too-low role, 404/422 on bad
input, CSRF refusal, token auth and audit rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from collector.api.app import ApiSettings, close_app, create_app
from collector.pipeline import Gateway
from connectors.base import ConnectorStats
from connectors.localstore.store import SeriesStore

from .conftest import RecordingSink, char, config, sample

pytestmark = pytest.mark.filterwarnings("error")

A = "s1/a1/l1/st1/a"


@dataclass
class Api:
    """The app under test, a client and one bearer token per role."""

    app: Any
    client: httpx.AsyncClient
    tokens: dict[str, str]
    gw: Any

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    @property
    def auth(self) -> Any:
        return self.app.state.api.auth


def _settings(tmp_path, **over: Any) -> ApiSettings:
    return ApiSettings(users_db=tmp_path / "users.db", **over)


@pytest.fixture
async def api(gateway, tmp_path) -> AsyncIterator[Api]:
    app = create_app(gateway, _settings(tmp_path))
    store = app.state.api.auth
    tokens = {
        role: store.create_token(f"t-{role}", role, "test")[1]
        for role in ("operator", "engineer", "admin")
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        yield Api(app, client, tokens, gateway)
    close_app(app)


def _alarm(api: Api) -> str:
    """Raise an x and an mr alarm on characteristic a; returns the x alarm's id."""
    api.gw.process([("dev", [sample("a", 10.0, 0, "P0"), sample("a", 30.0, 1, "P1")])])
    (x,) = [a for a in api.gw.alarms.active() if a["chart"] == "x"]
    return x["alarm_id"]


def _err(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"what", "message"}, body
    return r.status_code, body["error"]["what"]


async def test_probes_and_security_headers(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "max-age" in r.headers["strict-transport-security"]  # https
    r = await api.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "reasons": []}
    api.gw.sources[0].stats.state = "failed"
    r = await api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["source dev: failed"]
    api.gw.sources[0].stats.state = "disconnected"  # backing off, reported: ready
    assert (await api.client.get("/readyz")).status_code == 200


async def test_plain_http_has_no_hsts(gateway, tmp_path) -> None:
    app = create_app(gateway, _settings(tmp_path))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.get("/healthz")
        assert "strict-transport-security" not in r.headers
    finally:
        close_app(app)
    assert gateway.point_listeners == [] and gateway.alarm_listeners == []


async def test_openapi_and_unknown_route(api: Api) -> None:
    r = await api.client.get("/api/v1/openapi.json")
    paths = r.json()["paths"]
    assert "/api/v1/alarms/{alarm_id}/ack" in paths and "/api/v1/stream" in paths
    r = await api.client.get("/api/v1/nothing", headers=api.as_("operator"))
    assert _err(r) == (404, "http")


async def test_characteristics_list_and_one(api: Api) -> None:
    r = await api.client.get("/api/v1/characteristics")
    assert _err(r) == (401, "credentials")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.client.get(
        "/api/v1/characteristics", headers={"Authorization": "Bearer spc_wrong"}
    )
    assert _err(r) == (401, "token")
    r = await api.client.get("/api/v1/characteristics", headers={"Authorization": "Basic x"})
    assert _err(r) == (401, "authorization")
    assert r.headers["cache-control"] == "no-store"
    _alarm(api)
    r = await api.client.get("/api/v1/characteristics", headers=api.as_("operator"))
    rows = r.json()
    assert [c["path"] for c in rows] == [A, "s1/a1/l1/st1/b", "s1/a1/l2/st1/c"]
    assert rows[0]["open_alarms"] == 2 and rows[0]["in_control"] is False
    assert rows[0]["last_value"] == 30.0 and rows[1]["last_value"] is None  # NaN → null
    for key in (A, "a", "/s1/a1/l1/st1/a"):
        r = await api.client.get(f"/api/v1/characteristics/{key}", headers=api.as_("operator"))
        one = r.json()
        assert r.status_code == 200 and one["path"] == A
    assert one["config"]["lsl"] == 4.0 and one["limits"]["center"] == 10.0
    assert one["limits"]["ucl"] == pytest.approx(13.0)
    assert {a["chart"] for a in one["alarms"]} == {"x", "mr"}
    r = await api.client.get("/api/v1/characteristics/zz", headers=api.as_("operator"))
    assert _err(r) == (404, "characteristic")


async def test_points_with_zones_since_and_limit(api: Api) -> None:
    values = [10.0, 10.5, 11.5, 12.5, 20.0, 9.0]
    api.gw.process([("dev", [sample("a", v, k) for k, v in enumerate(values)])])
    url = f"/api/v1/characteristics/{A}/points"
    assert (await api.client.get(url)).status_code == 401
    r = await api.client.get(url, headers=api.as_("operator"))
    body = r.json()
    assert body["n"] == 6 and body["statistic"] == values
    assert body["zone"] == ["C", "C", "B", "A", "out", "C"]
    assert body["violations"][4].startswith("N1")
    assert body["sigma"][0] == 1.0 and body["disp_statistic"][0] is None  # first MR missing
    r = await api.client.get(url, params={"limit": 2}, headers=api.as_("operator"))
    assert r.json()["statistic"] == [20.0, 9.0]
    t3 = body["time_us"][3]
    r = await api.client.get(url, params={"since": t3}, headers=api.as_("operator"))
    assert r.json()["statistic"] == values[3:]
    r = await api.client.get(
        url, params={"since": "2025-11-24T16:00:00Z"}, headers=api.as_("operator")
    )
    assert r.json()["n"] == 6
    r = await api.client.get(url, params={"limit": 0}, headers=api.as_("operator"))
    assert _err(r) == (422, "query.limit")
    r = await api.client.get(url, params={"since": "yesterday"}, headers=api.as_("operator"))
    assert _err(r) == (422, "since")


async def test_points_outlive_a_restart_of_gateway_and_api(tmp_path) -> None:
    """Saved every recent_save_s (the app's lifespan) and at close; loaded by the next app."""
    kept = tmp_path / "gw" / "recent_points.npz"
    cfg = config(char("a"), char("b"))

    def start() -> tuple[Gateway, Any]:
        gw = Gateway(cfg, {}, data_dir=tmp_path / "gw", sources=[], sinks=[RecordingSink()])
        return gw, create_app(gw, _settings(tmp_path, recent_file=kept, recent_save_s=0.02))

    gw, app = start()
    token = app.state.api.auth.create_token("t", "operator", "test")[1]
    url, op = f"/api/v1/characteristics/{A}/points", {"Authorization": f"Bearer {token}"}
    try:
        async with app.router.lifespan_context(app):
            gw.process([("dev", [sample("a", 10.0 + k / 4, k, f"P{k}") for k in range(5)])])
            saver = app.state.api.recent_saver
            for _ in range(500):  # the periodic save, bounded
                if saver.saves:
                    break
                await asyncio.sleep(0.01)
            assert saver.saves >= 1 and kept.exists()
            gw.process([("dev", [sample("a", 30.0, 5, "P5")])])  # only the save at close has it
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
                before = (await c.get(url, headers=op)).json()
        assert app.state.api.closed
    finally:
        close_app(app)
        gw.close()
    assert before["serial"] == [f"P{k}" for k in range(6)]
    gw, app = start()  # the restart
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            after = (await c.get(url, headers=op)).json()
            assert after == before
            gw.process([("dev", [sample("a", 10.0, 6, "P6")])])
            after = (await c.get(url, headers=op)).json()
        assert after["serial"] == [f"P{k}" for k in range(7)]
        assert after["violations"][5] and after["zone"][5] == "out"
    finally:
        close_app(app)
        gw.close()


async def test_an_app_closed_by_its_caller_keeps_the_points_judged_after_the_server_stopped(
    tmp_path,
) -> None:
    """shopspc run stops the HTTP server first, then drains the gateway: those points count."""
    from collector.api.recent import RecentPoints, RecentSaver

    kept = tmp_path / "gw" / "recent_points.npz"
    gw = Gateway(
        config(char("a")), {}, data_dir=tmp_path / "gw", sources=[], sinks=[RecordingSink()]
    )
    try:
        app = create_app(gw, _settings(tmp_path, recent_file=kept), close_at_shutdown=False)
        async with app.router.lifespan_context(app):
            gw.process([("dev", [sample("a", 10.0, 0, "P0")])])
        assert not app.state.api.closed and gw.point_listeners  # the server stopped, not the app
        gw.process([("dev", [sample("a", 11.0, 1, "P1")])])  # the gateway drains
        close_app(app)
        assert gw.point_listeners == []
        back = RecentPoints(1)
        assert RecentSaver(back, kept, gw.chars).load() == 1
        assert back.query(0).serial == ["P0", "P1"]
    finally:
        gw.close()


async def test_capability_from_recent_points(api: Api) -> None:
    url = f"/api/v1/characteristics/{A}/capability"
    r = await api.client.get(url, headers=api.as_("operator"))
    assert _err(r) == (409, "points")
    vals = [10.0 + ((k * 7) % 11 - 5) / 3.5 for k in range(40)]
    api.gw.process([("dev", [sample("a", v, k) for k, v in enumerate(vals)])])
    r = await api.client.get(url, headers=api.as_("operator"))
    body = r.json()
    assert r.status_code == 200, body
    cap = body["capability"]
    assert cap["n"] == 40 and cap["lsl"] == 4.0 and cap["usl"] == 16.0
    assert cap["Cp"]["value"] == pytest.approx(2.0)  # (16 − 4) / (6 · σ 1)
    assert cap["stable"] is True
    r = await api.client.get(url, params={"confidence": 2}, headers=api.as_("operator"))
    assert _err(r) == (422, "query.confidence")


async def test_alarm_list_get_ack_and_refusals(api: Api) -> None:
    aid = _alarm(api)
    op = api.as_("operator")
    r = await api.client.get("/api/v1/alarms", headers=op)
    assert {a["chart"] for a in r.json()} == {"x", "mr"}
    assert all(a["status"] == "active" for a in r.json())
    r = await api.client.get("/api/v1/alarms", params={"line": "l2"}, headers=op)
    assert r.json() == []
    r = await api.client.get("/api/v1/alarms", params={"line": "s1/a1/l1"}, headers=op)
    assert len(r.json()) == 2
    r = await api.client.get("/api/v1/alarms", params={"characteristic": "b"}, headers=op)
    assert r.json() == []
    r = await api.client.get("/api/v1/alarms", params={"since": "+1h"}, headers=op)
    assert r.json() == []
    r = await api.client.get("/api/v1/alarms", params={"status": "nope"}, headers=op)
    assert _err(r) == (422, "query.status")
    r = await api.client.get(f"/api/v1/alarms/{aid}", headers=op)
    assert r.json()["rule"] == "N1" and r.json()["payload"]["value"] == 30.0
    assert _err(await api.client.get("/api/v1/alarms/none", headers=op)) == (404, "alarm")
    ack = f"/api/v1/alarms/{aid}/ack"
    assert _err(await api.client.post(ack, json={})) == (401, "credentials")
    r = await api.client.post(ack, json={"cause": "nonsense"}, headers=op)
    assert _err(r) == (422, "cause")
    r = await api.client.post(ack, json={"user": "someone else"}, headers=op)
    assert _err(r) == (422, "body.user")  # the user is the principal, never the body
    r = await api.client.post("/api/v1/alarms/none/ack", json={}, headers=op)
    assert _err(r) == (404, "alarm")
    r = await api.client.post(
        ack, json={"comment": "tool", "cause": "machine:MC-TOOL-WEAR"}, headers=op
    )
    body = r.json()
    assert r.status_code == 200, body
    assert body["event"]["event"] == "acknowledged" and body["event"]["user"] == "token:t-operator"
    assert body["alarm"]["status"] == "acknowledged" and body["alarm"]["ack_source"] == "api"
    r = await api.client.post(ack, json={}, headers=op)
    assert r.json()["event"] is None  # acknowledged already
    r = await api.client.get("/api/v1/alarms", params={"status": "acknowledged"}, headers=op)
    assert [a["alarm_id"] for a in r.json()] == [aid]
    r = await api.client.get("/api/v1/alarms", params={"status": "all"}, headers=op)
    assert len(r.json()) == 2
    r = await api.client.get("/api/v1/alarms/pareto", headers=op)
    assert r.json() == [
        {"category": "machine", "code": "MC-TOOL-WEAR", "text": r.json()[0]["text"], "count": 1}
    ]
    r = await api.client.get("/api/v1/alarms/pareto", params={"by": "category"}, headers=op)
    assert r.json()[0]["category"] == "machine"
    r = await api.client.get("/api/v1/alarms/causes", headers=op)  # the ack picklists
    lists = r.json()
    assert {"category": "machine", "code": "MC-TOOL-WEAR"}.items() <= next(
        c for c in lists["causes"] if c["code"] == "MC-TOOL-WEAR"
    ).items()
    assert {c["category"] for c in lists["causes"]} == {
        "operator",
        "machine",
        "material",
        "method",
        "environment",
        "measurement",
    }
    assert any(a["code"] == "TOOL-CHANGE" and a["text_zh"] for a in lists["actions"])
    r = await api.client.get("/api/v1/journal", params={"characteristic": "a"}, headers=op)
    events = [j["event"] for j in r.json()]
    assert events.count("raised") == 2 and "acknowledged" in events
    assert _err(await api.client.get("/api/v1/journal")) == (401, "credentials")


async def test_shelve_unshelve_and_service_need_an_engineer(api: Api) -> None:
    aid = _alarm(api)
    shelve = f"/api/v1/alarms/{aid}/shelve"
    body = {"comment": "sensor swap", "minutes": 30}
    r = await api.client.post(shelve, json=body, headers=api.as_("operator"))
    assert _err(r) == (403, "role")
    r = await api.client.post(shelve, json={"comment": "x"}, headers=api.as_("engineer"))
    assert _err(r) == (422, "until")
    r = await api.client.post(shelve, json={"minutes": 5}, headers=api.as_("engineer"))
    assert _err(r) == (422, "body.comment")
    r = await api.client.post(shelve, json=body, headers=api.as_("engineer"))
    assert r.status_code == 200 and r.json()["event"]["event"] == "shelved"
    assert r.json()["alarm"]["shelved_until"] is not None
    unshelve = f"/api/v1/alarms/{aid}/unshelve"
    r = await api.client.post(unshelve, json={}, headers=api.as_("operator"))
    assert _err(r) == (403, "role")
    r = await api.client.post(unshelve, json={"comment": "back"}, headers=api.as_("engineer"))
    assert r.status_code == 200 and r.json()["alarm"]["shelved_until"] is None
    service = f"/api/v1/characteristics/{A}/service"
    r = await api.client.post(service, json={"in_service": False}, headers=api.as_("operator"))
    assert _err(r) == (403, "role")
    r = await api.client.post(service, json={"in_service": "maybe"}, headers=api.as_("engineer"))
    assert _err(r) == (422, "body.in_service")
    r = await api.client.post(
        service, json={"in_service": False, "comment": "gauge"}, headers=api.as_("admin")
    )
    assert r.json() == {"path": A, "in_service": False}
    assert api.gw.alarms.counts()["out_of_service"] == 1
    r = await api.client.post(
        "/api/v1/characteristics/zz/service", json={"in_service": True}, headers=api.as_("admin")
    )
    assert _err(r) == (404, "characteristic")


async def test_limits_history_and_recompute(api: Api) -> None:
    url = f"/api/v1/characteristics/{A}/limits"
    r = await api.client.get(url, headers=api.as_("operator"))
    body = r.json()
    assert body["in_force"]["center"] == 10.0 and body["in_force"]["method"] == "known"
    assert [h["source"] for h in body["history"]] == ["config"]
    assert [(a["action"], a["source"]) for a in body["audit"]] == [("assign", "config")]
    rec = url + "/recompute"
    req = {"from": "2025-11-24T00:00:00Z", "to": "2025-11-25T00:00:00Z", "reason": "new tool"}
    r = await api.client.post(rec, json=req, headers=api.as_("operator"))
    assert _err(r) == (403, "role")
    r = await api.client.post(rec, json=req, headers=api.as_("engineer"))
    assert _err(r) == (422, "recompute")  # no local series store yet
    vals = [20.0 + ((k * 7) % 11 - 5) / 10 for k in range(30)]
    lines = api.gw.process([("dev", [sample("a", v, k, f"S{k}") for k, v in enumerate(vals)])])
    with SeriesStore(api.gw.data_dir / "series.db") as store:
        store.write_lines(lines)
    r = await api.client.post(
        rec,
        json={**req, "exclude": ["serial:S3=probe slipped"], "dry_run": True},
        headers=api.as_("engineer"),
    )
    body = r.json()
    assert r.status_code == 200, body
    assert body["new"]["center"] == pytest.approx(sum(vals[:3] + vals[4:]) / 29)
    assert body["old"]["center"] == 10.0 and body["assigned"] is None and body["usable"] == 29
    assert body["new"]["exclusions"][0]["reason"].endswith("probe slipped")
    r = await api.client.post(
        rec, json={**req, "exclude": ["serial:NOPE"]}, headers=api.as_("engineer")
    )
    assert _err(r) == (422, "recompute")
    r = await api.client.post(rec, json={**req, "min_points": 100}, headers=api.as_("engineer"))
    assert _err(r) == (422, "window")
    r = await api.client.post(rec, json={**req, "window": 3}, headers=api.as_("engineer"))
    assert _err(r) == (422, "body.window")
    r = await api.client.post(rec, json=req, headers=api.as_("engineer"))
    body = r.json()
    assert body["assigned"]["action"] == "recompute" and body["assigned"]["source"] == "api"
    assert body["assigned"]["user"] == "token:t-engineer"
    r = await api.client.get(url, headers=api.as_("operator"))
    assert [a["action"] for a in r.json()["audit"]] == ["assign", "recompute"]


async def test_health_connectors_and_metrics(api: Api) -> None:
    _alarm(api)
    r = await api.client.get("/api/v1/health/connectors", headers=api.as_("operator"))
    body = r.json()
    assert [(c["name"], c["role"], c["state"]) for c in body["connectors"]] == [
        ("dev", "source", "connected"),
        ("rec", "sink", "connected"),
    ]
    assert body["pipeline"]["points"] == 2 and "path" in body["outbox"]
    assert _err(await api.client.get("/metrics")) == (401, "credentials")
    r = await api.client.get("/metrics", headers=api.as_("operator"))
    text = r.text
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "shopspc_pipeline_points_total 2.0" in text
    assert "shopspc_pipeline_queue_depth 0.0" in text
    assert 'shopspc_connector_state{connector="dev",role="source",state="connected"} 1.0' in text
    assert "shopspc_alarm_latency_seconds_count 2.0" in text  # x and mr raised
    assert 'shopspc_alarms{kind="active"} 2.0' in text
    assert "shopspc_outbox_file_bytes" in text and "shopspc_stream_subscribers 0.0" in text
    assert "shopspc_connector_gaps" not in text  # no connector has them
    # an OPC UA source's gap and backfill counters
    from connectors.opcua.source import OpcuaStats

    api.gw.sources[0].stats = OpcuaStats(state="connected", gaps=3, backfilled=7)
    text = (await api.client.get("/metrics", headers=api.as_("operator"))).text
    assert 'shopspc_connector_gaps_total{connector="dev"} 3.0' in text
    assert 'shopspc_connector_backfilled_total{connector="dev"} 7.0' in text
    assert 'shopspc_connector_backfill_failed_total{connector="dev"} 0.0' in text
    assert 'shopspc_connector_gaps_total{connector="rec"}' not in text  # a sink has none


async def test_metrics_public_when_configured(gateway, tmp_path) -> None:
    app = create_app(gateway, _settings(tmp_path, metrics_public=True))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            assert (await c.get("/metrics")).status_code == 200
    finally:
        close_app(app)


async def test_session_login_csrf_logout_and_audit(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/users",
        json={"name": "li", "password": "correct horse", "role": "operator"},
        headers=api.as_("admin"),
    )
    assert r.status_code == 201 and r.json()["role"] == "operator"
    r = await api.client.post("/api/v1/auth/login", json={"name": "li", "password": "wrong one!"})
    assert _err(r) == (401, "login")
    r = await api.client.post(
        "/api/v1/auth/login", json={"name": "li", "password": "correct horse"}
    )
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert "shopspc_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Secure" in cookie
    r = await api.client.get("/api/v1/auth/me")
    assert r.json() == {"name": "li", "role": "operator", "via": "session", "csrf_token": csrf}
    aid = _alarm(api)
    ack = f"/api/v1/alarms/{aid}/ack"
    assert _err(await api.client.post(ack, json={})) == (403, "csrf")
    r = await api.client.post(ack, json={}, headers={"X-CSRF-Token": "forged"})
    assert _err(r) == (403, "csrf")
    r = await api.client.post(ack, json={"comment": "seen"}, headers={"X-CSRF-Token": csrf})
    assert r.json()["event"]["user"] == "li"
    r = await api.client.get("/api/v1/users", headers={"X-CSRF-Token": csrf})
    assert _err(r) == (403, "role")
    r = await api.client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert _err(await api.client.get("/api/v1/auth/me")) == (401, "credentials")
    # the audit trail: every state-changing request, refusals too, no password in it
    rows = api.auth.audit_rows(limit=100)
    seen = [(a["who"], a["method"], a["path"], a["status"]) for a in rows]
    assert seen == [
        ("token:t-admin", "POST", "/api/v1/users", 201),
        ("li", "POST", "/api/v1/auth/login", 401),
        ("li", "POST", "/api/v1/auth/login", 200),
        ("li", "POST", ack, 403),
        ("li", "POST", ack, 403),
        ("li", "POST", ack, 200),
        ("li", "POST", "/api/v1/auth/logout", 200),
    ]
    assert "correct horse" not in str(rows) and '"password": "***"' in rows[0]["summary"]
    assert rows[5]["summary"] == '{"comment": "seen"}' and rows[5]["via"] == "session"
    r = await api.client.get("/api/v1/audit", headers=api.as_("admin"))
    assert len(r.json()) == 7  # reads are not audited


@pytest.mark.parametrize(
    ("setting", "scheme", "secure"),
    [
        ("auto", "http", False),  # plain HTTP on the plant network: a Secure cookie is dropped
        ("auto", "https", True),
        (True, "http", True),  # behind a TLS reverse proxy, which uvicorn sees as plain HTTP
        (False, "https", False),
    ],
)
async def test_the_session_cookie_is_secure_as_configured(
    gateway, tmp_path, setting, scheme, secure
) -> None:
    app = create_app(gateway, _settings(tmp_path, cookie_secure=setting))
    try:
        app.state.api.auth.add_user("li", "correct horse", "operator")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://gw") as c:
            r = await c.post("/api/v1/auth/login", json={"name": "li", "password": "correct horse"})
            assert r.status_code == 200
            assert ("Secure" in r.headers["set-cookie"]) is secure
            # a client keeps a Secure cookie to itself over plain HTTP, as browsers do
            me = await c.get("/api/v1/auth/me")
            if secure and scheme == "http":
                assert me.status_code == 401
            else:
                assert me.json()["via"] == "session"
    finally:
        close_app(app)


async def test_failed_logins_are_rate_limited(gateway, tmp_path) -> None:
    app = create_app(gateway, _settings(tmp_path, login_max_failures=2))
    try:
        app.state.api.auth.add_user("ann", "a long password", "engineer")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            bad = {"name": "ann", "password": "not it at all"}
            for _ in range(2):
                assert (await c.post("/api/v1/auth/login", json=bad)).status_code == 401
            r = await c.post("/api/v1/auth/login", json={**bad, "password": "a long password"})
            assert _err(r) == (429, "login") and int(r.headers["retry-after"]) > 0
            r = await c.post("/api/v1/auth/login", json={"name": "nobody", "password": "x"})
            assert r.status_code == 429  # the client address is locked too
    finally:
        close_app(app)


async def test_users_and_tokens_admin_only(api: Api) -> None:
    for role in ("operator", "engineer"):
        r = await api.client.get("/api/v1/users", headers=api.as_(role))
        assert _err(r) == (403, "role")
        r = await api.client.post(
            "/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=api.as_(role)
        )
        assert _err(r) == (403, "role")
    admin = api.as_("admin")
    new = {"name": "eng", "password": "long enough pw", "role": "engineer"}
    assert (await api.client.post("/api/v1/users", json=new, headers=admin)).status_code == 201
    r = await api.client.post("/api/v1/users", json=new, headers=admin)
    assert _err(r) == (409, "name")
    r = await api.client.post(
        "/api/v1/users", json={**new, "name": "x", "password": "short"}, headers=admin
    )
    assert _err(r) == (422, "body.password")
    r = await api.client.post(
        "/api/v1/users", json={**new, "name": "x", "role": "root"}, headers=admin
    )
    assert _err(r) == (422, "body.role")
    r = await api.client.get("/api/v1/users", headers=admin)
    assert [(u["name"], u["role"], u["disabled"]) for u in r.json()] == [("eng", "engineer", False)]
    assert "hash" not in r.json()[0]
    r = await api.client.patch("/api/v1/users/eng", json={"disabled": True}, headers=admin)
    assert r.json()["disabled"] is True
    r = await api.client.post(
        "/api/v1/auth/login", json={"name": "eng", "password": "long enough pw"}
    )
    assert _err(r) == (401, "login")
    r = await api.client.patch("/api/v1/users/nobody", json={"role": "admin"}, headers=admin)
    assert _err(r) == (404, "user")
    r = await api.client.post(
        "/api/v1/users/eng/password",
        json={"password": "another long one"},
        headers=api.as_("engineer"),
    )
    assert _err(r) == (403, "role")
    r = await api.client.post(
        "/api/v1/users/eng/password", json={"password": "another long one"}, headers=admin
    )
    assert r.status_code == 200
    r = await api.client.post(
        "/api/v1/users/nobody/password", json={"password": "another long one"}, headers=admin
    )
    assert _err(r) == (404, "user")
    # tokens: created (secret shown once), used, listed without secrets, revoked
    r = await api.client.post(
        "/api/v1/tokens", json={"name": "mes", "role": "operator", "ttl_days": 30}, headers=admin
    )
    tok = r.json()
    assert (
        r.status_code == 201
        and tok["token"].startswith("spc_")
        and tok["created_by"] == "token:t-admin"
    )
    mes = {"Authorization": f"Bearer {tok['token']}"}
    r = await api.client.get("/api/v1/auth/me", headers=mes)
    assert r.json() == {"name": "token:mes", "role": "operator", "via": "token"}
    r = await api.client.get("/api/v1/tokens", headers=admin)
    listed = {t["id"]: t for t in r.json()}
    assert "token" not in listed[tok["id"]] and listed[tok["id"]]["last_used_us"] is not None
    r = await api.client.delete(f"/api/v1/tokens/{tok['id']}", headers=admin)
    assert r.json()["revoked_us"] is not None
    assert _err(await api.client.get("/api/v1/auth/me", headers=mes)) == (401, "token")
    r = await api.client.delete("/api/v1/tokens/nope", headers=admin)
    assert _err(r) == (404, "token")


async def test_expired_token_is_refused(api: Api) -> None:
    _, secret = api.auth.create_token("old", "admin", "test", ttl_s=-1)
    r = await api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert _err(r) == (401, "token")


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, concrete url) of every /api/v1 operation in the OpenAPI document but sign-in."""
    fill = {"{c}": A, "{alarm_id}": "x", "{name}": "x", "{token_id}": "x"}
    out = []
    for path, ops in app.openapi()["paths"].items():
        if not path.startswith("/api/v1/") or path == "/api/v1/auth/login":
            continue
        for key, value in fill.items():
            path = path.replace(key, value)
        out += [(m.upper(), path) for m in sorted(ops)]
    return out


async def test_every_endpoint_refuses_without_credentials(api: Api) -> None:
    routes = _routes(api.app)
    assert len(routes) >= 25
    for method, url in routes:
        r = await api.client.request(method, url, json={})
        assert _err(r) == (401, "credentials"), (method, url)


async def test_admin_endpoints_refuse_lower_roles(api: Api) -> None:
    admin_only = [
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("PATCH", "/api/v1/users/x"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/x"),
        ("GET", "/api/v1/audit"),
    ]
    for role in ("operator", "engineer"):
        for method, url in admin_only:
            r = await api.client.request(method, url, json={}, headers=api.as_(role))
            assert _err(r) == (403, "role"), (role, method, url)


async def test_cors_is_off_by_default_and_on_when_configured(api: Api, gateway, tmp_path) -> None:
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = await api.client.options("/api/v1/characteristics", headers=origin)
    assert "access-control-allow-origin" not in r.headers
    app = create_app(gateway, _settings(tmp_path / "cors", cors_origins=("https://hmi.plant",)))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            ok = {**origin, "Origin": "https://hmi.plant"}
            r = await c.options("/api/v1/characteristics", headers=ok)
            assert r.headers["access-control-allow-origin"] == "https://hmi.plant"
            r = await c.options("/api/v1/characteristics", headers=origin)
            assert "access-control-allow-origin" not in r.headers
    finally:
        close_app(app)


async def test_alarm_history_filters_in_the_store(api: Api) -> None:
    _alarm(api)
    op = api.as_("operator")
    url = "/api/v1/alarms"
    r = await api.client.get(url, params={"status": "all", "characteristic": A}, headers=op)
    assert len(r.json()) == 2 and "payload" not in r.json()[0]
    r = await api.client.get(url, params={"status": "all", "line": "l2"}, headers=op)
    assert r.json() == []
    r = await api.client.get(url, params={"status": "all", "limit": 1}, headers=op)
    assert len(r.json()) == 1
    r = await api.client.get(url, params={"status": "closed"}, headers=op)
    assert r.json() == []


async def test_capability_of_subgroups_from_the_series_store_and_refusals(tmp_path) -> None:
    from collector.pipeline import Gateway

    from .conftest import IdleSource, RecordingSink, char, config

    cfg = config(
        char("x", chart="xbar-r", subgroup={"size": 5}),
        char("nospec", lsl=None, usl=None),
        char("p1", limits={"phase1_subgroups": 20}),
    )
    gw = Gateway(cfg, {}, data_dir=tmp_path / "gw", sources=[IdleSource()], sinks=[RecordingSink()])
    app = create_app(gw, _settings(tmp_path))
    try:
        _, token = app.state.api.auth.create_token("t", "operator", "test")
        op = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            url = "/api/v1/characteristics/{}/capability"
            since = {"since": "2025-11-24T00:00:00Z"}
            r = await c.get(url.format("x"), params=since, headers=op)
            assert _err(r) == (409, "series")  # no local series store
            vals = [10.0 + ((k * 7) % 11 - 5) / 3.5 for k in range(50)]
            lines = gw.process([("dev", [sample("x", v, k) for k, v in enumerate(vals)])])
            with SeriesStore(gw.data_dir / "series.db") as store:
                store.write_lines(lines)
            r = await c.get(url.format("x"), params=since, headers=op)
            body = r.json()
            assert r.status_code == 200, body
            assert body["capability"]["n"] == 50 and body["source"].endswith("series.db")
            assert body["capability"]["Cp"]["value"] == pytest.approx(2.0)
            r = await c.get(url.format("nospec"), headers=op)
            assert _err(r) == (409, "specs")
            r = await c.get(url.format("p1"), headers=op)
            assert _err(r) == (409, "limits")
    finally:
        close_app(app)
        gw.close()


async def test_docs_page_has_its_own_csp(api: Api) -> None:
    r = await api.client.get("/api/v1/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert "cdn.jsdelivr.net" in r.headers["content-security-policy"]


async def test_the_last_enabled_admin_stays_and_names_have_no_colon(api: Api) -> None:
    admin = api.as_("admin")
    api.auth.add_user("boss", "a long password", "admin")
    r = await api.client.patch("/api/v1/users/boss", json={"disabled": True}, headers=admin)
    assert _err(r) == (409, "name")
    r = await api.client.patch("/api/v1/users/boss", json={"role": "operator"}, headers=admin)
    assert _err(r) == (409, "name")
    api.auth.add_user("deputy", "a long password", "admin")
    r = await api.client.patch("/api/v1/users/boss", json={"role": "engineer"}, headers=admin)
    assert r.json()["role"] == "engineer"
    new = {"name": "token:mes", "password": "a long password", "role": "operator"}
    r = await api.client.post("/api/v1/users", json=new, headers=admin)
    assert _err(r) == (422, "name")


async def test_readyz_reports_closed_stores(api: Api) -> None:
    api.gw.close()  # outbox, alarm store and limits store closed underneath the API
    r = await api.client.get("/readyz")
    reasons = r.json()["reasons"]
    assert r.status_code == 503
    assert any(x.startswith("outbox") for x in reasons), reasons
    assert any(x.startswith("alarm store") for x in reasons), reasons
    assert (await api.client.get("/healthz")).status_code == 200


async def test_manual_entry_checks_then_stores_like_an_acquired_sample(api: Api) -> None:
    """POST …/measurements: plausibility, resolution, spec confirmation; source=manual."""

    class Capture:
        name, precision = "cap", "us"

        def __init__(self) -> None:
            self.lines: list[str] = []
            self.stats = ConnectorStats(state="connected")

        async def write(self, batch: Any) -> Any:
            self.lines += [b.decode() if isinstance(b, bytes) else b for b in batch]

        async def close(self) -> None:
            pass

    gw = api.gw
    cap = Capture()
    gw.sinks = [cap]
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    url = "/api/v1/characteristics/a/measurements"
    op = api.as_("operator")
    try:
        assert _err(await api.client.post(url, json={"value": 10.1})) == (401, "credentials")
        assert _err(await api.client.post(url, json={"value": "x"}, headers=op))[0] == 422
        r = await api.client.post(url, json={"value": 17.0}, headers=op)
        assert _err(r) == (409, "confirm")  # outside USL 16: the operator must confirm
        r = await api.client.post(
            url,
            json={"value": 10.25, "serial": "M-1", "context": {"machine": "MC-9"}},
            headers=op,
        )
        assert r.status_code == 201, r.json()
        assert r.json() == {
            "path": "s1/a1/l1/st1/a",
            "value": 10.25,
            "serial": "M-1",
            "stored": True,
        }
        r = await api.client.post(url, json={"value": 17.0, "confirm": True}, headers=op)
        assert r.status_code == 201  # confirmed: stored and judged (an N1 alarm)
        points = (await api.client.get("/api/v1/characteristics/a/points", headers=op)).json()
        assert points["serial"][-2:] == ["M-1", None] and points["statistic"][-1] == 17.0
        assert any(a["rule"] == "N1" for a in gw.alarms.active())
    finally:
        stop.set()
        await run
    manual = [ln for ln in cap.lines if ln.startswith("measurement,")]
    assert len(manual) == 2 and all(",source=manual" in ln for ln in manual)
    assert 'operator="token:t-operator"' in manual[0] and 'machine="MC-9"' in manual[0]
    assert 'serial="M-1"' in manual[0] and "value=10.25" in manual[0]


async def test_manual_entry_plausibility_and_decimals(tmp_path) -> None:
    cfg = config(
        char("g", manual={"plausible_min": 5.0, "plausible_max": 15.0, "decimals": 2}),
    )
    gw = Gateway(cfg, {}, data_dir=tmp_path / "gw", sources=[], sinks=[RecordingSink()])
    app = create_app(gw, _settings(tmp_path))
    token = app.state.api.auth.create_token("t", "operator", "test")[1]
    head = {"Authorization": f"Bearer {token}"}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            url = "/api/v1/characteristics/g/measurements"
            for value, what in ((4.9, "below"), (15.5, "above"), (10.123, "decimals")):
                r = await c.post(url, json={"value": value}, headers=head)
                assert _err(r) == (422, "value") and what in r.json()["error"]["message"]
    finally:
        close_app(app)
        gw.close()


async def test_characteristic_states_in_the_list_with_the_suspension_reason(api: Api) -> None:
    """``state`` and ``state_reason``: no_data, out_of_control, in_control, suspended."""
    op = api.as_("operator")
    url = "/api/v1/characteristics"

    def states(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
        return {c["id"]: (c["state"], c["state_reason"]) for c in rows}

    before = states((await api.client.get(url, headers=op)).json())
    assert before == dict.fromkeys("abc", ("no_data", None))
    _alarm(api)
    api.gw.process([("dev", [sample("b", 10.0, 2)])])
    now = states((await api.client.get(url, headers=op)).json())
    assert now["a"] == ("out_of_control", None) and now["b"] == ("in_control", None)
    assert now["c"] == ("no_data", None)
    r = await api.client.post(
        "/api/v1/characteristics/b/service",
        json={"in_service": False, "comment": "gauge at calibration"},
        headers=api.as_("engineer"),
    )
    assert r.status_code == 200
    now = states((await api.client.get(url, headers=op)).json())
    assert now["b"] == ("suspended", "out_of_service: gauge at calibration")


async def test_entry_form_gives_specs_checks_and_the_context_now(tmp_path) -> None:
    """GET …/entry: unit, LSL/USL, nominal, manual checks, pre-filled 5M1E (401, 404)."""
    cfg = config(
        char(
            "g",
            unit="mm",
            nominal=10.0,
            manual={"plausible_min": 5.0, "plausible_max": 15.0, "decimals": 2},
            context={
                "machine": {"static": "MC-7"},
                "material_lot": {"source": "dev", "binding": "lot"},
                "environment": {"temperature": {"static": 21.5}},
            },
        ),
    )
    gw = Gateway(cfg, {}, data_dir=tmp_path / "gw", sources=[], sinks=[RecordingSink()])
    app = create_app(gw, _settings(tmp_path))
    token = app.state.api.auth.create_token("t", "operator", "test")[1]
    head = {"Authorization": f"Bearer {token}"}
    try:
        gw.index.observe("dev", [sample("lot", 4711.0, 0)])  # the lot the line reported last
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            url = "/api/v1/characteristics/g/entry"
            assert _err(await c.get(url)) == (401, "credentials")
            r = await c.get("/api/v1/characteristics/zz/entry", headers=head)
            assert _err(r) == (404, "characteristic")
            r = await c.get(url, headers=head)
            assert r.status_code == 200, r.json()
            form = r.json()
    finally:
        close_app(app)
        gw.close()
    assert form["path"] == "s1/a1/l1/st1/g" and form["unit"] == "mm"
    assert (form["lsl"], form["nominal"], form["usl"]) == (4.0, 10.0, 16.0)
    assert form["manual"] == {"plausible_min": 5.0, "plausible_max": 15.0, "decimals": 2}
    assert form["fields"] == {
        "operator": "token:t",
        "machine": "MC-7",
        "lot": "4711",
        "method": None,
        "gauge_id": None,
        "env_temperature": "21.5",
    }
    assert form["context"] == {
        "operator": "token:t",
        "machine": "MC-7",
        "material_lot": 4711,
        "environment": {"temperature": 21.5},
    }


def test_a_running_gateway_takes_the_api_settings_from_its_config(tmp_path) -> None:
    from collector.config import parse_config

    text = (
        "version: 1\napi:\n  cookie_secure: false\n  recent_points: 500\n  metrics_public: true\n"
    )
    cfg, _ = parse_config(text, "gw.yaml")
    got = ApiSettings.of(cfg, tmp_path)
    assert got.cookie_secure is False and got.recent_points == 500 and got.metrics_public
    assert got.users_db == tmp_path / "users.db"
    assert got.recent_file == tmp_path / "recent_points.npz"
    assert (
        ApiSettings.of(parse_config("version: 1\n", "gw.yaml")[0], tmp_path).cookie_secure == "auto"
    )
