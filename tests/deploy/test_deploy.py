"""deploy/: Dockerfile, compose file, broker config, systemd unit, installer, health check.

No Docker daemon is needed: the files are parsed and checked for what the deployment
promises (non-root, hardening, no secret in a file, configs the real loader accepts).
``systemd-analyze verify`` and ``shellcheck`` run when installed (they are tools, not
servers: absent, those two tests skip). The broker config and ACL run in a real Debian
mosquitto on a loopback port.
"""

from __future__ import annotations

import configparser
import contextlib
import http.server
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from collector.config import load_config
from tests.servers import HOST, free_port, require_binary, run_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "shopspc.service"
INSTALL = DEPLOY / "systemd" / "install.sh"
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{([A-Z][A-Z0-9_]*):\?[^}]+\}$")
# README "Benchmarks": the allocator settings the engine wants (benchmarks/bench_engine.py).
MALLOC = {
    "MALLOC_TOP_PAD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
}


def _load_healthcheck() -> ModuleType:
    # deploy/ is no package: the image copies the file alone, so load it by path
    spec = importlib.util.spec_from_file_location("shopspc_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


healthcheck = _load_healthcheck()


# ---- compose ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def _env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_has_the_three_services(compose: dict[str, Any]) -> None:
    """mosquitto 2, InfluxDB 2.7 and the gateway built from this repository."""
    services = compose["services"]
    assert set(services) == {"mosquitto", "influxdb", "shopspc"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["influxdb"]["image"].startswith("influxdb:2.7")
    build = services["shopspc"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert "./mosquitto:/mosquitto/config:ro" in services["mosquitto"]["volumes"]
    assert "./shopspc.compose.yaml:/etc/shopspc/shopspc.yaml:ro" in services["shopspc"]["volumes"]


def test_compose_gateway_is_hardened(compose: dict[str, Any]) -> None:
    """Read-only root, tmpfs /tmp, no capabilities, no privilege gain, restarts, waits for health."""
    gw = compose["services"]["shopspc"]
    assert gw["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in gw["tmpfs"])
    assert gw["cap_drop"] == ["ALL"]
    assert "cap_add" not in gw
    assert "no-new-privileges:true" in gw["security_opt"]
    assert "privileged" not in gw
    assert gw["restart"] == "unless-stopped"
    assert gw["init"] is True
    assert any(v.endswith(":/var/lib/shopspc") for v in gw["volumes"])
    assert "8470:8470" in gw["ports"]
    for dep in ("mosquitto", "influxdb"):
        assert gw["depends_on"][dep]["condition"] == "service_healthy"
        assert compose["services"][dep]["healthcheck"]["test"]
        assert compose["services"][dep]["restart"] == "unless-stopped"
        assert "no-new-privileges:true" in compose["services"][dep]["security_opt"]


def test_compose_stop_grace_outlasts_the_drain_deadline(compose: dict[str, Any]) -> None:
    """Docker's SIGKILL comes after `shopspc run` had its drain deadline to flush the outbox."""
    grace = compose["services"]["shopspc"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace)
    assert int(grace[:-1]) > _drain_deadline_default() + 5


def _drain_deadline_default() -> float:
    from collector.cli import run

    return float(inspect.signature(run).parameters["drain_deadline"].default)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_compose_commits_no_secret(compose: dict[str, Any]) -> None:
    """Every password or token is `${VAR:?…}` from .env, so compose refuses to start without it."""
    secret_refs = set()
    for name, service in compose["services"].items():
        for key, value in _env_of(service).items():
            if SECRET_KEY.search(key):
                m = REQUIRED_REF.match(value)
                assert m, f"{name}.environment.{key} = {value!r}: not a ${{VAR:?...}} reference"
                secret_refs.add(m.group(1))
    assert secret_refs >= {"INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_ADMIN_TOKEN"}
    for path, value in _walk(compose):
        if isinstance(value, str) and "${" in value:
            assert REQUIRED_REF.match(value), f"{path} = {value!r}: use ${{VAR:?message}}"


def test_env_example_names_every_variable_and_fills_none(compose: dict[str, Any]) -> None:
    """env.example lists exactly the variables compose needs, every value empty."""
    used = {
        REQUIRED_REF.match(v).group(1)
        for _, v in _walk(compose)
        if isinstance(v, str) and REQUIRED_REF.match(v)
    }
    example = {}
    for line in (DEPLOY / "env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert set(example) == used
    assert all(v == "" for v in example.values()), example
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert "mosquitto/passwd" in ignored


def test_compose_gateway_config_passes_the_loader(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/shopspc.compose.yaml loads; its secrets are env names that compose sets."""
    gw_env = _env_of(compose["services"]["shopspc"])
    for key in gw_env:
        monkeypatch.setenv(key, "x")
    cfg, connectors = load_config(DEPLOY / "shopspc.compose.yaml")
    assert cfg.gateway.data_dir == "/var/lib/shopspc"
    assert cfg.gateway.http.endswith(":8470")
    names = _env_names(connectors)
    assert names, "the compose config should take its secrets from the environment"
    assert names <= set(gw_env), f"{names - set(gw_env)} are not set by compose.yaml"

    mqtt = next(c for c in connectors.values() if type(c).__name__ == "MqttSourceConfig")
    assert (mqtt.host, mqtt.port) == ("mosquitto", 1883)
    influx = next(c for c in connectors.values() if type(c).__name__ == "InfluxSinkConfig")
    assert influx.url == "http://influxdb:8086"
    init = _env_of(compose["services"]["influxdb"])
    assert (influx.org, influx.bucket) == (
        init["DOCKER_INFLUXDB_INIT_ORG"],
        init["DOCKER_INFLUXDB_INIT_BUCKET"],
    )


def _env_names(connectors: dict[str, BaseModel]) -> set[str]:
    """Every ``*_env`` value in the connector sections: the variables holding secrets."""
    return {
        value
        for model in connectors.values()
        for path, value in _walk(model.model_dump())
        if path.rsplit(".", 1)[-1].endswith("_env") and value is not None
    }


def test_systemd_example_config_passes_the_loader() -> None:
    """The config install.sh copies to /etc/shopspc loads and keeps state in the StateDirectory."""
    cfg, connectors = load_config(DEPLOY / "systemd" / "shopspc.example.yaml")
    assert cfg.gateway.data_dir == "/var/lib/shopspc"
    assert _env_names(connectors) == {"SHOPSPC_MQTT_PASSWORD"}


# ---- Dockerfile ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = logical.partition(" ")
            out.append((word.upper(), rest.strip()))
            logical = ""
    return out


def _final_stage(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(dockerfile) if word == "FROM"]
    assert len(starts) >= 2, "multi-stage: a builder and a runtime stage"
    return dockerfile[starts[-1] :]


def test_dockerfile_final_stage_is_slim_and_non_root(dockerfile: list[tuple[str, str]]) -> None:
    """The runtime stage is python:3.11-slim, runs as a fixed non-root uid, installs wheels only."""
    args = dict(a.split("=", 1) for w, a in dockerfile if w == "ARG" and "=" in a)
    final = _final_stage(dockerfile)
    image = final[0][1].split()[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
    assert image.startswith("python:3.11-slim"), image
    users = [a for w, a in final if w == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    uid = args.get("SHOPSPC_UID")
    assert uid is not None and int(uid) >= 10000
    runs = " ".join(a for w, a in final if w == "RUN")
    assert f'--uid "${{SHOPSPC_UID}}" --gid {user}' in runs or f"--uid {uid}" in runs
    assert "pip install --no-index" in runs, "the runtime stage installs only the built wheels"
    assert "pip wheel" in " ".join(a for w, a in dockerfile[: len(dockerfile) - len(final)])


def test_dockerfile_runtime_settings(dockerfile: list[tuple[str, str]]) -> None:
    """Entrypoint, command, data volume, port, health check and environment."""
    final = dict(_final_stage(dockerfile)[1:])
    assert final["ENTRYPOINT"] == '["shopspc"]'
    assert final["CMD"] == '["run", "--config", "/etc/shopspc/shopspc.yaml"]'
    assert final["WORKDIR"] == "/var/lib/shopspc"
    assert "/var/lib/shopspc" in final["VOLUME"]
    assert final["EXPOSE"] == "8470"
    assert "healthcheck.py" in final["HEALTHCHECK"]
    env = dict(re.findall(r"(\w+)=(\S+)", final["ENV"]))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    for key, value in MALLOC.items():
        assert env[key] == value, key


def test_malloc_settings_match_the_benchmarks() -> None:
    """The values deploy/ sets are the ones the engine benchmarks measured with."""
    from benchmarks.bench_engine import MALLOC_ENV

    assert MALLOC_ENV == MALLOC


def test_dockerignore_keeps_out_state_and_secrets_but_not_the_sources(
    dockerfile: list[tuple[str, str]],
) -> None:
    """Everything COPY needs is in the build context; .venv, var/, .git and secrets are not."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", "deploy/.env", "deploy/mosquitto/passwd"} <= ignored
    for word, arg in dockerfile:
        if word == "COPY" and "--from" not in arg:
            sources = [s for s in arg.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), src
                assert not any(src == i or src.startswith(i + "/") for i in ignored), src


# ---- systemd ------------------------------------------------------------------------------------


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit as section → key → every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{line!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_parses_with_configparser() -> None:
    """The unit is plain INI (repeated keys allowed)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    assert parser["Install"]["WantedBy"] == "multi-user.target"


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "no",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "UMask": "0027",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_unit_hardening(key: str, value: str) -> None:
    """Each hardening option the deployment promises is set."""
    assert _unit()["Service"].get(key) == [value]


def test_unit_service_settings() -> None:
    """How the gateway is started, stopped, restarted and given its config, state and secrets."""
    svc = _unit()["Service"]
    one = {k: v[0] for k, v in svc.items()}
    shopspc = "/opt/shopspc/.venv/bin/shopspc"
    assert one["Type"] == "exec"
    assert one["User"] == "shopspc"
    assert one["ExecStart"] == f"{shopspc} run --config /etc/shopspc/shopspc.yaml"
    assert one["ExecStartPre"] == f"{shopspc} check-config /etc/shopspc/shopspc.yaml"
    assert one["Restart"] == "on-failure"
    assert "RestartSec" in one
    assert one["KillSignal"] == "SIGTERM"
    assert int(one["TimeoutStopSec"].rstrip("s")) > _drain_deadline_default() + 5
    assert one["StateDirectory"] == "shopspc"
    assert one["ConfigurationDirectory"] == "shopspc"
    assert one["EnvironmentFile"] == "-/etc/shopspc/shopspc.env"
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert int(one["LimitNOFILE"]) >= 4096
    assert "dialout" in one["SupplementaryGroups"].split()
    assert any(d.startswith("char-ttyUSB") for d in svc["DeviceAllow"])
    env = dict(e.split("=", 1) for e in svc["Environment"])
    for key, value in MALLOC.items():
        assert env[key] == value, key


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing (the venv path points at this checkout's shopspc)."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (a tool, not a server)")
    here = shutil.which("shopspc", path=str(Path(sys.executable).parent))
    assert here is not None, "the project is installed editable in this venv"
    unit = tmp_path / "shopspc.service"
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/shopspc/.venv/bin/shopspc", here),
        encoding="utf-8",
    )
    done = subprocess.run(
        [binary, "verify", str(unit)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


# ---- install.sh ---------------------------------------------------------------------------------


def test_install_script_syntax() -> None:
    """bash -n: the installer parses."""
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    assert INSTALL.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in INSTALL.read_text(encoding="utf-8")
    assert os.access(INSTALL, os.X_OK)


def test_install_script_does_nothing_when_sourced_or_asked_for_help(tmp_path: Path) -> None:
    """Sourcing only defines functions; --help prints usage and touches nothing."""
    env = {**os.environ, "SHOPSPC_PREFIX": str(tmp_path / "opt")}
    sourced = subprocess.run(
        ["bash", "-c", f"source {INSTALL} && declare -F main install_code install_unit"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert sourced.stdout.split() == ["main", "install_code", "install_unit"]
    helped = subprocess.run(
        ["bash", str(INSTALL), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert "usage:" in helped.stdout
    assert list(tmp_path.iterdir()) == []


def test_shellcheck_install_script() -> None:
    """shellcheck finds nothing in the installer."""
    binary = shutil.which("shellcheck")
    if binary is None:
        pytest.skip("shellcheck is not installed (a linter, not a server)")
    done = subprocess.run(
        [binary, "-x", str(INSTALL)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- healthcheck.py -----------------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _http_server(status: int) -> Iterator[str]:
    server = http.server.HTTPServer((HOST, 0), _Health)
    server.status = status  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _fake_proc(root: Path, processes: dict[int, list[str]]) -> Path:
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)
    return root


GATEWAY_ARGV = ["/usr/local/bin/python3.11", "/usr/local/bin/shopspc", "run", "--config", "x"]


def test_health_http_answers() -> None:
    """2xx is healthy, anything else is not, nothing listening is 'no answer' (None)."""
    with _http_server(200) as url:
        assert healthcheck.check_http(url).ok
        assert healthcheck.check("http", url).ok
    with _http_server(503) as url:
        result = healthcheck.check("auto", url)
        assert not result.ok
        assert "503" in result.reason
    refused = f"http://{HOST}:{free_port()}/healthz"
    assert healthcheck.check_http(refused) is None
    assert not healthcheck.check("http", refused).ok


def test_health_process_fallback(tmp_path: Path) -> None:
    """Without an HTTP API, auto is healthy while a `shopspc run` process is alive."""
    refused = f"http://{HOST}:{free_port()}/healthz"
    alive = _fake_proc(
        tmp_path / "a", {1: ["docker-init", "--", *GATEWAY_ARGV[1:]], 7: GATEWAY_ARGV}
    )
    assert healthcheck.find_gateway(alive) in (1, 7)  # docker-init runs it, or it is PID 1
    assert healthcheck.check("auto", refused, alive).ok
    assert healthcheck.check("process", refused, alive).ok
    others = {1: ["docker-init", "--", "sleep", "1"], 9: ["/usr/local/bin/shopspc", "check-config"]}
    dead = _fake_proc(tmp_path / "d", others)
    assert healthcheck.find_gateway(dead) is None
    assert not healthcheck.check("auto", refused, dead).ok
    assert not healthcheck.check("bogus", refused, alive).ok


def test_health_script_runs_standalone(tmp_path: Path) -> None:
    """As the image runs it: exit 1 and a reason when no gateway runs (here, none does)."""
    env = {
        **os.environ,
        "SHOPSPC_HEALTHCHECK": "http",
        "SHOPSPC_HEALTH_URL": f"http://{HOST}:{free_port()}/healthz",
    }
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    assert "connection refused" in done.stdout


# ---- the broker config and ACL in a real mosquitto ----------------------------------------------

USERS = {"shopspc": "gw-pw", "mes": "mes-pw", "viewer": "viewer-pw", "station": "station-pw"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Debian mosquitto on deploy/mosquitto/mosquitto.conf + acl, moved to a loopback port."""
    binary = require_binary("mosquitto")
    passwd_tool = require_binary("mosquitto_passwd")
    tmp = tmp_path_factory.mktemp("mosquitto")
    (tmp / "data").mkdir()
    port = free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    assert re.search(r"^listener 1883$", conf, re.M)
    conf = re.sub(r"^listener 1883$", f"listener {port} {HOST}", conf, flags=re.M)
    conf = conf.replace("/mosquitto/config/", f"{tmp}/").replace("/mosquitto/data/", f"{tmp}/data/")
    # as root, mosquitto would drop to its own user, which cannot read pytest's 0700 temp dir
    conf += "user root\n" if os.geteuid() == 0 else ""
    (tmp / "mosquitto.conf").write_text(conf, encoding="utf-8")
    shutil.copy(DEPLOY / "mosquitto" / "acl", tmp / "acl")
    (tmp / "passwd").touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run(
            [passwd_tool, "-b", str(tmp / "passwd"), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    with run_server([binary, "-c", str(tmp / "mosquitto.conf")], port, tmp):
        yield port


class _Client:
    """A paho client on a thread for one test step; every wait is bounded."""

    def __init__(self, port: int, user: str | None, password: str | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason: Any = None
        self.granted: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.got = threading.Event()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        if user is not None:
            self.c.username_pw_set(user, password if password is not None else USERS[user])
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect(HOST, port)
        self.c.loop_start()
        assert self.connected.wait(15), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.granted = list(codes)
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.append((msg.topic, msg.payload))
        self.got.set()

    def subscribe(self, topic: str) -> list[Any]:
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(15), "no SUBACK"
        return self.granted

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(timeout=15)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextlib.contextmanager
def _client(port: int, user: str | None, password: str | None = None) -> Iterator[_Client]:
    client = _Client(port, user, password)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.integration
def test_broker_refuses_anonymous_and_wrong_passwords(broker: int) -> None:
    """allow_anonymous false and the password file are in force."""
    with _client(broker, None) as anonymous:
        assert anonymous.reason.is_failure
    with _client(broker, "mes", "wrong") as wrong:
        assert wrong.reason.is_failure
    with _client(broker, "mes") as mes:
        assert not mes.reason.is_failure


@pytest.mark.integration
def test_only_mes_users_may_send_commands(broker: int) -> None:
    """A station's or a viewer's forged acknowledgement never reaches the gateway; MES's does."""
    topic = "shopspc/v1/cmd/plant1/assembly/line1/vision-1/width/ack"
    with _client(broker, "shopspc") as gateway:
        assert not gateway.subscribe("shopspc/v1/cmd/#")[0].is_failure
        for user in ("station", "viewer", "shopspc"):
            with _client(broker, user) as other:
                other.publish(topic, f"forged by {user}".encode())
        with _client(broker, "mes") as mes:
            mes.publish(topic, b'{"alarm_id": "A-1", "user": "mes"}')
        # the broker forwards in order: a forged message let through would arrive first
        assert gateway.got.wait(15), "the MES acknowledgement did not arrive"
        assert gateway.messages[0] == (topic, b'{"alarm_id": "A-1", "user": "mes"}')


@pytest.mark.integration
def test_gateway_reads_station_results_and_publishes_alarms(broker: int) -> None:
    """Stations → gateway on plant1/#, gateway → MES on shopspc/v1/alarm/#; not the reverse."""
    results = "plant1/assembly/line1/vision-1/results"
    alarm = "shopspc/v1/alarm/plant1/assembly/line1/vision-1/width"
    with _client(broker, "shopspc") as gateway, _client(broker, "mes") as mes:
        gateway.subscribe("plant1/#")
        mes.subscribe("shopspc/v1/alarm/#")
        with _client(broker, "mes") as intruder:
            intruder.publish(results, b"not a station")
        with _client(broker, "station") as station:
            station.publish(alarm, b"not the gateway")
            station.publish(results, b'{"results": []}')
        gateway.publish(alarm, b'{"event": "raised"}')
        assert gateway.got.wait(15) and mes.got.wait(15)
        assert gateway.messages[0] == (results, b'{"results": []}')
        assert mes.messages[0] == (alarm, b'{"event": "raised"}')


@pytest.mark.integration
def test_compose_mosquitto_healthcheck_command(broker: int, compose: dict[str, Any]) -> None:
    """The compose health check (LISTEN in /proc/net/tcp) is true for a broker, false without."""
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and ":075B " in test[1]  # 1883
    for port, expected in ((broker, 0), (free_port(), 1)):
        command = test[1].replace(":075B ", f":{port:04X} ")
        done = subprocess.run(["sh", "-c", command], timeout=30, check=False)
        assert done.returncode == expected, (port, command)
