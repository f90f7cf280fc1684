"""End to end: the simulated stations (real asyncua and pymodbus servers, a Debian mosquitto)
and a Gateway on the demo configuration in one event loop, series into the embedded store."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from rich.console import Console

from collector.config import GatewayConfig, parse_config
from collector.live import run_live_demo
from collector.pipeline import Gateway
from collector.simulate import run_simulation
from connectors.base import Quality, Sample
from connectors.localstore.store import SeriesStore
from tests.collector.test_pipeline import RecordingSink
from tests.servers import free_port, require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo.yaml"
PORTS = {"opcua": 48400, "modbus": 15020, "mqtt": 18830}


def demo_text(tmp: Path) -> str:
    """The demo configuration on free loopback ports, its state and series under ``tmp``."""
    text = DEMO.read_text(encoding="utf-8")
    for port in PORTS.values():
        assert str(port) in text
        text = text.replace(str(port), str(free_port()))
    assert "var/shopspc-demo" in text and "127.0.0.1:8470" in text
    text = text.replace("127.0.0.1:8470", f"127.0.0.1:{free_port()}")
    return text.replace("var/shopspc-demo", str(tmp / "demo"))


async def test_stations_and_gateway_store_measurements_points_and_alarms(tmp_path) -> None:
    require_binary("mosquitto")
    cfg, connectors = parse_config(demo_text(tmp_path), DEMO)
    alarms = []
    gw = Gateway(cfg, connectors, on_alarm=alarms.append, metrics_interval_s=1.0)
    stop_sim = asyncio.Event()
    stop_gw = asyncio.Event()

    async def watch() -> None:
        try:
            # bounded: at most 60 s of 0.2 s polls
            for _ in range(300):
                if alarms and all(v.n_points >= 3 for v in gw.views):
                    break
                await asyncio.sleep(0.2)
        finally:
            stop_gw.set()  # a SIGTERM-style stop: sources first, queue and outbox drained

    async def gateway() -> None:
        try:
            await gw.run(stop_gw)
        finally:
            stop_sim.set()

    async with asyncio.timeout(80):
        await asyncio.gather(
            run_simulation(
                cfg, connectors, rate=20.0, start=5, stop=stop_sim, say=lambda _line: None
            ),
            gateway(),
            watch(),
        )

    assert all(v.n_points >= 3 for v in gw.views), [(v.id, v.n_points) for v in gw.views]
    assert alarms
    assert gw.stats.outbox_pending == 0
    assert gw.outbox.path.exists()
    with SeriesStore(tmp_path / "demo" / "series.sqlite", readonly=True) as store:
        for ch in cfg.characteristics:
            tags = {"characteristic": ch.id, "station": ch.station}
            ms = store.query("measurement", tags=tags, limit=None)
            pts = store.query("spc", tags=tags, limit=None)
            assert ms and pts, ch.id
            m = ms[-1]
            assert m.tags["gateway"] == "demo-gw" and m.tags["source"] in (
                "opcua",
                "modbus",
                "mqtt",
            )
            assert m.fields["quality"] == "good" and "serial" in m.fields
            assert "operator" in m.fields and "gauge_id" in m.fields  # context as fields
            assert "operator" not in m.tags
            assert pts[-1].fields["limits_id"].startswith("L-")
        stored = store.query("alarm", limit=None)
        assert len(stored) >= 1
        assert {a.fields["alarm_id"] for a in stored} >= {alarms[0].alarm_id}
        components = {r.tags["component"] for r in store.query("gateway", limit=None)}
        assert components >= {"pipeline", "connector.cmm", "connector.gauge", "connector.local"}


def test_shopspc_run_stops_on_sigterm_with_the_outbox_drained(tmp_path) -> None:
    """``shopspc run`` against stations that are not there: it starts, and SIGTERM stops it cleanly."""
    path = tmp_path / "gw.yaml"
    path.write_text(demo_text(tmp_path), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # bounded: the outbox file appears once the gateway (and its signal handlers) is up
        outbox = tmp_path / "demo" / "outbox.db"
        for _ in range(300):
            if outbox.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert outbox.exists(), proc.communicate(timeout=30)
        # the HTTP API is served beside the gateway (gateway.http)
        http = re.search(r"http: (127\.0\.0\.1:\d+)", path.read_text()).group(1)
        health = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{http}/healthz", timeout=2) as resp:
                    health = resp.status
                break
            except OSError:
                time.sleep(0.1)
        assert health == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "'outbox_pending': 0" in out
    assert (tmp_path / "demo" / "engine.npz").exists()
    # the API's chart history, saved at close, for the next start
    from collector.api.recent import RECENT_SCHEMA

    with np.load(tmp_path / "demo" / "recent_points.npz") as saved:
        assert RECENT_SCHEMA.encode() in saved["meta"].tobytes()


async def test_live_demo_shows_values_and_alarms(tmp_path) -> None:
    require_binary("mosquitto")
    cfg, connectors = parse_config(demo_text(tmp_path), DEMO)
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    seen: dict[str, Any] = {}

    async def browse() -> None:
        """Sign in to the demo's web screens with the printed password, as an operator would."""
        for _ in range(400):  # bounded: the line comes before the stations start
            found = re.search(
                r"web screens: (http://\S+/) — sign in as demo, password (\S+)", out.getvalue()
            )
            if found:
                break
            await asyncio.sleep(0.01)
        assert found, out.getvalue()
        url, password = found.groups()
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for _ in range(100):  # the listener comes up beside the gateway
                with contextlib.suppress(httpx.TransportError):
                    r = await client.post(
                        "/api/v1/auth/login", json={"name": "demo", "password": password}
                    )
                    break
                await asyncio.sleep(0.05)
            seen["login"] = r.status_code
            seen["page"] = (await client.get("/")).status_code
            r = await client.get("/api/v1/characteristics")
            seen["characteristics"] = [c["path"] for c in r.json()]

    async with asyncio.timeout(60):
        gw, _ = await asyncio.gather(
            run_live_demo(
                cfg, connectors, rate=20.0, duration=4.0, pattern_start=5, console=console
            ),
            browse(),
        )
    text = out.getvalue()
    assert "ALARM" in text
    assert "cmm-1/bore-dia" in text and "vision-1/height" in text
    assert "stopped:" in text and gw.stats.outbox_pending == 0
    # the web screens beside the terminal: signed in over plain HTTP with the session cookie
    assert seen["login"] == 200 and seen["page"] == 200
    assert len(seen["characteristics"]) == len(cfg.characteristics)
    assert (tmp_path / "demo" / "users.db").exists()


