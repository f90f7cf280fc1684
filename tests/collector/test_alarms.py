"""The alarm lifecycle manager: every transition, the contract payload, persistence, kill -9.

Unit tests on a real SQLite outbox in a temp dir (the manager does no other
I/O). The kill -9 test runs this file as a child process (``main`` below)
that judges bursts until it is SIGKILLed, then checks the file.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.alarmconfig import AlarmsConfig, ProcessStateBinding
from collector.alarms import (
    SEQ_COUNTER,
    AlarmChar,
    AlarmError,
    AlarmManager,
    PointBatch,
    alarm_id,
    rfc3339,
)
from collector.outbox import Outbox
from spc.rules import BITS

S = 1_000_000  # µs per second
T0 = 1_764_000_000 * S  # a wall time in 2025
RFC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def chars(n: int = 3, line: str = "L1", **kw: Any) -> list[AlarmChar]:
    """``n`` characteristics on one line, ids c0..c{n-1}."""
    return [
        AlarmChar(f"S1/A1/{line}/ST1/c{i}", "S1", "A1", line, "ST1", f"c{i}", **kw)
        for i in range(n)
    ]


def bits(*codes: str) -> int:
    """A violation mask with these rule codes."""
    m = 0
    for code in codes:
        m |= 1 << BITS[code]
    return m


def batch(rows: Sequence[tuple], limits_id: str = "LIM-1") -> PointBatch:
    """Rows ``(char, chart, mask, time_us[, value[, serial[, context]]])``."""
    full = [(*r, *(None,) * (7 - len(r))) for r in rows]
    return PointBatch(
        char=[r[0] for r in full],
        chart=[r[1] for r in full],
        mask=[r[2] for r in full],
        value=[1.5 if r[4] is None else r[4] for r in full],
        center=[0.0] * len(full),
        lcl=[-3.0] * len(full),
        ucl=[3.0] * len(full),
        sigma=[1.0] * len(full),
        limits_id=[limits_id] * len(full),
        time_us=[r[3] for r in full],
        serial=[r[5] for r in full],
        context=[r[6] for r in full],
    )


def ok(char: int, times: Sequence[int], chart: str = "x") -> PointBatch:
    """In-control points of one chart."""
    return batch([(char, chart, 0, t) for t in times])


def stream(m: AlarmManager, name: str = "mqtt") -> list[dict]:
    """Everything pending in a stream, decoded."""
    return [json.loads(e.payload) for e in m.outbox.peek(name, 10**6, now=math.inf)]


def events(m: AlarmManager) -> list[dict]:
    """Alarm event payloads in the mqtt stream."""
    return [e["payload"] for e in stream(m) if "/alarm/" in e["topic"]]


@pytest.fixture
def mk(tmp_path: Path):
    """Open managers on ``tmp_path/alarms.db``; closes them all at the end."""
    opened: list[AlarmManager] = []

    def make(cs: Sequence[AlarmChar] | None = None, **config: Any) -> AlarmManager:
        webhook = config.pop("webhook", False)
        m = AlarmManager(
            tmp_path / "alarms.db",
            chars() if cs is None else cs,
            AlarmsConfig.model_validate(config),
            gateway_id="gw-1",
            webhook=webhook,
        )
        opened.append(m)
        return m

    yield make
    for m in opened:
        m.close()


# ----------------------------------------------------------------------------- raise


def test_raise_payload_has_every_contract_field(mk) -> None:
    """A violation raises one event with the contract's fields, on the alarm topic, not retained."""
    m = mk()
    ctx = {"operator": "li", "machine": "M7", "material_lot": None, "gauge": {"id": "G1"}}
    out = m.judge(batch([(1, "x", bits("N1"), T0 + 5, 4.25, "SN-9", ctx)]), T0 + 9 * S)
    assert out.raised == 1 and len(out.events) == 1
    p = out.events[0]
    assert p == {
        "schema": "shopspc.alarm/1",
        "alarm_id": alarm_id("S1/A1/L1/ST1/c1", "N1", "LIM-1", T0 + 5, "SN-9"),
        "event": "raised",
        "seq": 1,
        "gateway_id": "gw-1",
        "site": "S1",
        "area": "A1",
        "line": "L1",
        "station": "ST1",
        "characteristic": "c1",
        "chart": "x",
        "rule": "N1",
        "rule_text": "1 point beyond a control limit",
        "severity": "major",
        "value": 4.25,
        "center": 0.0,
        "lcl": -3.0,
        "ucl": 3.0,
        "sigma": 1.0,
        "limits_id": "LIM-1",
        "sample_time": rfc3339(T0 + 5),
        "event_time": rfc3339(T0 + 9 * S),
        "samples": ["SN-9"],
        "context": {"operator": "li", "machine": "M7", "gauge": {"id": "G1"}},
        "part_serial": "SN-9",
    }
    assert RFC.match(p["sample_time"]) and p["sample_time"].endswith(".000005Z")
    envelopes = stream(m)
    alarm = [e for e in envelopes if "/alarm/" in e["topic"]]
    assert alarm == [
        {"topic": "shopspc/v1/alarm/S1/A1/L1/ST1/c1", "qos": 1, "retain": False, "payload": p}
    ]
    state = [e for e in envelopes if "/state/" in e["topic"]]
    assert [e["topic"] for e in state] == ["shopspc/v1/state/S1/A1/L1/ST1/c1"]
    assert state[0]["retain"] is True and state[0]["qos"] == 1
    assert state[0]["payload"]["state"] == "out_of_control"
    assert state[0]["payload"]["active_alarms"] == [p["alarm_id"]]
    assert state[0]["payload"]["limits_id"] == "LIM-1"
    # the alarm event is in the stream before the state message that names it
    assert envelopes.index(alarm[0]) < envelopes.index(state[0])


def test_alarm_line_for_influx(mk) -> None:
    """The ``alarm`` line: contract tags plus chart, fields alarm_id/event/value/seq, sample time."""
    m = mk()
    out = m.judge(batch([(0, "mr", bits("N1"), T0 + 7, 2.5)]), T0 + S)
    aid = out.events[0]["alarm_id"]
    assert out.lines == [
        "alarm,characteristic=c0,chart=mr,gateway=gw-1,line=L1,rule=N1,severity=major,station=ST1 "
        f'alarm_id="{aid}",event="raised",value=2.5,seq=1i {T0 + 7}'
    ]


def test_centre_and_dispersion_alarms_are_distinct(mk) -> None:
    """X and MR violations of one rule at one sample are two alarms with two ids."""
    m = mk()
    out = m.judge(batch([(0, "x", bits("N1"), T0), (0, "mr", bits("N1"), T0)]), T0)
    ids = {e["alarm_id"] for e in out.events}
    assert len(ids) == 2
    assert alarm_id("S1/A1/L1/ST1/c0", "N1", "LIM-1", T0, None, chart="mr") in ids
    assert alarm_id("S1/A1/L1/ST1/c0", "N1", "LIM-1", T0, None, chart="x") in ids


