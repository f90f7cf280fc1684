"""Alarm delivery: MqttAlarmPublisher against a real mosquitto, WebhookNotifier against a real
local HTTP server. Every wait is bounded in count and time; no timing is asserted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.notify import (
    MqttAlarmPublisher,
    WebhookNotifier,
    encode_envelope,
    rfc3339_us,
    verify_signature,
)
from collector.outbox import Outbox
from connectors.base import ConnectorError
from connectors.mqtt.client import MqttLink, Outgoing
from connectors.mqtt.config import MqttPublisherConfig
from connectors.webhook.config import WebhookConfig
from tests.connectors.mqtt.test_publisher import Subscriber, subscriber
from tests.connectors.mqtt.test_secure_integration import PASSWORD, USER, make_certs
from tests.connectors.webhook.test_client import SECRET, HookServer
from tests.servers import HOST, Server, free_port, mosquitto, require_binary, run_server

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 20.0
PREFIX = "shopspc/v1"
PATH = "s/a/l/st/c"
START_US = 1_795_000_000_123_456


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    with mosquitto(tmp_path) as server:
        yield server


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as ob:
        yield ob


def alarm(i: int, event: str = "raised") -> dict[str, Any]:
    return {"schema": "shopspc.alarm/1", "alarm_id": f"A-{i}", "event": event, "seq": i}


def test_envelope_json_is_compact_utf8_with_numbers_for_numpy_and_null_for_nan() -> None:
    """Envelopes (orjson): compact, UTF-8 text as is, numpy scalars as JSON numbers, a NaN as
    null (JSON has no NaN); the payload round-trips through the publisher's decoder."""
    import numpy as np

    from collector.notify import _decode
    from collector.outbox import Entry

    payload = {"v": np.float64(1.5), "n": np.int64(3), "x": float("nan"), "text": "超出控制限"}
    body = encode_envelope(f"{PREFIX}/alarm/{PATH}", payload)
    assert b" " not in body and "超出控制限".encode() in body
    doc = json.loads(body)
    assert doc["payload"] == {"v": 1.5, "n": 3, "x": None, "text": "超出控制限"}
    env = _decode(Entry(7, "mqtt", 0.0, 0, 0.0, None, body))
    assert (env.seq, env.topic, env.qos, env.retain) == (7, f"{PREFIX}/alarm/{PATH}", 1, False)
    assert json.loads(env.body) == doc["payload"]


def append_alarms(outbox: Outbox, ids: range, stream: str = "mqtt") -> None:
    outbox.append(stream, [encode_envelope(f"{PREFIX}/alarm/{PATH}", alarm(i)) for i in ids])


def pending(outbox: Outbox, stream: str = "mqtt") -> int:
    counts = outbox.counts().streams.get(stream)
    return 0 if counts is None else counts.pending


def pub_cfg(port: int, **kw: Any) -> MqttPublisherConfig:
    return MqttPublisherConfig.model_validate(
        {
            "host": HOST,
            "port": port,
            "connect_timeout_s": 3,
            "publish_timeout_s": 3,
            "reconnect_base_s": 0.05,
            "reconnect_cap_s": 0.3,
            **kw,
        }
    )


