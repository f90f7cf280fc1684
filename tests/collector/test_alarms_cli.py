"""`shopspc alarms …`: read-only commands on an alarms.db a real AlarmManager wrote; changing
commands end to end through a real mosquitto and an in-process Gateway running ``run(stop)``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from collector.alarms import AlarmChar, AlarmManager, PointBatch
from collector.cli import app
from collector.config import load_config
from collector.pipeline import Gateway
from connectors.base import ConnectorStats, Quality, Sample
from spc.rules import BITS
from tests.servers import Server, mosquitto

S = 1_000_000
T0 = 1_764_000_000 * S
N1 = 1 << BITS["N1"]
A = "s1/a1/l1/st1/a"
B = "s1/a1/l2/st1/b"

CONFIG = """\
version: 1
gateway: {{id: gw-t, data_dir: {data_dir}}}
sources:
  dev:
    kind: mqtt
    host: 127.0.0.1
    client_id: t-dev
    subscriptions:
      - {{topic: t/x, binding: x, value_path: value}}
alarms:
  clear_after: 50
{mqtt}
characteristics:
  - id: a
    site: s1
    area: a1
    line: l1
    station: st1
    chart: imr
    value: {{source: dev, binding: a}}
    limits: {{center: 10.0, sigma: 1.0}}
  - id: b
    site: s1
    area: a1
    line: l2
    station: st1
    chart: imr
    value: {{source: dev, binding: b}}
    limits: {{center: 10.0, sigma: 1.0}}