def test_alarm_id_formula_is_the_pipelines() -> None:
    """The id formula is the one collector.pipeline used (the same ids after the switch)."""
    from collector import pipeline

    for args, kw in [
        (("p/a/t/h/c", "N2", "L", 123, None), {}),
        (("p/a/t/h/c", "N1", "L", 123, "SN"), {"chart": "mr"}),
        (("p/a/t/h/c", "N1", "L", 123, "SN"), {"chart": "x"}),
    ]:
        assert alarm_id(*args, **kw) == pipeline.alarm_id(*args, **kw)


def test_several_rules_at_one_point_raise_one_alarm_each(mk) -> None:
    """Each violated bit is its own alarm."""
    m = mk()
    out = m.judge(batch([(0, "x", bits("N1", "N5", "WE1"), T0)]), T0)
    assert sorted(e["rule"] for e in out.events) == ["N1", "N5", "WE1"]
    assert [e["seq"] for e in out.events] == [1, 2, 3]


def test_unknown_chart_and_bad_rows_are_refused(mk) -> None:
    """Bad batches fail before anything changes, with a clear message."""
    m = mk()
    with pytest.raises(ValueError, match="unknown chart"):
        m.judge(batch([(0, "xx", 0, T0)]), T0)
    with pytest.raises(ValueError, match="outside"):
        m.judge(batch([(7, "x", 0, T0)]), T0)
    b = batch([(0, "x", 0, T0)])
    b.value = []
    with pytest.raises(ValueError, match="value"):
        m.judge(b, T0)
    assert m.judge(batch([]), T0).events == []


# ------------------------------------------------------------------------- lifecycle


def test_one_active_alarm_per_point_updates_instead_of_raising(mk) -> None:
    """Further violations update count and last sample; journal ``updated``, no event."""
    m = mk()
    first = m.judge(batch([(0, "x", bits("N1"), T0 + 1, 5.0)]), T0 + S).events[0]
    out = m.judge(
        batch([(0, "x", bits("N1"), T0 + 2, 6.0), (0, "x", bits("N1"), T0 + 3, 7.0, "SN3")]),
        T0 + 2 * S,
    )
    assert out.raised == 0 and out.updated == 2 and out.events == [] and out.states == []
    (a,) = m.active()
    assert a["alarm_id"] == first["alarm_id"] and a["count"] == 3
    assert a["last_time"] == T0 + 3 and a["last_value"] == 7.0 and a["last_serial"] == "SN3"
    assert [j["event"] for j in m.journal()] == ["raised", "updated", "updated"]


def test_clear_after_in_control_points_then_ack_closes(mk) -> None:
    """clear_after points without the rule clear it; unacked stays listed until the ack."""
    m = mk(clear_after=3)
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    assert m.judge(ok(0, [T0 + 1, T0 + 2]), T0 + S).events == []
    # a violation of another rule does not interrupt N1's in-control run
    out = m.judge(batch([(0, "x", bits("N2"), T0 + 3)]), T0 + 2 * S)
    assert [(e["event"], e["rule"]) for e in out.events] == [("cleared", "N1"), ("raised", "N2")]
    cleared = out.events[0]
    assert cleared["alarm_id"] == aid and cleared["clear_sample_time"] == rfc3339(T0 + 3)
    assert cleared["count"] == 1 and cleared["event_time"] == rfc3339(T0 + 2 * S)
    assert m.get(aid)["status"] == "cleared_unacked"
    assert {a["alarm_id"] for a in m.active()} >= {aid}
    ack = m.ack(aid, "wang", "seen", now_us=T0 + 3 * S)
    assert ack["event"] == "acknowledged" and ack["user"] == "wang" and ack["comment"] == "seen"
    assert m.get(aid)["status"] == "closed"
    assert aid not in {a["alarm_id"] for a in m.active()}


def test_ack_then_clear_closes(mk) -> None:
    """Acknowledged while active, closed by the clear."""
    m = mk(clear_after=1)
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    m.ack(aid, "wang", now_us=T0 + 1)
    assert m.get(aid)["status"] == "acknowledged"
    out = m.judge(ok(0, [T0 + 2]), T0 + 2)
    assert [e["event"] for e in out.events] == ["cleared"]
    assert m.get(aid)["status"] == "closed" and m.active() == []
    assert out.states[-1]["state"] == "in_control"


def test_new_violation_after_clear_is_a_new_alarm(mk) -> None:
    """After the clear the same rule raises again, with a new id."""
    m = mk(clear_after=1)
    a1 = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    m.judge(ok(0, [T0 + 1]), T0 + 1)
    out = m.judge(batch([(0, "x", bits("N1"), T0 + 2)]), T0 + 2)
    assert out.raised == 1 and out.events[0]["alarm_id"] != a1


def test_in_control_points_of_another_chart_do_not_clear(mk) -> None:
    """Clearing counts points of the alarm's own chart only."""
    m = mk(clear_after=1)
    m.judge(batch([(0, "mr", bits("N1"), T0)]), T0)
    assert m.judge(ok(0, [T0 + 1, T0 + 2]), T0 + 1).cleared == 0
    assert m.judge(ok(0, [T0 + 3], chart="mr"), T0 + 2).cleared == 1


def test_clear_overrides_per_characteristic(mk) -> None:
    """clear_overrides by characteristic id."""
    m = mk(clear_after=5, clear_overrides={"c1": 1})
    m.judge(batch([(0, "x", bits("N1"), T0), (1, "x", bits("N1"), T0)]), T0)
    out = m.judge(batch([(0, "x", 0, T0 + 1), (1, "x", 0, T0 + 1)]), T0 + 1)
    assert [e["characteristic"] for e in out.events] == ["c1"]


def test_ack_twice_is_idempotent_and_errors_are_clear(mk) -> None:
    """A second ack returns None (no event); unknown alarm, empty user, bad source raise."""
    m = mk()
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    assert m.ack(aid, "wang", now_us=T0 + 1) is not None
    assert m.ack(aid, "li", now_us=T0 + 2) is None
    assert [e["event"] for e in events(m)] == ["raised", "acknowledged"]
    with pytest.raises(AlarmError, match="no alarm 'A-nope'") as err:
        m.ack("A-nope", "wang", now_us=T0)
    assert err.value.what == "alarm_id"
    with pytest.raises(AlarmError, match="user"):
        m.ack(aid, " ", now_us=T0)
    with pytest.raises(AlarmError, match="source"):
        m.ack(aid, "x", now_us=T0, source="email")  # type: ignore[arg-type]