async def until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait (bounded) until ``cond()``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(notifier: Any) -> AsyncIterator[asyncio.Event]:
    """Run ``notifier.run(stop)`` in a task; set stop and wait for it afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def publisher(port: int, outbox: Outbox, **kw: Any) -> MqttAlarmPublisher:
    on_command = kw.pop("on_command", None)
    return MqttAlarmPublisher(
        pub_cfg(port, **kw),
        outbox,
        gateway_id="gw1",
        prefix=PREFIX,
        version="0.1.0",
        start_time_us=START_US,
        on_command=on_command,
    )


async def status_of(port: int) -> dict[str, Any]:
    """The retained gateway status a late subscriber gets."""
    with subscriber(port, f"{PREFIX}/gateway/gw1/status") as late:
        msg = await late.get()
    assert msg.retain
    return json.loads(msg.payload)


# -- MQTT -------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_publishes_envelopes_in_order_with_status_and_retained_state(
    broker: Server, outbox: Outbox
) -> None:
    append_alarms(outbox, range(3))
    outbox.append(
        "mqtt",
        [encode_envelope(f"{PREFIX}/state/{PATH}", {"state": "out_of_control"}, retain=True)],
    )
    pub = publisher(broker.port, outbox)
    with subscriber(broker.port, f"{PREFIX}/#") as sub:
        async with running(pub):
            status = json.loads((await sub.get()).payload)
            got = [await sub.get() for _ in range(4)]
            append_alarms(outbox, range(3, 5))
            pub.notify()
            got += [await sub.get() for _ in range(2)]
            await until(lambda: pub.stats.pending == 0 and pub.stats.published == 6, "all acked")
            state = await status_of(broker.port)
    assert status["status"] == "online" and state["status"] == "online"
    assert status["schema"] == "shopspc.gateway/1" and status["gateway_id"] == "gw1"
    assert status["version"] == "0.1.0" and status["start_time"] == rfc3339_us(START_US)
    assert status["start_time"] == "2026-11-18T11:06:40.123456Z"
    alarms = [m for m in got if "/alarm/" in m.topic]
    assert [json.loads(m.payload)["alarm_id"] for m in alarms] == [f"A-{i}" for i in range(5)]
    assert alarms[0].payload == json.dumps(alarm(0), separators=(",", ":")).encode()
    assert all(m.qos == 1 and m.content_type == "application/json" for m in got)
    assert pending(outbox) == 0
    assert pub.stats.last_latency_s is not None and pub.stats.state == "stopped"
    with subscriber(broker.port, f"{PREFIX}/state/#") as late:
        retained = await late.get()
    assert retained.retain and json.loads(retained.payload) == {"state": "out_of_control"}


@pytest.mark.integration
async def test_notify_in_the_loop_publishes_at_once_and_rounds_overlap(
    broker: Server, outbox: Outbox
) -> None:
    """An alarm committed in the loop is handed to the broker inside notify() itself; later
    rounds go out while earlier ones wait for their PUBACKs, and arrive in seq order."""
    pub = publisher(broker.port, outbox, batch_size=1)
    drainer = pub._drainer
    most = 0
    send = drainer._send

    def counting(entries: Any, before: Any) -> Any:
        nonlocal most
        task = send(entries, before)
        most = max(most, len(drainer._flight) + 1)
        return task

    drainer._send = counting  # type: ignore[method-assign]
    with subscriber(broker.port, f"{PREFIX}/alarm/#") as sub:
        async with running(pub):
            await until(lambda: pub.stats.state == "connected", "connected")
            await until(lambda: not drainer._flight, "idle")
            append_alarms(outbox, range(1))
            pub.notify()
            assert len(drainer._flight) == 1  # sent before notify() returned
            append_alarms(outbox, range(1, 40))
            pub.notify()
            got = [json.loads((await sub.get()).payload)["alarm_id"] for _ in range(40)]
            await until(lambda: pending(outbox) == 0, "all acked")
    assert got == [f"A-{i}" for i in range(40)]
    assert most > 1  # rounds in flight together (batch_size 1: one entry each)
    assert pub.stats.published == 40


@pytest.mark.integration
async def test_graceful_stop_publishes_offline_retained(broker: Server, outbox: Outbox) -> None:
    pub = publisher(broker.port, outbox)
    async with running(pub):
        await until(lambda: pub.stats.state == "connected", "connected")
    status = await status_of(broker.port)
    assert status["status"] == "offline" and status["gateway_id"] == "gw1"


_CHILD = """
import asyncio, sys
from collector.notify import MqttAlarmPublisher
from collector.outbox import Outbox
from connectors.mqtt.config import MqttPublisherConfig

async def main():
    cfg = MqttPublisherConfig(host="127.0.0.1", port=int(sys.argv[1]), keepalive_s=2)
    with Outbox(sys.argv[2]) as ob:
        pub = MqttAlarmPublisher(cfg, ob, gateway_id="gw1", version="0.1.0", start_time_us=0)
        await pub.run(asyncio.Event())