"""


def write_config(tmp_path: Path, port: int | None = None) -> Path:
    """The gateway config: data_dir in ``tmp_path/data``, ``alarms.mqtt`` when a port is given."""
    mqtt = "" if port is None else f"  mqtt: {{host: 127.0.0.1, port: {port}}}"
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.format(data_dir=tmp_path / "data", mqtt=mqtt))
    return path


def cli(*args: str) -> Result:
    """Run ``shopspc alarms ARGS`` in-process."""
    return CliRunner().invoke(app, ["alarms", *args], env={"COLUMNS": "250"})


def as_json(res: Result) -> Any:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def batch(rows: Sequence[tuple[int, str, int, int]]) -> PointBatch:
    """Points ``(char, chart, mask, time_us)`` with value 15 against limits 7..13."""
    n = len(rows)
    return PointBatch(
        char=[r[0] for r in rows],
        chart=[r[1] for r in rows],
        mask=[r[2] for r in rows],
        value=[15.0] * n,
        center=[10.0] * n,
        lcl=[7.0] * n,
        ucl=[13.0] * n,
        sigma=[1.0] * n,
        limits_id=["LIM-1"] * n,
        time_us=[r[3] for r in rows],
        serial=[f"P{r[3] - T0}" for r in rows],
        context=[{"operator": "li"}] * n,
    )


@contextlib.contextmanager
def manager(config: Path) -> Iterator[AlarmManager]:
    """A real AlarmManager on the config's data_dir/alarms.db (what the gateway opens)."""
    cfg, _ = load_config(config)
    data = Path(cfg.gateway.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    m = AlarmManager(
        data / "alarms.db",
        [AlarmChar.of(c, c.klass) for c in cfg.characteristics],
        cfg.alarms,
        gateway_id="gw-t",
    )
    try:
        yield m
    finally:
        m.close()


def plant(m: AlarmManager) -> dict[str, str]:
    """Five alarms: three acknowledged with causes, one shelved, one open; b out of service."""
    m.judge(batch([(0, "x", N1, T0 + 1), (0, "mr", N1, T0 + 1), (1, "x", N1, T0 + 2)]), T0 + 3)
    m.judge(batch([(1, "mr", N1, T0 + 4)]), T0 + 5)
    ids = {f"{a['characteristic']}:{a['chart']}": a["alarm_id"] for a in m.active()}
    m.ack(ids["a:x"], "li", "tool", "machine:MC-TOOL-WEAR", "TOOL-CHANGE", now_us=T0 + 10)
    m.ack(ids["a:mr"], "wang", "", "MC-TOOL-WEAR", None, now_us=T0 + 11)
    m.ack(ids["b:x"], "li", "", "operator:OP-ERROR", "RETRAIN", now_us=T0 + 12)
    m.shelve(ids["b:mr"], "li", "known", T0 + 3600 * S, now_us=T0 + 13)
    return ids


# ----------------------------------------------------------------------------- read-only


def test_read_commands_while_the_manager_has_the_file_open(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with manager(config) as m:
        ids = plant(m)
        before = m.counts()
        listed = as_json(cli("list", "--config", str(config), "--json"))
        assert [a["alarm_id"] for a in listed] == [a["alarm_id"] for a in m.active()]
        assert len(listed) == 4
        first = next(a for a in listed if a["alarm_id"] == ids["a:x"])
        assert first["status"] == "acknowledged" and first["severity"] == "major"
        assert (first["rule"], first["chart"], first["path"]) == ("N1", "x", A)
        assert first["count"] == 1 and first["last_value"] == 15.0
        assert first["raised"] == "2025-11-24T16:00:00.000003Z"
        assert listed[-1]["alarm_id"] == ids["b:mr"]
        assert listed[-1]["shelved_until_us"] == T0 + 3600 * S

        on_l2 = as_json(cli("list", "--config", str(config), "--json", "--line", "l2"))
        assert {a["path"] for a in on_l2} == {B}
        by_path = as_json(cli("list", "--config", str(config), "--json", "--line", "s1/a1/l2"))
        assert by_path == on_l2
        active = as_json(cli("list", "--config", str(config), "--json", "--status", "active"))
        assert [a["alarm_id"] for a in active] == [ids["b:mr"]]
        of_a = as_json(cli("list", "--config", str(config), "--json", "--char", "a"))
        assert {a["alarm_id"] for a in of_a} == {ids["a:x"], ids["a:mr"]}

        shown = as_json(cli("show", ids["a:x"], "--config", str(config), "--json"))
        alarm = shown["alarm"]
        assert (alarm["ack_user"], alarm["cause_code"], alarm["action_code"]) == (
            "li",
            "MC-TOOL-WEAR",
            "TOOL-CHANGE",
        )
        assert alarm["payload"]["part_serial"] == "P1" and alarm["limits_id"] == "LIM-1"
        assert [j["event"] for j in shown["journal"]] == ["raised", "acknowledged"]

        rows = as_json(cli("journal", "--config", str(config), "--json", "--char", "b"))
        assert [j["event"] for j in rows] == ["raised", "raised", "acknowledged", "shelved"]
        last = as_json(cli("journal", "--config", str(config), "--json", "--limit", "2"))
        assert [j["event"] for j in last] == ["acknowledged", "shelved"]
        later = as_json(
            cli(
                "journal",
                "--config",
                str(config),
                "--json",
                "--since",
                "2025-11-24T16:00:00.000012Z",
            )
        )
        assert [j["event"] for j in later] == ["acknowledged", "shelved"]

        causes = as_json(cli("pareto", "--config", str(config), "--json"))
        assert [(r["category"], r["code"], r["count"]) for r in causes] == [
            ("machine", "MC-TOOL-WEAR", 2),
            ("operator", "OP-ERROR", 1),
        ]
        assert causes[0]["text"] == "Tool wear" and causes[0]["text_zh"] == "刀具磨损"
        assert causes[0]["percent"] == 66.7 and causes[1]["cumulative_percent"] == 100.0
        cats = as_json(cli("pareto", "--config", str(config), "--json", "--by", "category"))
        assert [(r["category"], r["count"]) for r in cats] == [("machine", 2), ("operator", 1)]
        assert [r["text_zh"] for r in cats] == ["机", "人"]
        l1 = as_json(cli("pareto", "--config", str(config), "--json", "--line", "l1"))
        assert [(r["code"], r["count"]) for r in l1] == [("MC-TOOL-WEAR", 2)]
        window = [
            "--since",
            "2025-11-24T16:00:00.000011Z",
            "--until",
            "2025-11-24T16:00:00.000012Z",
        ]
        assert [
            r["count"] for r in as_json(cli("pareto", "--config", str(config), "--json", *window))
        ] == [1]

        picks = as_json(cli("causes", "--config", str(config), "--json"))
        assert {
            "category": "machine",
            "code": "MC-TOOL-WEAR",
            "text": "Tool wear",
            "text_zh": "刀具磨损",
        } in picks["causes"]
        assert "TOOL-CHANGE" in {a["code"] for a in picks["actions"]}

        # the tables, as an operator sees them
        table = cli("list", "--config", str(config))
        assert (
            table.exit_code == 0 and ids["b:mr"] in table.stdout and "shelved until" in table.stdout
        )
        table = cli("show", ids["b:x"], "--config", str(config))
        assert (
            table.exit_code == 0 and "operator:OP-ERROR Operator error / 操作失误" in table.stdout
        )
        table = cli("pareto", "--config", str(config))
        assert table.exit_code == 0 and "操作失误" in table.stdout
        table = cli("causes", "--config", str(config))
        assert table.exit_code == 0 and "量具误差或校准过期" in table.stdout
        assert cli("journal", "--config", str(config)).exit_code == 0
        assert m.counts() == before  # the manager's file and state are untouched


def test_read_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    res = cli("list", "--config", str(config))
    assert res.exit_code == 2 and "no alarm store" in res.stderr and "alarms.db" in res.stderr
    with manager(config) as m:
        plant(m)
    res = cli("show", "A-nope", "--config", str(config))
    assert res.exit_code == 2 and "no alarm 'A-nope'" in res.stderr
    res = cli("pareto", "--config", str(config), "--by", "machine")
    assert res.exit_code == 2 and "--by" in res.stderr
    res = cli("journal", "--config", str(config), "--since", "yesterday")
    assert res.exit_code == 2 and "--since 'yesterday'" in res.stderr
    res = cli("list", "--config", str(config), "--status", "open")
    assert res.exit_code == 2 and "--status" in res.stderr
    res = cli("list", "--config", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 2 and "cannot read" in res.stderr
    assert "Traceback" not in res.output


def test_changing_commands_check_before_sending(tmp_path: Path) -> None:
    """Without alarms.mqtt, or with a bad cause/action, nothing is sent (the port is closed)."""
    config = write_config(tmp_path)
    with manager(config) as m:
        ids = plant(m)
    res = cli("ack", ids["b:mr"], "--config", str(config), "--user", "li")
    assert res.exit_code == 2 and "needs alarms.mqtt" in res.stderr
    config = write_config(tmp_path, port=9)  # nothing listens: a send would fail with exit 1
    res = cli(
        "ack", ids["b:mr"], "--config", str(config), "--user", "li", "--cause", "machine:NOPE"
    )
    assert res.exit_code == 2 and "unknown assignable cause 'machine:NOPE'" in res.stderr
    assert "machine:MC-TOOL-WEAR" in res.stderr and "operator:OP-ERROR" in res.stderr
    res = cli(
        "ack", ids["b:mr"], "--config", str(config), "--user", "li", "--cause", "operator:MC-FAULT"
    )
    assert res.exit_code == 2 and "unknown assignable cause" in res.stderr
    res = cli("ack", ids["b:mr"], "--config", str(config), "--user", "li", "--action", "PRAY")
    assert res.exit_code == 2 and "TOOL-CHANGE" in res.stderr
    res = cli("ack", "A-nope", "--config", str(config), "--user", "li")
    assert res.exit_code == 2 and "no alarm 'A-nope'" in res.stderr
    res = cli("ack", ids["a:x"], "--config", str(config), "--user", "li")
    assert res.exit_code == 0 and "acknowledged already" in res.stdout
    res = cli("shelve", ids["a:x"], "--config", str(config), "--user", "li")
    assert res.exit_code == 2 and "--minutes" in res.stderr
    res = cli("shelve", ids["a:x"], "--config", str(config), "--user", "li", "--until", "-1h")
    assert res.exit_code == 2 and "not in the future" in res.stderr
    res = cli("unshelve", ids["a:x"], "--config", str(config), "--user", "li")
    assert res.exit_code == 0 and "not shelved" in res.stdout
    res = cli("service", "zz", "--config", str(config), "--user", "li", "--out")
    assert res.exit_code == 2 and "no characteristic 'zz'" in res.stderr
    res = cli("service", "b", "--config", str(config), "--user", "li")
    assert res.exit_code == 2 and "--out" in res.stderr
    # the broker is unreachable: nothing sent, exit 1
    res = cli("ack", ids["b:mr"], "--config", str(config), "--user", "li", "--timeout", "1")
    assert res.exit_code == 1 and "127.0.0.1:9" in res.stderr and "nothing was sent" in res.stderr


# ----------------------------------------------------------------------------- through the gateway


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    d = tmp_path / "broker"
    d.mkdir()
    with mosquitto(d) as server:
        yield server


class NoSink:
    """Keeps nothing: the series lines do not matter here."""

    name = "none"
    precision = "us"

    def __init__(self) -> None:
        self.stats = ConnectorStats()

    async def write(self, batch: Sequence[Any]) -> None:
        return None

    async def close(self) -> None:
        return None


async def until(cond: Any, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached: {what}")


@contextlib.asynccontextmanager
async def running_gateway(config: Path) -> AsyncIterator[Gateway]:
    """A Gateway of the config (no sources) running ``run(stop)``, its MQTT publisher connected."""
    cfg, models = load_config(config)
    gw = Gateway(cfg, models, sources=[], sinks=[NoSink()], drain_deadline_s=2)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await until(lambda: bool(gw.notifiers), "notifiers made")
        await until(lambda: gw.notifiers[0].stats.state == "connected", "publisher connected")
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def raise_alarm(gw: Gateway, char: str, k: int) -> str:
    """Feed an in-control then a far point to ``char``; the new x-chart alarm's id."""
    before = {a["alarm_id"] for a in gw.alarms.active()}
    t = T0 + k * 1000
    samples = [
        Sample(char, 10.0, Quality.GOOD, t, t, serial=f"P{k}"),
        Sample(char, 30.0, Quality.GOOD, t + 1, t + 1, serial=f"P{k + 1}"),
    ]
    gw.process([("dev", samples)])
    (new,) = [
        a["alarm_id"]
        for a in gw.alarms.active()
        if a["alarm_id"] not in before and a["chart"] == "x"
    ]
    return new


async def acli(*args: str) -> Result:
    """The CLI in a worker thread, so the gateway's event loop keeps running."""
    return await asyncio.to_thread(cli, *args)


@pytest.mark.integration
async def test_ack_shelve_unshelve_service_through_a_running_gateway(
    broker: Server, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker.port)
    async with running_gateway(config) as gw:
        aid = raise_alarm(gw, "a", 0)
        res = await acli(
            "ack", aid, "--config", str(config), "--user", "li", "--comment", "worn",
            "--cause", "MC-TOOL-WEAR", "--action", "TOOL-CHANGE",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert f"acknowledged {aid} ({A} N1) by li, cause machine:MC-TOOL-WEAR" in res.stdout
        assert f"confirmed by the gateway on shopspc/v1/alarm/{A}" in res.stdout
        row = gw.alarms.get(aid)
        assert row is not None and row["status"] == "acknowledged"
        assert (row["ack_user"], row["ack_comment"], row["ack_source"]) == ("li", "worn", "mqtt")
        assert (row["cause_category"], row["cause_code"], row["action_code"]) == (
            "machine",
            "MC-TOOL-WEAR",
            "TOOL-CHANGE",
        )

        res = await acli(
            "shelve", aid, "--config", str(config), "--user", "li", "--minutes", "30", "--json"
        )
        assert res.exit_code == 0, res.output
        shelved = json.loads(res.stdout)
        assert shelved["message"]["event"] == "shelved" and shelved["message"]["alarm_id"] == aid
        assert gw.alarms.get(aid)["shelved_until"] is not None  # type: ignore[index]

        # an ack at a shelved point is recorded, not published: the journal confirms it
        bid = raise_alarm(gw, "b", 10)
        res = await acli("shelve", bid, "--config", str(config), "--user", "li", "--until", "+1h")
        assert res.exit_code == 0, res.output
        res = await acli("ack", bid, "--config", str(config), "--user", "li")
        assert res.exit_code == 0, res.output
        assert "recorded by the gateway in its journal" in res.stdout
        assert "not published" in res.stdout
        assert gw.alarms.get(bid)["ack_source"] == "mqtt"  # type: ignore[index]

        res = await acli("unshelve", aid, "--config", str(config), "--user", "wang")
        assert res.exit_code == 0, res.output
        assert "unshelved" in res.stdout and "confirmed by the gateway" in res.stdout
        assert gw.alarms.get(aid)["shelved_until"] is None  # type: ignore[index]

        res = await acli("service", "a", "--config", str(config), "--user", "li", "--out")
        assert res.exit_code == 0, res.output
        assert f"{A} out of service by li: state suspended" in res.stdout
        assert f"confirmed by the gateway on shopspc/v1/state/{A}" in res.stdout
        assert gw.alarms.counts()["out_of_service"] == 1
        res = await acli("service", A, "--config", str(config), "--user", "li", "--in")
        assert res.exit_code == 0, res.output
        assert gw.alarms.counts()["out_of_service"] == 0
        assert gw.stats.bad_commands == 0


@pytest.mark.integration
async def test_no_gateway_exits_1_after_the_timeout(broker: Server, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port)
    with manager(config) as m:
        ids = plant(m)
    res = await acli(
        "ack", ids["b:mr"], "--config", str(config), "--user", "li", "--timeout", "0.5"
    )
    assert res.exit_code == 1
    assert "no confirmation from the gateway within 0.5 s" in res.stderr
    assert "check the gateway log" in res.stderr.lower()
    with sqlite3.connect(tmp_path / "data" / "alarms.db") as con:
        (status,) = con.execute(
            "SELECT status FROM alarms WHERE alarm_id = ?", (ids["b:mr"],)
        ).fetchone()
    con.close()
    assert status == "active"


@pytest.mark.integration
async def test_gateway_offline_nothing_sent(broker: Server, tmp_path: Path) -> None:
    """After a clean stop the retained status is offline: refuse at once, send nothing."""
    config = write_config(tmp_path, broker.port)
    async with running_gateway(config) as gw:
        aid = raise_alarm(gw, "a", 0)
    res = await acli("ack", aid, "--config", str(config), "--user", "li", "--timeout", "30")
    assert res.exit_code == 1
    assert "gateway gw-t is offline" in res.stderr and "nothing was sent" in res.stderr
    async with running_gateway(config) as gw:
        # a command queued in its session would have been carried out on connecting
        await asyncio.sleep(0.5)
        assert gw.alarms.get(aid)["status"] == "active"  # type: ignore[index]


def test_commands_use_the_operators_own_broker_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SHOPSPC_CMD_MQTT_USER/PASSWORD replace alarms.mqtt's account (ACLs allow only MES users)."""
    import connectors.mqtt.client as client_mod
    from connectors.base import ConnectorError

    seen: dict[str, object] = {}

    class Recorder:
        def __init__(self, cfg, client_id, *, password=None, **kw) -> None:
            seen.update(username=cfg.username, password=password)

        async def connect(self) -> bool:
            raise ConnectorError("fake", "refused", retryable=True)

        async def close(self, graceful_payload=None) -> None:
            pass

    config = write_config(tmp_path, port=9)
    with manager(config) as m:
        ids = plant(m)
    monkeypatch.setattr(client_mod, "MqttLink", Recorder)
    monkeypatch.setenv("SHOPSPC_CMD_MQTT_USER", "mes-li")
    res = cli("ack", ids["b:mr"], "--config", str(config), "--user", "li", "--timeout", "1")
    assert res.exit_code == 2 and "SHOPSPC_CMD_MQTT_PASSWORD is not" in res.stderr
    monkeypatch.setenv("SHOPSPC_CMD_MQTT_PASSWORD", "s3cret")
    res = cli("ack", ids["b:mr"], "--config", str(config), "--user", "li", "--timeout", "1")
    assert res.exit_code == 1 and seen == {"username": "mes-li", "password": "s3cret"}