def test_ack_causes_and_actions_from_the_configured_lists(mk) -> None:
    """category:code or bare code; unknown or mismatched ones are refused before any change."""
    m = mk()
    out = m.judge(batch([(0, "x", bits("N1"), T0), (1, "x", bits("N1"), T0)]), T0)
    a0, a1 = (e["alarm_id"] for e in out.events)
    with pytest.raises(AlarmError, match="unknown assignable cause 'machine:NOPE'") as err:
        m.ack(a0, "wang", cause="machine:NOPE", now_us=T0)
    assert err.value.what == "cause" and "machine:MC-TOOL-WEAR" in err.value.message
    with pytest.raises(AlarmError, match="unknown assignable cause"):
        m.ack(a0, "wang", cause="operator:MC-TOOL-WEAR", now_us=T0)
    with pytest.raises(AlarmError, match="unknown corrective action 'FIXIT'") as err:
        m.ack(a0, "wang", cause="MC-FAULT", action="FIXIT", now_us=T0)
    assert err.value.what == "action"
    assert m.get(a0)["status"] == "active"
    p = m.ack(a0, "wang", "tool", cause="MC-TOOL-WEAR", action="TOOL-CHANGE", now_us=T0 + 1)
    assert p["cause"] == {
        "category": "machine",
        "code": "MC-TOOL-WEAR",
        "text": "Tool wear",
        "text_zh": "刀具磨损",
    }
    assert p["action"]["code"] == "TOOL-CHANGE" and p["source"] == "api"
    q = m.ack(a1, "li", cause="measurement:MS-GAUGE", now_us=T0 + 2, source="mqtt")
    assert q["cause"]["category"] == "measurement" and "action" not in q
    row = m.get(a0)
    assert (row["cause_category"], row["cause_code"], row["action_code"]) == (
        "machine",
        "MC-TOOL-WEAR",
        "TOOL-CHANGE",
    )
    (j,) = [j for j in m.journal() if j["event"] == "acknowledged" and j["alarm_id"] == a0]
    assert (j["user"], j["comment"], j["cause_code"], j["action_code"]) == (
        "wang",
        "tool",
        "MC-TOOL-WEAR",
        "TOOL-CHANGE",
    )
    lines = m.take_lines()
    assert len(lines) == 2 and 'event="acknowledged"' in lines[0] and 'user="wang"' in lines[0]
    assert m.take_lines() == []


def test_ack_command_from_mqtt(mk) -> None:
    """The MQTT ack command: JSON body, alarm of that path, source mqtt; bad ones are refused."""
    m = mk()
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    path = "S1/A1/L1/ST1/c0"
    for body, what in [
        (b"{not json", "payload"),
        (b"[1]", "payload"),
        (json.dumps({"alarm_id": aid, "user": "x", "extra": 1}), "payload"),
        (json.dumps({"alarm_id": aid, "user": 7}), "user"),
        (json.dumps({"user": "x"}), "alarm_id"),
    ]:
        with pytest.raises(AlarmError) as err:
            m.ack_command(path, body, now_us=T0)
        assert err.value.what == what and path in err.value.message
    with pytest.raises(AlarmError, match="belongs to S1/A1/L1/ST1/c0, not S1/A1/L1/ST1/c1"):
        m.ack_command("S1/A1/L1/ST1/c1", {"alarm_id": aid, "user": "x"}, now_us=T0)
    body = {"alarm_id": aid, "user": "mes", "comment": "ok", "cause": "MC-FAULT"}
    p = m.ack_command(path, json.dumps(body).encode(), now_us=T0 + 1)
    assert p["source"] == "mqtt" and p["user"] == "mes" and p["cause"]["code"] == "MC-FAULT"
    assert m.ack_command(path, body, now_us=T0 + 2) is None  # a redelivered command


def test_pareto_by_cause_and_category_with_filters(mk) -> None:
    """Counts of acknowledged causes, most frequent first; filters by time, line, characteristic."""
    cs = chars(3) + chars(1, line="L2")
    m = mk(cs)
    picks = ["MC-TOOL-WEAR", "MC-TOOL-WEAR", "MC-FAULT", "MS-GAUGE"]
    for k, (i, cause) in enumerate(zip([0, 1, 2, 3], picks, strict=True)):
        aid = m.judge(batch([(i, "x", bits("N1"), T0 + k)]), T0 + k).events[0]["alarm_id"]
        m.ack(aid, "wang", cause=cause, now_us=T0 + 10 * S * (k + 1))
    m.judge(batch([(0, "mr", bits("N1"), T0)]), T0)  # never acknowledged: not counted
    assert m.pareto() == [
        ("machine", "MC-TOOL-WEAR", "Tool wear", 2),
        ("machine", "MC-FAULT", "Machine fault", 1),
        ("measurement", "MS-GAUGE", "Gauge error or calibration overdue", 1),
    ]
    assert m.pareto(by="category") == [
        ("machine", "", "machine", 3),
        ("measurement", "", "measurement", 1),
    ]
    assert m.pareto(line="L2") == [
        ("measurement", "MS-GAUGE", "Gauge error or calibration overdue", 1)
    ]
    assert m.pareto(line="S1/A1/L2") == m.pareto(line="L2")
    assert m.pareto(characteristic="S1/A1/L1/ST1/c2") == [
        ("machine", "MC-FAULT", "Machine fault", 1)
    ]
    assert m.pareto(since_us=T0 + 25 * S, until_us=T0 + 35 * S) == [
        ("machine", "MC-FAULT", "Machine fault", 1)
    ]
    with pytest.raises(AlarmError, match="by"):
        m.pareto(by="lot")  # type: ignore[arg-type]


def test_samples_cover_the_rule_window_across_batches(mk) -> None:
    """``samples`` lists the points that form the pattern: N2's 9, partly from earlier batches."""
    m = mk()
    m.judge(ok(0, [T0 + t for t in range(1, 6)]), T0)
    m.judge(ok(0, [T0 + 100]), T0)  # another batch in between
    rows = [(0, "x", 0, T0 + 200), (1, "x", 0, T0 + 201), (0, "x", bits("N2"), T0 + 300)]
    out = m.judge(batch(rows), T0 + S)
    # the last 9 points of c0's x chart: only 8 exist, the window is cut at the start
    expected = [T0 + t for t in (1, 2, 3, 4, 5, 100, 200, 300)]
    assert out.events[0]["samples"] == [rfc3339(t) for t in expected]


def test_samples_use_serials_and_window_overrides(mk) -> None:
    """Part serials replace times when every point has one; ``windows`` overrides a rule's length."""
    m = mk(chars(1, windows={"N2": 3}))
    rows = [(0, "x", 0, T0 + t, 1.0, f"P{t}") for t in range(5)]
    rows.append((0, "x", bits("N2"), T0 + 9, 1.0, "P9"))
    out = m.judge(batch(rows), T0)
    assert out.events[0]["samples"] == ["P3", "P4", "P9"]


def test_severity_from_class_and_own_map(mk) -> None:
    """Own map beats the class map, which beats the built-in default."""
    cs = [
        AlarmChar("S1/A1/L1/ST1/c0", "S1", "A1", "L1", "ST1", "c0", klass="safety"),
        AlarmChar("S1/A1/L1/ST1/c1", "S1", "A1", "L1", "ST1", "c1", "safety", {"N2": "minor"}),
        AlarmChar("S1/A1/L1/ST1/c2", "S1", "A1", "L1", "ST1", "c2"),
    ]
    m = mk(cs, severity={"safety": {"N2": "critical"}})
    out = m.judge(
        batch([(0, "x", bits("N2"), T0), (1, "x", bits("N2"), T0), (2, "x", bits("N2"), T0)]), T0
    )
    assert [e["severity"] for e in out.events] == ["critical", "minor", "minor"]
    assert "severity=critical" in out.lines[0]