@pytest.mark.integration
async def test_alarms_reach_a_signed_webhook_from_the_gateway_config(tmp_path, monkeypatch) -> None:
    """`alarms.webhook` in the config: every raised alarm POSTed in order, HMAC-signed."""
    from tests.connectors.webhook.test_client import SECRET, HookServer

    monkeypatch.setenv("SHOPSPC_TEST_HOOK", SECRET.decode())
    hook = HookServer().start()
    try:
        hook.plan = [503]  # the receiver is busy once: retried, delivered once
        cfg = GatewayConfig.model_validate(
            {
                "version": 1,
                "gateway": {"id": "gw-hook", "http": ""},
                "sources": {"dev": {"kind": "mqtt"}},
                "alarms": {
                    "webhook": {
                        "url": hook.url,
                        "secret_env": "SHOPSPC_TEST_HOOK",
                        "timeout_s": 3,
                        "retry_base_s": 0.05,
                        "retry_cap_s": 0.2,
                    }
                },
                "characteristics": [
                    {
                        "id": "a",
                        "site": "s",
                        "area": "a",
                        "line": "l",
                        "station": "st",
                        "value": {"source": "dev", "binding": "a"},
                        "limits": {"center": 10.0, "sigma": 1.0},
                        "rules": ["N1"],
                        "rules_dispersion": "none",
                    }
                ],
            }
        )
        gw = Gateway(cfg, {}, data_dir=tmp_path, sources=[], sinks=[RecordingSink()])
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        try:
            t0 = 1_764_000_000_000_000
            values = [10.0, 15.0, 10.0, 10.0, 10.0, 10.0, 10.0, 4.0]  # two N1 alarms
            gw.process(
                [
                    (
                        "dev",
                        [
                            Sample("a", v, Quality.GOOD, t0 + k, t0 + k, serial=f"P{k}")
                            for k, v in enumerate(values)
                        ],
                    )
                ]
            )
            async with asyncio.timeout(20):
                while sum(1 for h in hook.hits if h.status == 200) < 3:
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await run
    finally:
        hook.stop()
    delivered = [json.loads(h.body) for h in hook.hits if h.status == 200]
    assert all(h.verified for h in hook.hits)  # every request carries a valid HMAC
    assert [(p["event"], p["part_serial"]) for p in delivered] == [
        ("raised", "P1"),
        ("cleared", "P1"),
        ("raised", "P7"),
    ]
    assert [p["seq"] for p in delivered] == [1, 2, 3]
    assert hook.hits[0].status == 503 and json.loads(hook.hits[0].body)["seq"] == 1
    assert hook.hits[0].headers["x-shopspc-event-id"] == f"{delivered[0]['alarm_id']}:raised"
