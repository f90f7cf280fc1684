"""The sink's logic without a server: config validation, response classification, chunking,
isolating rejected lines, errors and state. The HTTP client is replaced by a fake here only;
test_integration.py runs the same paths against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import connectors.influxdb
from connectors.base import ConnectorError, sink_class
from connectors.influxdb import InfluxSink, InfluxSinkConfig
from connectors.influxdb.client import PostResult, V1Client, V2Client, classify, server_message
from connectors.influxdb.config import SINK_CONFIG

# --- config ---------------------------------------------------------------------------


def test_defaults() -> None:
    c = InfluxSinkConfig(url="http://127.0.0.1:8086", bucket="b")
    assert (c.api, c.precision, c.batch_size, c.gzip) == ("v2", "us", 5000, True)


@pytest.mark.parametrize(
    "fields",
    [
        {"api": "v2", "url": "http://x"},  # no bucket
        {"api": "v1", "url": "http://x"},  # no database
        {"api": "v1", "url": "http://x", "database": "d", "bucket": "b"},
        {"api": "v2", "url": "http://x", "bucket": "b", "database": "d"},
        {"api": "v1", "url": "http://x", "database": "d", "password_env": "P"},
        {"api": "v2", "url": "ftp://x", "bucket": "b"},
        {"api": "v2", "url": "http://x", "bucket": "b", "precision": "m"},
        {"api": "v2", "url": "http://x", "bucket": "b", "batch_size": 0},
        {"api": "v2", "url": "http://x", "bucket": "b", "token": "secret-in-file"},
    ],
)
def test_invalid_configs(fields: dict) -> None:
    with pytest.raises(ValidationError):
        InfluxSinkConfig(**fields)


def test_config_is_frozen() -> None:
    c = InfluxSinkConfig(url="http://x", bucket="b")
    with pytest.raises(ValidationError):
        c.bucket = "other"  # type: ignore[misc]


def test_registered_as_influxdb() -> None:
    assert sink_class("influxdb") is InfluxSink
    assert SINK_CONFIG is InfluxSinkConfig


# --- classification -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204])
def test_2xx_ok(status: int) -> None:
    assert classify("w", status, "") == PostResult(status, rejected=False)


@pytest.mark.parametrize("status", [400, 422])
def test_malformed_rejected_with_message(status: int) -> None:
    result = classify("w", status, "unable to parse")
    assert result.rejected
    assert "unable to parse" in result.message


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (503, True), (401, False), (403, False), (404, False), (413, False)],
)
def test_errors(status: int, retryable: bool) -> None:
    with pytest.raises(ConnectorError) as info:
        classify("w", status, "msg")
    assert info.value.retryable is retryable


def test_server_message_from_json_v1_and_v2() -> None:
    assert server_message(b'{"error":"unable to parse x"}') == "unable to parse x"
    assert server_message(b'{"code":"invalid","message":"bad line"}') == "bad line"
    assert server_message(b"plain text\n") == "plain text"
    assert server_message(None) == ""


def test_v1_client_sends_basic_auth_and_rp() -> None:
    client = V1Client(
        where="w",
        url="http://127.0.0.1:1/prefix/",
        database="d b",
        retention_policy="autogen",
        username="u",
        password="p",
        precision="ms",
        gzip_body=True,
        timeout_s=1,
    )
    assert client._path == "/prefix/write?db=d+b&precision=ms&rp=autogen"
    assert client._headers["Authorization"] == "Basic dTpw"
    assert client._headers["Content-Encoding"] == "gzip"


# --- the sink with a fake client --------------------------------------------------------


class FakeClient:
    """Rejects any body with a line containing BAD (as a server rejects a batch), or fails."""

    def __init__(self, fail: ConnectorError | None = None) -> None:
        self.bodies: list[bytes] = []
        self.fail = fail
        self.closed = False

    def post(self, body: bytes) -> PostResult:
        self.bodies.append(body)
        if self.fail is not None:
            raise self.fail
        if b"BAD" in body:
            return PostResult(400, rejected=True, message="HTTP 400: unable to parse BAD")
        return PostResult(204, rejected=False)

    def close(self) -> None:
        self.closed = True


def make_sink(fake: FakeClient, **kw: object) -> InfluxSink:
    sink = InfluxSink(InfluxSinkConfig(url="http://127.0.0.1:1", bucket="b", **kw), "t")  # type: ignore[arg-type]
    sink._client = fake  # type: ignore[assignment]
    return sink


async def test_chunks_by_batch_size() -> None:
    fake = FakeClient()
    sink = make_sink(fake, batch_size=4)
    result = await sink.write([f"m v={i} {i}" for i in range(9)] + [b"m v=9 9"])
    assert (result.accepted, result.requests, result.rejected) == (10, 3, ())
    assert [b.count(b"\n") + 1 for b in fake.bodies] == [4, 4, 2]
    assert fake.bodies[0].split(b"\n")[0] == b"m v=0 0"
    await sink.close()
    assert fake.closed
    assert sink.stats.lines_written == sink.stats.samples == 10


async def test_bad_lines_are_isolated_in_order() -> None:
    fake = FakeClient()
    sink = make_sink(fake)
    lines = [f"m v={i} {i}" for i in range(16)]
    lines[3] = "BAD 3"
    lines[12] = "BAD 12"
    result = await sink.write(lines)
    await sink.close()
    assert result.accepted == 14
    assert [r.lines for r in result.rejected] == [("BAD 3",), ("BAD 12",)]
    assert [r.indices for r in result.rejected] == [(3,), (12,)]
    assert all(r.status == 400 and "unable to parse" in r.message for r in result.rejected)
    assert result.requests <= 1 + 2 * 2 * 4
    assert sink.stats.lines_rejected == sink.stats.bad_samples == 2


async def test_isolation_budget_rejects_the_rest_as_a_whole() -> None:
    fake = FakeClient()
    sink = make_sink(fake, max_isolation_requests=0)
    result = await sink.write(["a v=1 1", "BAD", "b v=1 1"])
    await sink.close()
    assert result.accepted == 0
    assert result.rejected[0].lines == ("a v=1 1", "BAD", "b v=1 1")
    assert result.rejected[0].indices == (0, 1, 2)
    assert result.requests == 1


async def test_retryable_error_raises_and_logs_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeClient(fail=ConnectorError("w", "refused", retryable=True))
    sink = make_sink(fake)
    caplog.set_level(logging.INFO, logger="connectors.influxdb.sink")
    for _ in range(3):
        with pytest.raises(ConnectorError) as info:
            await sink.write(["m v=1 1"])
        assert info.value.retryable
    assert sink.stats.state == "disconnected"
    assert sink.stats.errors == 3
    fake.fail = None
    await sink.write(["m v=1 1"])
    await sink.write(["m v=1 2"])
    await sink.close()
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert (len(lost), len(back)) == (1, 1)


async def test_write_after_close_is_refused() -> None:
    sink = make_sink(FakeClient())
    await sink.close()
    await sink.close()
    with pytest.raises(ConnectorError) as info:
        await sink.write(["m v=1 1"])
    assert not info.value.retryable


async def test_missing_password_variable_is_not_retryable() -> None:
    config = InfluxSinkConfig(
        api="v1", url="http://127.0.0.1:1", database="d", username="u", password_env="NOPE_PW"
    )
    sink = InfluxSink(config, "t", environ={})
    with pytest.raises(ConnectorError) as info:
        await sink.write(["m v=1 1"])
    await sink.close()
    assert not info.value.retryable
    assert "NOPE_PW" in info.value.message


def test_v2_client_closes_cleanly() -> None:
    client = V2Client(
        where="w",
        url="http://127.0.0.1:1",
        org="o",
        bucket="b",
        token="t",
        precision="us",
        gzip_body=True,
        timeout_s=1,
    )
    client.close()


def test_sample_yaml_validates() -> None:
    import yaml

    doc = yaml.safe_load((Path(connectors.influxdb.__file__).parent / "sample.yaml").read_text())
    sections = doc["sinks"]
    assert {s["kind"] for s in sections.values()} == {"influxdb"}
    configs = [
        InfluxSinkConfig(**{k: v for k, v in s.items() if k != "kind"}) for s in sections.values()
    ]
    assert [c.api for c in configs] == ["v2", "v1"]


# --- both HTTP clients against a stub server on loopback (unit level) -------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        self.server.seen.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        status, answer = self.server.answer  # type: ignore[attr-defined]
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []  # type: ignore[attr-defined]
    server.answer = (204, {})  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _stub_config(api: str, port: int, **kw: object) -> InfluxSinkConfig:
    url = f"http://127.0.0.1:{port}"
    kw = {"timeout_s": 2, **kw}
    if api == "v2":
        return InfluxSinkConfig(api="v2", url=url, org="o", bucket="b", **kw)  # type: ignore[arg-type]
    return InfluxSinkConfig(api="v1", url=url, database="d", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_clients_send_gzip_and_precision(stub, api: str) -> None:
    sink = InfluxSink(_stub_config(api, stub.server_port, precision="ms"), "stub")
    try:
        result = await sink.write(["m v=1.0 1", "m v=2.0 2"])
    finally:
        await sink.close()
    assert result.accepted == 2
    path, headers, body = stub.seen[0]
    assert body == b"m v=1.0 1\nm v=2.0 2"
    assert headers["Content-Encoding"] == "gzip"
    assert ("precision=ms" in path) and ((api == "v1") == path.startswith("/write?db=d"))


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "rejected"), (422, "rejected"), (429, True), (503, True), (401, False), (404, False)],
)
async def test_clients_classify_answers(stub, api: str, status: int, outcome: object) -> None:
    stub.answer = (status, {"code": "x", "message": f"server says {status}"})
    sink = InfluxSink(_stub_config(api, stub.server_port), "stub")
    try:
        if outcome == "rejected":
            result = await sink.write(["m v=1.0 1"])
            assert result.rejected[0].status == status
            assert f"server says {status}" in result.rejected[0].message
        else:
            with pytest.raises(ConnectorError) as info:
                await sink.write(["m v=1.0 1"])
            assert info.value.retryable is outcome
            assert f"server says {status}" in info.value.message
    finally:
        await sink.close()
    assert len(stub.seen) == 1  # never retried inside the sink or the library


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_timeout_is_retryable_and_close_waits_for_a_cancelled_write(api: str) -> None:
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as silent:
        port = silent.getsockname()[1]
        sink = InfluxSink(_stub_config(api, port, timeout_s=0.5), "silent")
        with pytest.raises(ConnectorError) as info:
            await sink.write(["m v=1.0 1"])
        assert info.value.retryable
        task = asyncio.create_task(sink.write(["m v=1.0 1"]))
        for _ in range(200):
            if sink.stats.requests == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sink.close()
        assert sink.stats.state == "stopped"


async def test_empty_batch_sends_nothing() -> None:
    fake = FakeClient()
    sink = make_sink(fake)
    result = await sink.write([])
    await sink.close()
    assert (result.accepted, result.requests, fake.bodies) == (0, 0, [])


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.data())
async def test_isolation_finds_exactly_the_bad_lines(n: int, data: st.DataObject) -> None:
    bad = data.draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=n))
    batch_size = data.draw(st.integers(min_value=1, max_value=16))
    fake = FakeClient()
    sink = make_sink(fake, batch_size=batch_size, max_isolation_requests=10_000)
    lines = [f"BAD {i}" if i in bad else f"m v={i} {i}" for i in range(n)]
    result = await sink.write(lines)
    await sink.close()
    assert result.accepted == n - len(bad)
    assert [i for r in result.rejected for i in r.indices] == sorted(bad)
    assert [x for r in result.rejected for x in r.lines] == [lines[i] for i in sorted(bad)]
    written = [x for body in fake.bodies if b"BAD" not in body for x in body.split(b"\n")]
    assert sorted(written) == sorted(x.encode() for i, x in enumerate(lines) if i not in bad)