def test_alarm_char_of_a_configured_characteristic() -> None:
    """AlarmChar.of takes place, explicitly set severity and rule_params windows and wording."""
    from collector.config import Characteristic

    base = {"id": "d1", "site": "S", "area": "A", "line": "L", "station": "ST"}
    ch = Characteristic.model_validate(
        {**base, "value": {"static": 1.0}, "rule_params": {"N2": {"run": 7}}}
    )
    ac = AlarmChar.of(ch, klass="safety")
    assert (ac.path, ac.klass, dict(ac.severity)) == ("S/A/L/ST/d1", "safety", {})
    assert ac.windows == {"N2": 7} and ac.rule_text["N2"].startswith("7 points")
    ch2 = Characteristic.model_validate(
        {**base, "value": {"static": 1.0}, "severity": {"N1": "critical"}}
    )
    assert dict(AlarmChar.of(ch2).severity) == {"N1": "critical"}


def test_rule_text_override(mk) -> None:
    """A characteristic's own rule wording (changed rule_params) is used."""
    m = mk(chars(1, rule_text={"N2": "7 points in a row on the same side of the centre line"}))
    out = m.judge(batch([(0, "x", bits("N2"), T0)]), T0)
    assert out.events[0]["rule_text"].startswith("7 points")


# ----------------------------------------------------------------------------- state


def test_initial_states_then_in_control_only_on_change(mk) -> None:
    """no_data at start; one in_control on the first point; nothing while it stays the same."""
    m = mk()
    init = m.initial_states(T0)
    assert [s["state"] for s in init] == ["no_data"] * 3
    out = m.judge(ok(0, [T0 + 1, T0 + 2]), T0 + S)
    assert [(s["state"], s["limits_id"]) for s in out.states] == [("in_control", "LIM-1")]
    assert m.judge(ok(0, [T0 + 3]), T0 + 2 * S).states == []
    # new limits: the state content changes
    out = m.judge(batch([(0, "x", 0, T0 + 4)], limits_id="LIM-2"), T0 + 3 * S)
    assert [s["limits_id"] for s in out.states] == ["LIM-2"]
    states = [e for e in stream(m) if "/state/" in e["topic"]]
    assert len(states) == 5 and all(e["retain"] for e in states)
    assert all("seq" not in e["payload"] for e in states)


# ---------------------------------------------------------------------- persistence


def test_restart_continues_state_and_seq_and_ignores_replays(mk) -> None:
    """Close and reopen: active alarms, seq, OOS and shelves are back; a replay raises nothing."""
    m = mk(clear_after=2)
    b1 = batch([(0, "x", bits("N1"), T0), (1, "x", bits("N2"), T0 + 1)])
    out = m.judge(b1, T0)
    a0, a1 = (e["alarm_id"] for e in out.events)
    m.ack(a1, "wang", now_us=T0 + S)
    m.set_out_of_service(2, True, "wang", "gauge broken", now_us=T0 + S)
    m.shelve(a0, "li", "known", T0 + 3600 * S, now_us=T0 + S)
    seq = m.outbox.counter(SEQ_COUNTER)
    m.close()

    m = mk(clear_after=2)
    assert {a["alarm_id"]: a["status"] for a in m.active()} == {a0: "active", a1: "acknowledged"}
    assert m.counts()["shelved"] == 1 and m.counts()["out_of_service"] == 1
    init = m.initial_states(T0 + 2 * S)
    assert [s["state"] for s in init] == ["out_of_control", "out_of_control", "suspended"]
    assert init[2]["reason"] == "out_of_service: gauge broken"
    again = m.judge(b1, T0 + 2 * S)
    assert again.raised == 0 and again.duplicates == 2 and again.events == []
    out = m.judge(ok(1, [T0 + 2, T0 + 3]), T0 + 3 * S)
    assert [(e["event"], e["alarm_id"], e["seq"]) for e in out.events] == [("cleared", a1, seq + 1)]
    assert m.get(a1)["status"] == "closed"
    # a closed alarm's completing sample replayed: still nothing
    assert m.judge(batch([(1, "x", bits("N2"), T0 + 1)]), T0 + 4 * S).raised == 0


def test_replay_of_an_open_alarm_is_a_duplicate_without_its_mark(mk, tmp_path: Path) -> None:
    """Replays are told by the per-point high-water mark, which an open alarm's own last sample
    also sets at load: a file whose marks table lacks the point raises nothing twice either."""
    m = mk()
    b = batch([(0, "x", bits("N1"), T0 + 5)])
    assert m.judge(b, T0).raised == 1
    m.close()
    with sqlite3.connect(tmp_path / "alarms.db") as conn:
        conn.execute("DELETE FROM marks")
    m = mk()
    again = m.judge(b, T0 + S)
    assert (again.raised, again.duplicates, again.events) == (0, 1, [])
    assert m.judge(batch([(0, "x", bits("N1"), T0 + 9)]), T0 + 2 * S).updated == 1


@pytest.mark.parametrize("close_by", ["ack_then_clear", "clear_then_ack"])
def test_a_closed_alarms_samples_replayed_after_a_restart_raise_nothing(
    mk, tmp_path: Path, close_by: str
) -> None:
    """An open alarm's row carries its newest sample, so its raise and updates write no mark;
    the mark of its point is written when it closes (closed alarms are not loaded), with the
    newest violating sample, and a replay of any of them after a restart is a duplicate."""
    m = mk(clear_after=1)
    first = batch([(0, "x", bits("N1"), T0 + 5)])
    aid = m.judge(first, T0).events[0]["alarm_id"]
    assert m.judge(batch([(0, "x", bits("N1"), T0 + 6)]), T0 + S).updated == 1

    def marks() -> list[tuple]:
        return m.outbox.query("SELECT point, last_time FROM marks")

    assert marks() == []  # raise and update: the row's last_time is the mark
    if close_by == "ack_then_clear":
        m.ack(aid, "wang", now_us=T0 + 2 * S)
        m.judge(ok(0, [T0 + 7]), T0 + 3 * S)
    else:
        m.judge(ok(0, [T0 + 7]), T0 + 2 * S)
        assert marks() == []  # cleared, not acknowledged: still open
        m.ack(aid, "wang", now_us=T0 + 3 * S)
    assert m.get(aid)["status"] == "closed"
    assert marks() == [(f"{m.chars[0].path}|0|N1", T0 + 6)]
    m.close()
    m = mk(clear_after=1)
    for t in (T0 + 5, T0 + 6):
        again = m.judge(batch([(0, "x", bits("N1"), t)]), T0 + 4 * S)
        assert (again.raised, again.duplicates) == (0, 1)
    assert m.judge(batch([(0, "x", bits("N1"), T0 + 8)]), T0 + 5 * S).raised == 1


