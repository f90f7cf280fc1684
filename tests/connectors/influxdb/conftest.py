"""Real servers for the InfluxDB sink: Debian victoria-metrics (v2 write API) and influxd 1.6 (1.x API)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import HOST, Server, free_port, require_binary, run_server


@contextlib.contextmanager
def victoria_metrics(tmp: Path, *extra: str) -> Iterator[Server]:
    """VictoriaMetrics on a free loopback port; dedup keeps one sample per series and timestamp."""
    binary = require_binary("victoria-metrics")
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr={HOST}:{port}",
        f"-storageDataPath={tmp / 'data'}",
        "-retentionPeriod=100y",
        # without it a replayed sample is stored twice (checked by hand on this VictoriaMetrics)
        "-dedup.minScrapeInterval=1ms",
        "-loggerLevel=WARN",
        *extra,
    ]
    with run_server(argv, port, tmp, timeout=20.0) as server:
        yield server


def influxd_argv(tmp: Path, *, auth: bool = False) -> tuple[list[str], int]:
    """argv and HTTP port of an influxd 1.x with everything in ``tmp`` on loopback ports."""
    binary = require_binary("influxd")
    port, rpc = free_port(), free_port()
    conf = tmp / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "{HOST}:{rpc}"
[meta]
  dir = "{tmp}/meta"
  logging-enabled = false
[data]
  dir = "{tmp}/data"
  wal-dir = "{tmp}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "{HOST}:{port}"
  log-enabled = false
  auth-enabled = {"true" if auth else "false"}
"""
    )
    return [binary, "-config", str(conf)], port


@contextlib.contextmanager
def influxd(tmp: Path, *, auth: bool = False) -> Iterator[Server]:
    """Debian influxd 1.6 on a free loopback port, data in ``tmp`` (``auth``: auth-enabled)."""
    argv, port = influxd_argv(tmp, auth=auth)
    with run_server(argv, port, tmp, timeout=20.0) as server:
        yield server


def http_json(url: str, data: dict[str, str] | None = None) -> Any:
    """GET (or POST form ``data``) and decode JSON."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raise AssertionError(f"{url} {data}: HTTP {exc.code} {exc.read()!r}") from None


def influx_query(
    port: int, q: str, db: str | None = None, auth: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Run an InfluxQL statement (POST /query, epoch=u; ``auth`` as the u/p parameters)."""
    form = {"q": q, "epoch": "u"}
    url = f"http://{HOST}:{port}/query"
    if auth:  # 1.x reads credentials from the query string, not the form body
        url += "?" + urllib.parse.urlencode({"u": auth[0], "p": auth[1]})
    if db:
        form["db"] = db
    return http_json(url, form)


def vm_export(port: int, match: str) -> list[dict[str, Any]]:
    """Flush VictoriaMetrics and export the series matching ``match`` (one dict per series)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/internal/force_flush", timeout=10) as r:
        r.read()
    url = f"http://{HOST}:{port}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture(scope="module")
def influx1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with influxd(tmp_path_factory.mktemp("influxd")) as server:
        yield server
