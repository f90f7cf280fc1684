"""TLS and user/password against a real Debian mosquitto with a TLS listener and a password file.

The broker is started with tests.servers.run_server (the plain ``mosquitto``
fixture has neither TLS nor auth); certificates are made with ``cryptography``
and the password file with the Debian ``mosquitto_passwd``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from connectors.base import ConnectorError
from connectors.mqtt.config import MqttSourceConfig
from connectors.mqtt.source import MqttSource
from tests.connectors.mqtt.test_source_integration import Collector, running, until
from tests.servers import HOST, Server, cancel_and_wait, free_port, require_binary, run_server

pytestmark = pytest.mark.integration

USER, PASSWORD = "gw", "s3cret-pw"
PW_ENV = "SHOPSPC_TEST_MQTT_PW"


@dataclass
class SecureBroker:
    server: Server
    ca_file: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pem(path: Path, obj: Any) -> None:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shopspc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    _write_pem(paths[0], ca)
    _write_pem(paths[1], cert)
    _write_pem(paths[2], key)
    return paths


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
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
        # as root mosquitto would drop to a user that cannot read the 0700 temp dir
    )
    with run_server([binary, "-c", str(conf)], port, tmp_path) as server:
        yield SecureBroker(server, ca)


def secure_config(b: SecureBroker, **kw: Any) -> MqttSourceConfig:
    body: dict[str, Any] = {
        "host": HOST,
        "port": b.server.port,
        "client_id": f"gw-{uuid.uuid4().hex[:8]}",
        "username": USER,
        "password_env": PW_ENV,
        "tls": {"ca_file": str(b.ca_file)},
        "connect_timeout_s": 5,
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 0.5,
        "subscriptions": [{"topic": "s/+", "binding": "{1}", "value_path": "v"}],
    }
    body.update(kw)
    return MqttSourceConfig.model_validate(body)


def publish_tls(b: SecureBroker, topic: str, payload: bytes) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.tls_set(ca_certs=str(b.ca_file), cert_reqs=ssl.CERT_REQUIRED)
    c.username_pw_set(USER, PASSWORD)
    try:
        c.connect(HOST, b.server.port)
        c.loop_start()
        deadline = time.monotonic() + 20
        while not c.is_connected():
            assert time.monotonic() < deadline, "publisher could not connect"
            time.sleep(0.01)
        c.publish(topic, payload, qos=1).wait_for_publish(timeout=20)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_tls_with_password_receives(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    monkeypatch.setenv(PW_ENV, PASSWORD)
    source = MqttSource(secure_config(secure_broker, protocol=protocol), "tls")
    got = Collector()
    async with running(source, got):
        await asyncio.to_thread(
            publish_tls, secure_broker, "s/bore", json.dumps({"v": 3.5}).encode()
        )
        await got.wait(lambda: len(got.samples) == 1)
    (s,) = got.samples
    assert (s.binding, s.value) == ("bore", 3.5)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_bad_password_is_not_retryable(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    monkeypatch.setenv(PW_ENV, "wrong")
    source = MqttSource(secure_config(secure_broker, protocol=protocol), "badpw")
    with pytest.raises(ConnectorError) as e:
        async with asyncio.timeout(20):
            await source.run(Collector())
    assert not e.value.retryable
    assert "refused" in e.value.message
    assert source.stats.state == "stopped"


async def test_untrusted_certificate_is_not_retryable(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PW_ENV, PASSWORD)
    cfg = secure_config(secure_broker, tls={})  # system trust store: our test CA is not in it
    with pytest.raises(ConnectorError, match="TLS") as e:
        async with asyncio.timeout(20):
            await MqttSource(cfg, "untrusted").run(Collector())
    assert not e.value.retryable


async def test_insecure_tls_connects_without_the_ca(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PW_ENV, PASSWORD)
    source = MqttSource(secure_config(secure_broker, tls={"insecure": True}), "insecure")
    async with running(source, Collector()):
        assert source.stats.state == "connected"


async def test_missing_ca_file_is_not_retryable(tmp_path: Path) -> None:
    cfg = MqttSourceConfig.model_validate(
        {
            "host": HOST,
            "port": free_port(),
            "client_id": "gw-ca",
            "tls": {"ca_file": str(tmp_path / "nope.pem")},
            "subscriptions": [{"topic": "x", "binding": "x", "value_path": "v"}],
        }
    )
    with pytest.raises(ConnectorError, match="TLS setup") as e:
        await MqttSource(cfg, "noca").run(Collector())
    assert not e.value.retryable


async def test_plain_tcp_to_a_tls_listener_is_retried(secure_broker: SecureBroker) -> None:
    cfg = secure_config(secure_broker, tls=None, username=None, password_env=None)
    source = MqttSource(cfg, "plain")
    task = asyncio.create_task(source.run(Collector()))
    try:
        await until(lambda: source.stats.errors >= 2 or task.done())
        assert not task.done()
        assert source.stats.state == "disconnected"
    finally:
        await cancel_and_wait(task)