def test_the_ack_time_index_holds_acknowledged_alarms_only(mk, tmp_path: Path) -> None:
    """alarms_by_acked is partial (acked_us IS NOT NULL): raising and clearing an alarm put
    nothing in it; a file made with the earlier full index (alarms_by_ack) gets the partial one
    at open, and the Pareto's time window still searches through it."""
    m = mk()
    m.close()
    with sqlite3.connect(tmp_path / "alarms.db") as conn:  # as the earlier schema made it
        conn.execute("DROP INDEX alarms_by_acked")
        conn.execute("CREATE INDEX alarms_by_ack ON alarms (acked_us)")
    m = mk()
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    m.ack(aid, "wang", cause="operator:OP-TRAINING", now_us=T0 + S)
    m.close()
    with sqlite3.connect(tmp_path / "alarms.db") as conn:
        indexes = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'alarms'"
            )
        )
        plan = " ".join(
            row[-1]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM alarms "
                "WHERE cause_code IS NOT NULL AND acked_us >= ? AND acked_us < ?",
                (T0, T0 + 2 * S),
            )
        )
        entries = conn.execute(
            "SELECT count(*) FROM alarms INDEXED BY alarms_by_acked WHERE acked_us IS NOT NULL"
        ).fetchone()[0]
    assert "alarms_by_ack" not in indexes
    assert "WHERE acked_us IS NOT NULL" in indexes["alarms_by_acked"]
    assert "alarms_by_acked" in plan
    assert entries == 1
    m = mk()
    assert m.pareto(since_us=T0, until_us=T0 + 2 * S) == [
        ("operator", "OP-TRAINING", m._causes["OP-TRAINING"][1].text, 1)
    ]


def test_alarm_lines_are_encoded_when_first_asked_for(mk) -> None:
    """An outcome's InfluxDB lines are rendered once, on first use (the pipeline publishes the
    events first); later reads return the same list."""
    m = mk()
    out = m.judge(batch([(0, "x", bits("N1"), T0 + 7, 4.0)]), T0 + S)
    assert out._render is not None  # committed, not yet encoded
    first = out.lines
    assert out._render is None and out.lines is first and len(first) == 1
    assert first[0].startswith("alarm,characteristic=c0,chart=x,")


def test_delivery_bookkeeping_is_not_fsynced_but_events_are(mk) -> None:
    """With durability full the event transactions are FULL; the publishers' acks, retries and
    dead letters on the delivery streams are NORMAL (a lost ack only re-sends an event)."""
    m = mk(durability="full")
    levels: list[int] = []
    conn = m.outbox._connection()
    orig = m.outbox._set_sync

    def spy(c, level: str) -> None:
        orig(c, level)
        levels.append(c.execute("PRAGMA synchronous").fetchone()[0])

    m.outbox._set_sync = spy  # type: ignore[method-assign]
    m.judge(batch([(0, "x", bits("N1"), T0 + 7)]), T0 + S)
    assert levels[-1] == 2  # FULL
    seqs = [e.seq for e in m.outbox.peek("mqtt", 100, now=math.inf)]
    m.outbox.ack("mqtt", seqs)
    assert levels[-1] == 1  # NORMAL
    assert conn is m.outbox._connection()


def test_a_failed_commit_leaves_no_trace(mk, tmp_path: Path, caplog) -> None:
    """When the transaction fails nothing of the call happened: memory is reloaded from the file,
    and no ALARM line is logged for an alarm that was not stored."""
    m = mk()
    m.judge(batch([(0, "x", bits("N1"), T0)]), T0).log()
    real = m._outbox

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def transaction(self, **kw: Any) -> Any:
            raise OSError("disk on fire")

    m._outbox = Broken()  # type: ignore[assignment]
    caplog.clear()
    with pytest.raises(OSError, match="disk on fire"):
        m.judge(batch([(1, "x", bits("N1"), T0 + 1), (0, "x", bits("N1"), T0 + 2)]), T0 + S)
    assert "ALARM" not in caplog.text
    m._outbox = real
    assert [(a["characteristic"], a["count"]) for a in m.active()] == [("c0", 1)]
    out = m.judge(batch([(1, "x", bits("N1"), T0 + 1)]), T0 + 2 * S)
    assert out.raised == 1 and out.events[0]["seq"] == 2
    assert "ALARM" not in caplog.text  # written by Outcome.log, after the caller's publish
    out.log()
    out.log()  # once
    assert caplog.text.count("ALARM") == 1 and f"({out.events[0]['alarm_id']})" in caplog.text


def test_webhook_stream_gets_alarm_events_only(mk) -> None:
    """With webhook=True, alarm event payloads (not state messages) go to the webhook stream."""
    m = mk(webhook=True)
    out = m.judge(batch([(0, "x", bits("N1"), T0)]), T0)
    assert stream(m, "webhook") == out.events


def test_seq_survives_a_wall_clock_going_back(mk) -> None:
    """seq is a counter: events at an earlier now_us still get higher numbers."""
    m = mk(clear_after=1)
    m.judge(batch([(0, "x", bits("N1"), T0)]), T0 + 100 * S)
    out = m.judge(batch([(0, "x", 0, T0 + 1), (1, "x", bits("N1"), T0 + 2)]), T0)
    assert [e["seq"] for e in events(m)] == [1, 2, 3]
    assert out.events[0]["event_time"] == rfc3339(T0)


