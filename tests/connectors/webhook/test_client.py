"""WebhookClient, signatures and config, against a real local HTTP server (stdlib, 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.base import ConnectorError
from connectors.webhook import WebhookClient, WebhookConfig, sign, verify_signature
from tests.servers import HOST, free_port

SECRET = b"s3cret"


@dataclass(frozen=True)
class Hit:
    """One request the server answered."""

    status: int
    headers: dict[str, str]
    body: bytes
    verified: bool


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and left: the broken pipe is expected here


class HookServer:
    """A webhook receiver on 127.0.0.1 in a thread: checks the HMAC, answers from ``plan``.

    ``plan`` holds the statuses of the next answers (then 200); ``hold`` makes
    the handler wait (bounded) before answering, for timeouts. ``stop`` and
    ``start`` again reuse the same port.
    """

    def __init__(self, secret: bytes | None = SECRET) -> None:
        self.secret = secret
        self.plan: list[int] = []
        self.hits: list[Hit] = []
        self.hold = threading.Event()
        self.hold.set()
        self.port = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def start(self) -> HookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.hold.wait(10)
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = owner.secret is not None and verify_signature(
                    owner.secret,
                    headers.get("x-shopspc-timestamp", ""),
                    body,
                    headers.get("x-shopspc-signature", ""),
                )
                with owner._lock:
                    status = owner.plan.pop(0) if owner.plan else 200
                    owner.hits.append(Hit(status, headers, body, verified))
                text = b"ok" if status < 300 else b"rejected: field 'x' " + b"y" * 300
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _QuietServer((HOST, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(10)
            self._server = None

    def delivered(self) -> list[bytes]:
        """Bodies answered with 2xx, in order."""
        with self._lock:
            return [h.body for h in self.hits if 200 <= h.status < 300]


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer().start()
    try:
        yield server
    finally:
        server.stop()


def cfg(url: str, **kw: object) -> WebhookConfig:
    return WebhookConfig.model_validate({"url": url, "timeout_s": 5, **kw})


def test_signature_round_trip_and_rejections() -> None:
    body = b'{"alarm_id":"A-1","event":"raised"}'
    header = sign(SECRET, 1_800_000_000, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(SECRET, "1800000000", body, header, now=1_800_000_010)
    assert verify_signature("s3cret", 1_800_000_000, body, header, now=1_800_000_000)
    assert not verify_signature(SECRET, "1800000000", body + b" ", header, now=1_800_000_000)
    assert not verify_signature(b"other", "1800000000", body, header, now=1_800_000_000)
    assert not verify_signature(SECRET, "1800000001", body, header, now=1_800_000_000)
    assert not verify_signature(SECRET, "1800000000", body, header, 300, now=1_800_000_301)
    assert not verify_signature(SECRET, "soon", body, header)


def test_config_checks() -> None:
    assert cfg("https://mes.example/hook").verify_tls
    for bad in ("ftp://x/y", "mes.example/hook", "http://", "http:///path"):
        with pytest.raises(ValueError, match="URL"):
            cfg(bad)
    with pytest.raises(ValueError, match="X-Shopspc-Signature"):
        cfg("http://x/", headers={"X-Shopspc-Signature": "forged"})
    with pytest.raises(ValueError, match="extra"):
        WebhookConfig.model_validate({"url": "http://x/", "secret": "inline"})


@pytest.mark.integration
async def test_post_is_signed_with_event_id_and_headers(hook: HookServer) -> None:
    client = WebhookClient(cfg(hook.url, headers={"X-Api-Key-Name": "line1"}), SECRET)
    try:
        assert await client.post(b'{"a":1}', event_id="A-1:raised") == 200
    finally:
        await client.close()
    (hit,) = hook.hits
    assert hit.verified and hit.body == b'{"a":1}'
    assert hit.headers["x-shopspc-event-id"] == "A-1:raised"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-api-key-name"] == "line1"
    assert json.loads(hit.body) == {"a": 1}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (408, True), (429, True), (400, False)]
)
async def test_status_translation(hook: HookServer, status: int, retryable: bool) -> None:
    hook.plan = [status]
    client = WebhookClient(cfg(hook.url))
    try:
        with pytest.raises(ConnectorError) as err:
            await client.post(b"{}", event_id="e")
    finally:
        await client.close()
    assert err.value.retryable is retryable
    assert f"HTTP {status}: rejected: field 'x' y" in err.value.message
    assert len(err.value.message) < len(f"HTTP {status}: ") + 201


@pytest.mark.integration
async def test_unsigned_without_secret(hook: HookServer) -> None:
    client = WebhookClient(cfg(hook.url))
    try:
        await client.post(b"{}", event_id="e")
    finally:
        await client.close()
    assert "x-shopspc-signature" not in hook.hits[0].headers


async def test_connection_refused_is_retryable() -> None:
    client = WebhookClient(cfg(f"http://{HOST}:{free_port()}/hook"))
    try:
        with pytest.raises(ConnectorError) as err:
            await client.post(b"{}", event_id="e")
    finally:
        await client.close()
    assert err.value.retryable


@pytest.mark.integration
async def test_timeout_is_retryable(hook: HookServer) -> None:
    hook.hold.clear()  # the handler waits until released
    client = WebhookClient(cfg(hook.url, timeout_s=0.2))
    try:
        with pytest.raises(ConnectorError) as err:
            await client.post(b"{}", event_id="e")
    finally:
        hook.hold.set()
        await client.close()
    assert err.value.retryable and "timeout" in err.value.message