asyncio.run(main())
"""


@pytest.mark.integration
async def test_killed_gateway_leaves_offline_will(broker: Server, tmp_path: Path) -> None:
    with subscriber(broker.port, f"{PREFIX}/gateway/gw1/status") as sub:
        with (tmp_path / "child.log").open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(broker.port), str(tmp_path / "child.db")],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            online = json.loads((await sub.get()).payload)
            assert online["status"] == "online"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(WAIT_S)
        will = await sub.get()
    assert json.loads(will.payload)["status"] == "offline"
    assert (await status_of(broker.port))["status"] == "offline"


@pytest.mark.integration
async def test_broker_down_then_back_delivers_all_in_order(
    broker: Server, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collector.notify")
    pub = publisher(broker.port, outbox)
    sub = Subscriber(broker.port, f"{PREFIX}/alarm/#", client_id="mes-1", persistent=True)
    try:
        async with running(pub):
            await until(lambda: pub.stats.state == "connected", "connected")
            broker.stop()
            await until(lambda: pub.stats.state == "disconnected", "loss noticed")
            append_alarms(outbox, range(50))
            pub.notify()
            assert pending(outbox) == 50
            await asyncio.to_thread(broker.restart)
            ids = [json.loads((await sub.get()).payload)["seq"] for _ in range(50)]
            await until(lambda: pending(outbox) == 0, "outbox drained")
    finally:
        sub.close()
    # At least once: a duplicate could appear after a reconnect; first sightings are in order.
    assert list(dict.fromkeys(ids)) == list(range(50))
    assert pub.stats.reconnects >= 1
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    regained = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(lost) == 1 and len(regained) == 1


@pytest.mark.integration
async def test_nothing_acked_before_puback(broker: Server, outbox: Outbox) -> None:
    pub = publisher(broker.port, outbox, publish_timeout_s=1, connect_timeout_s=1)
    async with running(pub):
        await until(lambda: pub.stats.state == "connected", "connected")
        os.kill(broker.pid, signal.SIGSTOP)  # frozen: accepts bytes, never answers
        try:
            append_alarms(outbox, range(10))
            pub.notify()
            await until(lambda: pub.stats.errors >= 1, "PUBACK timeout noticed")
            assert pending(outbox) == 10
        finally:
            broker.stop(signal.SIGKILL)  # in flight: the broker dies with them
        assert pending(outbox) == 10
        await asyncio.to_thread(broker.restart)
        await until(lambda: pending(outbox) == 0, "outbox drained after restart")
    assert pub.stats.published >= 10


@pytest.mark.integration
async def test_commands_reach_on_command_and_bad_ones_are_counted(
    broker: Server, outbox: Outbox
) -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []

    def on_command(path: str, payload: dict[str, Any], verb: str) -> None:
        if payload.get("alarm_id") == "BOOM":
            raise RuntimeError("handler bug")
        seen.append((path, payload, verb))

    pub = publisher(broker.port, outbox, on_command=on_command)
    async with running(pub):
        await until(lambda: pub.stats.state == "connected", "connected")
        tester = MqttLink(pub_cfg(broker.port), "mes-tester")
        await tester.connect()
        try:
            cmd = f"{PREFIX}/cmd/{PATH}"
            topic = f"{cmd}/ack"
            await tester.publish_many(
                [
                    Outgoing(topic, b"not json", 1, False),
                    Outgoing(topic, b"[1, 2]", 1, False),
                    Outgoing(topic, b'{"user": "li"}', 1, False),
                    Outgoing(f"{cmd}/shelve", b'{"user": "li", "minutes": 5}', 1, False),
                    Outgoing(topic, b'{"alarm_id": "BOOM"}', 1, False),
                    Outgoing(topic, b'{"alarm_id": "A-1", "user": "li", "comment": "x"}', 1, False),
                    Outgoing(f"{cmd}/shelve", b'{"alarm_id": "A-1", "minutes": 5}', 1, False),
                    # service names a characteristic, not an alarm: no alarm_id needed
                    Outgoing(f"{cmd}/service", b'{"in_service": false, "user": "li"}', 1, False),
                ]
            )
        finally:
            await tester.close()
        await until(lambda: len(seen) == 3, "commands received")
    assert seen == [
        (PATH, {"alarm_id": "A-1", "user": "li", "comment": "x"}, "ack"),
        (PATH, {"alarm_id": "A-1", "minutes": 5}, "shelve"),
        (PATH, {"in_service": False, "user": "li"}, "service"),
    ]
    assert (pub.stats.commands, pub.stats.bad_commands, pub.stats.command_errors) == (4, 4, 1)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Server]:
    """mosquitto that lets anonymous clients publish and subscribe below ``shopspc/`` only."""
    binary = require_binary("mosquitto")
    port = free_port()
    (tmp_path / "acl").write_text("topic readwrite shopspc/#\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\nacl_file {tmp_path}/acl\n"
        "log_dest stdout\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    with run_server([binary, "-c", str(conf)], port, tmp_path) as server:
        yield server


@pytest.mark.integration
async def test_refused_and_unreadable_entries_are_dead_lettered(
    acl_broker: Server, outbox: Outbox
) -> None:
    append_alarms(outbox, range(1))
    outbox.append("mqtt", [encode_envelope("forbidden/x", alarm(1)), b"{not json"])
    append_alarms(outbox, range(2, 3))
    pub = publisher(acl_broker.port, outbox)
    async with running(pub):
        await until(lambda: pending(outbox) == 0, "drained")
    dead = outbox.dead_letters("mqtt")
    assert len(dead) == 2
    assert "Not authorized" in dead[0].reason and "forbidden/x" not in dead[1].reason
    assert "not JSON" in dead[1].reason
    assert (pub.stats.published, pub.stats.dead_lettered) == (2, 2)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """mosquitto with TLS (our own CA) and a password file; yields the server and the CA file."""
    binary = require_binary("mosquitto")
    passwd = require_binary("mosquitto_passwd")
    ca, cert, key = make_certs(tmp_path)
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), USER, PASSWORD], check=True, timeout=30)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nallow_anonymous false\npassword_file {pwfile}\n"
        f"listener {port} {HOST}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        "log_dest stdout\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    with run_server([binary, "-c", str(conf)], port, tmp_path) as server:
        yield server, ca


@pytest.mark.integration
async def test_tls_and_password_from_the_environment(
    tls_broker: tuple[Server, Path], outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_broker
    monkeypatch.setenv("SHOPSPC_TEST_PUB_PW", PASSWORD)
    secure = {"username": USER, "password_env": "SHOPSPC_TEST_PUB_PW", "tls": {"ca_file": ca}}
    append_alarms(outbox, range(3))
    pub = publisher(server.port, outbox, **secure)
    async with running(pub):
        await until(lambda: pending(outbox) == 0, "drained over TLS")
    assert pub.stats.published == 3

    monkeypatch.setenv("SHOPSPC_TEST_PUB_PW", "wrong")
    with pytest.raises(ConnectorError) as err:
        await asyncio.wait_for(publisher(server.port, outbox, **secure).run(asyncio.Event()), 20)
    assert not err.value.retryable and "refused" in err.value.message


# -- webhook ----------------------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHOPSPC_TEST_HOOK_SECRET", SECRET.decode())
    return "SHOPSPC_TEST_HOOK_SECRET"


def hook_cfg(url: str, secret_env: str) -> WebhookConfig:
    return WebhookConfig(
        url=url, secret_env=secret_env, timeout_s=3, retry_base_s=0.05, retry_cap_s=0.3
    )


def bodies(ids: range) -> list[bytes]:
    return [json.dumps(alarm(i), separators=(",", ":")).encode() for i in ids]


@pytest.mark.integration
async def test_webhook_retries_500_and_delivers_once_in_order(
    hook: HookServer, outbox: Outbox, secret_env: str
) -> None:
    hook.plan = [500]
    append_alarms(outbox, range(5), "webhook")
    notifier = WebhookNotifier(hook_cfg(hook.url, secret_env), outbox)
    async with running(notifier):
        await until(lambda: pending(outbox, "webhook") == 0, "drained")
    assert hook.delivered() == bodies(range(5))
    assert len(hook.hits) == 6 and all(h.verified for h in hook.hits)
    assert hook.hits[0].headers["x-shopspc-event-id"] == "A-0:raised"
    assert (notifier.stats.published, notifier.stats.errors) == (5, 1)
    body, ts, sig = hook.hits[1].body, hook.hits[1].headers["x-shopspc-timestamp"], None
    sig = hook.hits[1].headers["x-shopspc-signature"]
    assert verify_signature(SECRET, ts, body, sig)


@pytest.mark.integration
async def test_webhook_400_is_dead_lettered_and_the_rest_delivered(
    hook: HookServer, outbox: Outbox, secret_env: str
) -> None:
    hook.plan = [200, 400]
    append_alarms(outbox, range(3), "webhook")
    notifier = WebhookNotifier(hook_cfg(hook.url, secret_env), outbox)
    async with running(notifier):
        await until(lambda: pending(outbox, "webhook") == 0, "drained")
    assert hook.delivered() == [bodies(range(3))[0], bodies(range(3))[2]]
    (dead,) = outbox.dead_letters("webhook")
    assert json.loads(dead.payload)["payload"]["alarm_id"] == "A-1"
    assert "HTTP 400" in dead.reason and "rejected" in dead.reason


@pytest.mark.integration
async def test_webhook_server_down_keeps_entries_until_it_is_up(
    hook: HookServer, outbox: Outbox, secret_env: str
) -> None:
    hook.stop()
    # Bare payloads, as collector.alarms appends them to the webhook stream.
    outbox.append("webhook", [json.dumps(alarm(i), indent=1).encode() for i in range(4)])
    notifier = WebhookNotifier(hook_cfg(hook.url, secret_env), outbox)
    async with running(notifier):
        await until(lambda: notifier.stats.errors >= 2, "retried while down")
        assert pending(outbox, "webhook") == 4
        hook.start()  # the same port
        await until(lambda: pending(outbox, "webhook") == 0, "drained after start")
    assert hook.delivered() == bodies(range(4))
    assert notifier.stats.reconnects == 1


async def test_webhook_without_its_secret_variable_stops_with_an_error(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOPSPC_TEST_MISSING", raising=False)
    notifier = WebhookNotifier(
        WebhookConfig(url="http://127.0.0.1:9/x", secret_env="SHOPSPC_TEST_MISSING"), outbox
    )
    with pytest.raises(Exception, match="SHOPSPC_TEST_MISSING"):
        await notifier.run(asyncio.Event())


# -- pure helpers -----------------------------------------------------------------------------


def test_rfc3339_us_and_envelope_round_trip() -> None:
    from collector.notify import _decode
    from collector.outbox import Entry

    assert rfc3339_us(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339_us(1_000_001) == "1970-01-01T00:00:01.000001Z"
    raw = encode_envelope("a/b", {"k": "é"}, retain=True)
    env = _decode(Entry(7, "mqtt", 0.0, 0, 0.0, None, raw))
    assert (env.seq, env.topic, env.qos, env.retain) == (7, "a/b", 1, True)
    assert env.body == '{"k":"é"}'.encode()
    bad = [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"topic":"a/+","qos":1,"retain":false,"payload":{}}', "topic"),
        (b'{"topic":"a","qos":3,"retain":false,"payload":{}}', "qos"),
        (b'{"topic":"a","qos":true,"retain":false,"payload":{}}', "qos"),
        (b'{"topic":"a","qos":1,"retain":"no","payload":{}}', "retain"),
        (b'{"topic":"a","qos":1,"retain":false,"payload":[1]}', "payload"),
    ]
    for payload, what in bad:
        with pytest.raises(ValueError, match=what):
            _decode(Entry(1, "mqtt", 0.0, 0, 0.0, None, payload))