def test_retention_purges_closed_alarms_and_old_journal(mk) -> None:
    """tick() deletes closed alarms and journal rows older than retention_days; open ones stay."""
    m = mk(clear_after=1, retention_days=1)
    a0 = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    a1 = m.judge(batch([(1, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    m.ack(a0, "wang", now_us=T0)
    m.judge(ok(0, [T0 + 1]), T0)
    assert m.get(a0)["status"] == "closed"
    m.tick(T0 + 2 * 86_400 * S)
    assert m.get(a0) is None and m.get(a1) is not None
    assert {j["alarm_id"] for j in m.journal()} == {a1}


# ------------------------------------------------------------------ shelve, OOS, suppression


def test_shelve_unshelve_and_held_raise(mk) -> None:
    """Shelved point: shelved/unshelved published, acks silent, a new alarm held till unshelve."""
    m = mk(clear_after=1)
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    p = m.shelve(aid, "li", "known issue", T0 + 600 * S, now_us=T0 + S)
    assert p["event"] == "shelved" and p["user"] == "li" and p["comment"] == "known issue"
    assert p["shelved_until"] == rfc3339(T0 + 600 * S)
    assert m.active()[0]["shelved_until"] == T0 + 600 * S
    assert m.ack(aid, "li", now_us=T0 + 2 * S)["seq"] is None  # not published while shelved
    cleared = m.judge(ok(0, [T0 + 1]), T0 + 3 * S)
    assert [e["event"] for e in cleared.events] == ["cleared"]  # the clear is published
    held = m.judge(batch([(0, "x", bits("N1"), T0 + 2)]), T0 + 4 * S)
    assert held.raised == 1 and held.held == 1 and held.events == []
    new_id = m.active()[0]["alarm_id"]
    assert m.active()[0]["held"] == "shelved"
    out = m.unshelve(aid, "li", "done", now_us=T0 + 5 * S)
    assert [(e["event"], e["alarm_id"]) for e in out.events] == [
        ("unshelved", aid),
        ("raised", new_id),
    ]
    assert m.unshelve(aid, "li", now_us=T0 + 6 * S).events == []  # idempotent
    assert [e["event"] for e in events(m)] == [
        "raised",
        "shelved",
        "cleared",
        "unshelved",
        "raised",
    ]


def test_shelve_expiry_and_errors(mk) -> None:
    """tick() unshelves expired points (user system); bad shelving requests are refused."""
    m = mk()
    aid = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    with pytest.raises(AlarmError, match="not in the future"):
        m.shelve(aid, "li", "", T0, now_us=T0)
    with pytest.raises(AlarmError, match="no open alarm"):
        m.shelve("A-nope", "li", "", T0 + S, now_us=T0)
    with pytest.raises(AlarmError, match="user"):
        m.shelve(aid, "", "", T0 + S, now_us=T0)
    m.shelve(aid, "li", "", T0 + 60 * S, now_us=T0)
    assert m.tick(T0 + 59 * S).events == []
    out = m.tick(T0 + 60 * S)
    assert [(e["event"], e["user"]) for e in out.events] == [("unshelved", "system")]
    assert m.counts()["shelved"] == 0
    assert m.expire_shelves(T0 + 61 * S).events == []


def test_out_of_service_suppresses_and_records(mk) -> None:
    """No raises while out of service; one suppressed row per point and period, with the count."""
    m = mk()
    out = m.set_out_of_service(0, True, "wang", "probe swap", now_us=T0)
    assert [(s["state"], s["reason"]) for s in out.states] == [
        ("suspended", "out_of_service: probe swap")
    ]
    assert m.set_out_of_service(0, True, "wang", now_us=T0).states == []  # unchanged
    out = m.judge(batch([(0, "x", bits("N1"), T0 + t) for t in range(3)]), T0 + S)
    out2 = m.judge(batch([(0, "x", bits("N1"), T0 + 5)]), T0 + 2 * S)
    assert out.raised == out2.raised == 0 and out.suppressed == 3 and out2.suppressed == 1
    # the state content changes once (the limits id is now known), not per violation
    assert [(x["state"], x["limits_id"]) for x in out.states] == [("suspended", "LIM-1")]
    assert out2.states == [] and out.events == out2.events == []
    rows = [j for j in m.journal() if j["event"] == "suppressed"]
    assert [(r["path"], r["chart"], r["rule"], r["count"]) for r in rows] == [
        ("S1/A1/L1/ST1/c0", "x", "N1", 4)
    ]
    assert rows[0]["reason"].startswith("out_of_service")
    back = m.set_out_of_service(0, False, "wang", now_us=T0 + 3 * S)
    assert [s["state"] for s in back.states] == ["in_control"]
    assert m.judge(batch([(0, "x", bits("N1"), T0 + 9)]), T0 + 4 * S).raised == 1
    assert [j["event"] for j in m.journal() if j["event"].endswith("service")] == [
        "out_of_service",
        "in_service",
    ]
    with pytest.raises(AlarmError, match="index 9"):
        m.set_out_of_service(9, True, "wang", now_us=T0)


def test_process_state_suppression(mk) -> None:
    """Idle/changeover/setup (mapped from the tag's raw value) suppress raises in the scope."""
    cs = chars(2) + chars(1, line="L2")
    binding = ProcessStateBinding(
        line="L1", source="plc", binding="mode", map={"0": "idle", "1": "running", "2": "setup"}
    )
    m = mk(cs, process_state=[binding.model_dump()])
    m.judge(ok(0, [T0]), T0)
    out = m.set_process_state("line=L1", 2.0, T0 + S)
    assert [(s["state"], s["reason"]) for s in out.states] == [
        ("suspended", "process_state: setup (line=L1)"),
        ("suspended", "process_state: setup (line=L1)"),
    ]
    assert m.set_process_state(0, 2, T0 + S).states == []  # same state: nothing
    out = m.judge(
        batch(
            [
                (0, "x", bits("N1"), T0 + 1),
                (1, "mr", bits("N2"), T0 + 1),
                (2, "x", bits("N1"), T0 + 1),
            ]
        ),
        T0 + 2 * S,
    )
    assert out.raised == 1 and out.events[0]["line"] == "L2" and out.suppressed == 2
    out = m.set_process_state("line=L1", 1, T0 + 3 * S)
    assert [s["state"] for s in out.states] == ["in_control", "in_control"]
    assert m.judge(batch([(0, "x", bits("N1"), T0 + 2)]), T0 + 4 * S).raised == 1
    journal = m.journal()
    assert [(j["event"], j["reason"]) for j in journal if j["event"] == "process_state"] == [
        ("process_state", "setup"),
        ("process_state", "running"),
    ]
    assert len([j for j in journal if j["event"] == "suppressed"]) == 2
    # unmapped values are the state name; unknown scope is an error
    assert m.set_process_state("line=L1", "changeover", T0 + 5 * S).states
    with pytest.raises(AlarmError, match="no process_state binding 'line=L9'"):
        m.set_process_state("line=L9", 0, T0)
    m.close()
    m = mk(cs, process_state=[binding.model_dump()])
    assert m.counts()["suspended"] == 2  # restored from the file


# ----------------------------------------------------------------------------- quiet


def test_quiet_records_samples_only_when_judging_would_commit_nothing(mk) -> None:
    """``quiet`` takes in-control points of seen characteristics without a transaction; it
    declines, changing nothing, whenever judging them would write or publish something."""
    cs = chars(3)
    m = mk(cs, clear_after=2, flood={"max_alarms": 1, "window_s": 5})

    def quiet(char: int, t: int, chart_key: int = 0, lim: str = "LIM-1") -> bool:
        return m.quiet([2 * char + chart_key], [t], [f"P{t}"], [lim])

    def rings(char: int, chart_key: int = 0) -> tuple[int, list]:
        k = 2 * char + chart_key
        return int(m._count[k]), [x for x in m._ring_s[k] if x is not None]

    assert not quiet(0, T0 + 1)  # never seen: judging records it (the seen table)
    assert rings(0) == (0, [])
    m.judge(ok(0, [T0 + 1]), T0)
    m.judge(ok(1, [T0 + 1], chart="mr"), T0)
    pending = len(stream(m))
    assert quiet(0, T0 + 2) and rings(0) == (2, [f"P{T0 + 2}"])
    assert len(stream(m)) == pending  # nothing written
    assert not quiet(0, T0 + 3, lim="LIM-2") and rings(0) == (2, [f"P{T0 + 2}"])  # new limits
    assert quiet(1, T0 + 3) and rings(1) == (1, [f"P{T0 + 3}"])  # c1 seen through its mr chart
    # an open alarm on the key: its in-control points count towards clearing it
    m.judge(batch([(2, "x", bits("N1"), T0 + 5)]), T0 + S)
    before = rings(2)
    assert not quiet(2, T0 + 6) and rings(2) == before
    # the other chart's points leave it and the state (out of control) as they are
    assert quiet(2, T0 + 6, chart_key=1) and rings(2, 1) == (1, [f"P{T0 + 6}"])
    # out of service: the state code is checked, not assumed
    m.judge(ok(0, [T0 + 7]), T0 + S)
    m.set_out_of_service(0, True, "op", now_us=T0 + 2 * S)
    assert quiet(0, T0 + 8)  # its state (out of service) stays as it is
    # an open flood alarm may end at any call: judging decides
    m.judge(batch([(1, "x", bits("N1"), T0 + 9), (2, "mr", bits("N1"), T0 + 9)]), T0 + 3 * S)
    assert m.counts()["floods"] == 1
    assert not quiet(0, T0 + 10)
    assert m.tick(T0 + 30 * S).events == []  # calm from now
    assert not quiet(0, T0 + 10)
    assert [e["rule"] for e in m.judge(ok(0, [T0 + 10]), T0 + 40 * S).events] == ["FLOOD"]
    assert quiet(0, T0 + 11)
    # more rows than the row-by-row limit: declined
    assert not m.quiet([0] * 33, [T0 + 20 + j for j in range(33)], [None] * 33, ["LIM-1"] * 33)


def test_sample_rings_survive_a_restart_through_their_saved_copy(mk, tmp_path: Path) -> None:
    """``rings_now`` + ``encode_rings`` keep, per (characteristic, chart), its count and the
    samples its alarms may quote; ``restore_rings`` puts them back, or refuses whole."""
    m = mk()
    m.judge(batch([(0, "x", 0, T0 + t, None, f"S{t}") for t in range(70)]), T0)
    m.judge(batch([(1, "mr", 0, T0 + 1, None, None)]), T0)
    saved = m.encode_rings(m.rings_now())
    doc = json.loads(saved)
    assert doc["keys"] == [0, 3] and doc["counts"] == [70, 1]  # c0's x chart, c1's mr chart
    assert doc["times"][1][0] == T0 + 1 and doc["serials"][1] == [None] * 64
    assert sorted(doc["serials"][0]) == sorted(f"S{t}" for t in range(6, 70))
    other = AlarmManager(
        tmp_path / "other.db", chars(), AlarmsConfig.model_validate({}), gateway_id="gw-1"
    )
    try:
        assert other.restore_rings(saved) == 2
        assert int(other._count[0]) == 70 and int(other._count[3]) == 1
        assert (other._ring_t == m._ring_t).all() and (other._ring_s == m._ring_s).all()
        # an N2 raised now quotes the saved samples (same as the manager that saw them)
        a = m.judge(batch([(0, "x", bits("N2"), T0 + 70, None, "S70")]), T0 + S).events[0]
        b = other.judge(batch([(0, "x", bits("N2"), T0 + 70, None, "S70")]), T0 + S).events[0]
        assert a["samples"] == b["samples"] == [f"S{t}" for t in range(62, 71)]
        before = other._count.copy()
        for bad, said in [
            (b'{"schema": "x"}', "not a shopspc.alarm-rings/1"),
            (saved.replace(b"S1/A1/L1/ST1/c2", b"S1/A1/L1/ST1/c9"), "other characteristics"),
            (saved.replace(b'"keys":[0,3]', b'"keys":[0,99]'), "out of range"),
            (saved.replace(b'"counts":[70,1]', b'"counts":[70,0]'), "without samples"),
            (saved.replace(b'"counts":[70,1]', b'"counts":[70]'), "differ in length"),
            (saved.replace(b'"S69"', b'{"a":1}'), "serials \\(text or null\\)"),
        ]:
            with pytest.raises(ValueError, match=said):
                other.restore_rings(bad)
        assert (other._count == before).all()
    finally:
        other.close()


# ----------------------------------------------------------------------------- flood


def test_flood_summarises_and_keeps_detail(mk) -> None:
    """Beyond max_alarms per window on a line: one FLOOD alarm, the rest held; clears when calm."""
    cs = chars(6) + chars(1, line="L2")
    m = mk(cs, flood={"max_alarms": 2, "window_s": 10})
    out = m.judge(batch([(i, "x", bits("N1"), T0 + i) for i in range(5)]), T0)
    assert out.raised == 6 and out.held == 3
    assert [(e["characteristic"], e["rule"]) for e in out.events] == [
        ("c0", "N1"),
        ("c1", "N1"),
        ("_flood", "FLOOD"),
    ]
    flood = out.events[2]
    assert flood["station"] == "_line" and flood["ucl"] == 2.0 and flood["value"] == 3.0
    assert flood["limits_id"] == "flood:2/10s" and flood["held"] == 0
    held = [a for a in m.active() if a["held"]]
    assert len(held) == 3 and all(a["held"] == f"flood:{flood['alarm_id']}" for a in held)
    # another line is not affected
    assert m.judge(batch([(6, "x", bits("N1"), T0 + 9)]), T0 + S).events[0]["line"] == "L2"
    assert m.judge(batch([(5, "x", bits("N1"), T0 + 10)]), T0 + 2 * S).events == []
    assert m.counts()["floods"] == 1 and m.counts()["held"] == 4
    # acking a held alarm is recorded, not published
    n_events = len(events(m))
    assert m.ack(held[0]["alarm_id"], "wang", now_us=T0 + 3 * S)["seq"] is None
    assert len(events(m)) == n_events
    # held alarms are in the journal with their payload; queryable
    raised = [j for j in m.journal() if j["event"] == "raised" and not j["published"]]
    assert len(raised) == 4 and all(j["payload"]["alarm_id"] for j in raised)
    assert m.tick(T0 + 11 * S).events == []  # rate back to ≤ 2: calm from now
    out = m.tick(T0 + 21 * S)
    assert [(e["event"], e["rule"], e["held"]) for e in out.events] == [("cleared", "FLOOD", 4)]
    assert m.counts()["floods"] == 0 and m.counts()["held"] == 4  # acked, still active
    assert m.ack(flood["alarm_id"], "wang", now_us=T0 + 22 * S)["event"] == "acknowledged"
    # held alarms stay unpublished for their whole life
    assert (
        m.judge(ok(0, [T0 + 30 + t for t in range(5)]), T0 + 23 * S).events[0]["characteristic"]
        == "c0"
    )
    out = m.judge(batch([(3, "x", 0, T0 + 40 + t) for t in range(5)]), T0 + 24 * S)
    assert out.cleared == 1 and out.events == []


def test_flood_survives_a_restart(mk) -> None:
    """An active flood alarm is restored at open and still clears when the line calms down."""
    m = mk(chars(4), flood={"max_alarms": 1, "window_s": 5})
    out = m.judge(batch([(i, "x", bits("N1"), T0 + i) for i in range(3)]), T0)
    flood_id = next(e["alarm_id"] for e in out.events if e["rule"] == "FLOOD")
    m.close()
    m = mk(chars(4), flood={"max_alarms": 1, "window_s": 5})
    assert m.counts()["floods"] == 1
    # still held after the restart
    assert m.judge(batch([(3, "x", bits("N1"), T0 + 9)]), T0 + S).held == 1
    assert m.tick(T0 + 5 * S).events == []  # calm since T0 + 1 s: not a whole window yet
    out = m.tick(T0 + 6 * S)
    assert [(e["alarm_id"], e["event"]) for e in out.events] == [(flood_id, "cleared")]


def test_queries_journal_get_and_prefix(mk) -> None:
    """journal() filters by time and path with a limit; get() has the payload; prefix is used."""
    m = mk(prefix="plant7/spc")
    out = m.judge(batch([(0, "x", bits("N1"), T0), (1, "x", bits("N1"), T0)]), T0 + S)
    m.judge(batch([(0, "x", bits("N1"), T0 + 1)]), T0 + 2 * S)
    assert stream(m)[0]["topic"] == "plant7/spc/alarm/S1/A1/L1/ST1/c0"
    assert [j["event"] for j in m.journal(path="S1/A1/L1/ST1/c0")] == ["raised", "updated"]
    assert [j["event"] for j in m.journal(since_us=T0 + 2 * S)] == ["updated"]
    assert [j["event"] for j in m.journal(until_us=T0 + 2 * S)] == ["raised", "raised"]
    assert len(m.journal(limit=1)) == 1
    row = m.journal()[0]
    assert row["seq"] == 1 and row["published"] == 1 and row["payload"] == out.events[0]
    got = m.get(out.events[0]["alarm_id"])
    assert got["payload"]["limits_id"] == "LIM-1" and got["count"] == 2
    assert got["limits_id"] == "LIM-1"
    assert m.get("A-nope") is None
    assert [a["path"] for a in m.active("S1/A1/L1/ST1/c1")] == ["S1/A1/L1/ST1/c1"]


def test_history_searches_hold_no_lock_judging_needs(mk) -> None:
    """journal() and pareto() read a snapshot without the manager's lock, so a long search
    from the API never holds up judging; find() searches so too (it takes the lock only to
    describe what it found, as get() does)."""
    import threading

    m = mk()
    a0 = m.judge(batch([(0, "x", bits("N1"), T0)]), T0).events[0]["alarm_id"]
    m.ack(a0, "wang", cause="MC-FAULT", now_us=T0 + S)
    m.judge(batch([(1, "x", bits("N1"), T0 + 1)]), T0 + S)
    out: dict[str, Any] = {}

    def search() -> None:
        out["journal"] = m.journal()
        out["pareto"] = m.pareto()

    with m._lock:  # as judging holds it
        t = threading.Thread(target=search, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "a history search waited for the manager's lock"
    assert [j["event"] for j in out["journal"]] == ["raised", "acknowledged", "raised"]
    assert out["pareto"] == [("machine", "MC-FAULT", "Machine fault", 1)]
    found = m.find("status != ?", ("closed",), 10)
    assert [a["path"] for a in found] == ["S1/A1/L1/ST1/c1", "S1/A1/L1/ST1/c0"]
    assert found == [m.get(a["alarm_id"]) for a in found]
    assert m.find("path = ?", ("S1/A1/L1/ST1/c0",), 1) == [m.get(a0)]


def test_concurrent_acks_and_judging(mk) -> None:
    """The API/MQTT thread may ack while the pipeline judges: seqs stay gapless and unique."""
    import threading

    m = mk(clear_after=2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def acker() -> None:
        try:
            for _ in range(300):
                if stop.is_set():
                    break
                for a in m.active()[:3]:
                    m.ack(a["alarm_id"], "op", now_us=T0)
        except BaseException as e:  # reported below
            errors.append(e)

    th = threading.Thread(target=acker)
    th.start()
    try:
        t = T0
        for k in range(60):
            rows = []
            for j in range(6):
                t += 1
                rows.append((j % 3, "x", bits("N1") if (k + j) % 4 == 0 else 0, t))
            m.judge(batch(rows), T0 + k)
    finally:
        stop.set()
        th.join(timeout=30)
    assert not errors and not th.is_alive()
    seqs = [e["seq"] for e in events(m)]
    assert seqs == list(range(1, len(seqs) + 1))
    pairs = [(e["alarm_id"], e["event"]) for e in events(m)]
    assert len(pairs) == len(set(pairs))


def test_counts(mk) -> None:
    """Self-metrics."""
    m = mk()
    m.judge(batch([(0, "x", bits("N1"), T0)]), T0)
    assert m.counts() == {
        "active": 1,
        "acknowledged": 0,
        "cleared_unacked": 0,
        "held": 0,
        "shelved": 0,
        "out_of_service": 0,
        "suspended": 0,
        "floods": 0,
        "seq": 1,
    }


# -------------------------------------------------------------------------- kill -9

N_CHARS = 8


def _child_batches(seed: int, n: int) -> list[PointBatch]:
    rng = random.Random(seed)
    out = []
    t = T0
    for _ in range(n):
        rows = []
        for _ in range(rng.randint(1, 30)):
            t += 1
            mask = bits(rng.choice(["N1", "N2", "N5"])) if rng.random() < 0.2 else 0
            rows.append((rng.randrange(N_CHARS), rng.choice(["x", "mr"]), mask, t))
        out.append(batch(rows))
    return out


def main(argv: Sequence[str]) -> None:
    """Child for the kill -9 test: judge a fixed burst, print ``C <seq>`` after each commit."""
    path, seed = argv[0], int(argv[1])
    cfg = AlarmsConfig(clear_after=2, flood={"max_alarms": 1000, "window_s": 1})
    with AlarmManager(path, chars(N_CHARS), cfg, gateway_id="gw") as m:
        for k, b in enumerate(_child_batches(seed, 3000)):
            m.judge(b, T0 + k * 1000)
            if k % 7 == 3:
                for a in m.active()[:2]:
                    m.ack(a["alarm_id"], "op", now_us=T0 + k * 1000 + 1)
            sys.stdout.write(f"C {m.outbox.counter(SEQ_COUNTER)}\n")
            sys.stdout.flush()


def _check_file(path: Path) -> int:
    with Outbox(path) as outbox:
        assert outbox.check() == []
        env = [json.loads(e.payload) for e in outbox.peek("mqtt", 10**7, now=math.inf)]
        seqs = [e["payload"]["seq"] for e in env if "/alarm/" in e["topic"]]
        assert seqs == list(range(1, len(seqs) + 1)), "alarm seqs must be gapless and increasing"
        assert outbox.counter(SEQ_COUNTER) == len(seqs)
        pairs = [
            (e["payload"]["alarm_id"], e["payload"]["event"])
            for e in env
            if "/alarm/" in e["topic"]
        ]
        assert len(pairs) == len(set(pairs)), "an (alarm_id, event) pair was published twice"
        journal = outbox.query(
            "SELECT alarm_id, event FROM journal WHERE event IN ('raised', 'cleared', 'acknowledged')"
        )
        assert len(journal) == len(set(journal))
        return len(seqs)


@pytest.mark.slow
def test_kill_minus_9_loses_nothing_and_raises_nothing_twice(tmp_path: Path) -> None:
    """SIGKILL a judging child at random moments; reopen; rerun the same burst (a replay)."""
    path = tmp_path / "alarms.db"
    rng = random.Random(5)
    reported = 0
    for round_ in range(3):
        stop_after = rng.randint(3, 120)
        with subprocess.Popen(
            [sys.executable, __file__, str(path), "11"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        ) as proc:
            assert proc.stdout is not None
            try:
                for _ in range(stop_after):
                    line = proc.stdout.readline()
                    if not line.endswith("\n"):
                        break
                    reported = max(reported, int(line.split()[1]))
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                rest, err = proc.communicate(timeout=30)
            for line in rest.splitlines(keepends=True):
                if line.endswith("\n"):
                    reported = max(reported, int(line.split()[1]))
            assert proc.returncode == -signal.SIGKILL, f"child ended by itself: {err}"
        stored = _check_file(path)
        assert stored >= reported, f"round {round_}: {reported} seqs reported, {stored} stored"
    assert reported > 0


if __name__ == "__main__":
    main(sys.argv[1:])


@given(st.integers(-(10**15), 10**17))
def test_rfc3339_equals_datetime_formatting(t: int) -> None:
    from datetime import UTC, datetime, timedelta

    from collector.alarms import rfc3339

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert rfc3339(t) == (epoch + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
