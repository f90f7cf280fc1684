"""The alarm latency benchmark: its plan and summary (unit) and a tiny real run (integration).

No figure of the run is asserted (shared box); only that it works: every
planted value's alarm reaches the subscriber and no other alarm is raised.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_alarm_latency import (
    IN_CONTROL,
    PLANTED_VALUE,
    config_text,
    main,
    messages,
    plan,
    publish_packet,
    summarize,
)
from collector.config import parse_config
from tests.servers import require_binary


def test_plan_plants_on_characteristics_that_had_time_to_clear() -> None:
    """Planted values are spread over the characteristics, ≥ 10 in-control values apart on each."""
    p = plan(1000, 2.0, 7, 50.0)
    assert (p.messages, p.every, p.planted) == (2000, 20, 100)
    since: dict[str, int] = {}
    planted = []
    for topic, body, serial in messages(p, "bench/x", 1_000):
        doc = json.loads(body)
        char = topic.rsplit("/", 1)[1]
        if serial is None:
            assert doc["v"] in IN_CONTROL and doc["s"].startswith("m")
            since[char] = since.get(char, 0) + 1
        else:
            assert doc["v"] == PLANTED_VALUE and doc["s"] == serial
            if char in planted:
                assert since[char] >= 10, f"{serial} on {char} too soon"
            since[char] = 0
            planted.append(char)
    assert len(planted) == p.planted
    assert len(set(planted)) == 7


def test_plan_refuses_plants_too_close() -> None:
    """Fewer than 10 messages between plants could land a plant on an alarmed characteristic."""
    with pytest.raises(ValueError, match="at least 10"):
        plan(100, 1.0, 10, 50.0)


def test_summarize_percentiles_stages_and_targets() -> None:
    """Nearest-rank percentiles in ms from the intended time; a missing alarm fails every target."""
    ms = 1_000_000
    planted = [(f"p{k}", k * 10 * ms, k * 10 * ms + ms // 10) for k in range(100)]
    arrived = {f"p{k}": k * 10 * ms + (k + 1) * ms // 10 for k in range(100)}
    out = summarize(5000, planted, arrived)
    assert out["matched"] == out["planted"] == 100
    assert out["latency_ms"] == {"p50": 5.0, "p90": 9.0, "p99": 9.9, "max": 10.0}
    assert out["stages_ms"]["producer_lag"]["max"] == 0.1
    assert out["targets"]["p50_ms"] == {"target": 2.0, "measured": 5.0, "met": False}
    assert out["targets"]["p99_ms"]["met"] is True
    arrived.pop("p0")
    assert summarize(5000, planted, arrived)["targets"]["p99_ms"]["met"] is False
    probes = summarize(
        10000,
        planted[:1],
        {"p0": 9 * ms},
        {
            "received": {"p0": ms},
            "at_gateway": {"p0": 2 * ms},
            "judging": {"p0": 2 * ms + ms // 2},
            "transaction": {"p0": 3 * ms},
            "committed": {"p0": 4 * ms},
            "publishing": {"p0": 5 * ms},
            "puback": {"p0": 7 * ms},
        },
    )
    assert {k: v["p50"] for k, v in probes["stages_ms"].items()} == {
        "producer_lag": 0.1,
        "publish_to_receive": 0.9,
        "receive_to_emit": 1.0,
        "gateway_to_commit": 2.0,
        "queued": 0.5,
        "judged": 0.5,
        "alarm_transaction": 1.0,
        "commit_to_publish": 1.0,
        "publish_to_subscriber": 4.0,
        "publish_to_puback": 2.0,
    }
    assert set(probes["targets"]) == {"p99_ms"}
    assert probes["slowest"]["stages_ms"]["alarm_transaction"] == 1.0


def test_summarize_splits_the_slowest_values_by_stage() -> None:
    """The slowest 2 % (at least 3) of the planted values, their mean latency and stages."""
    ms = 1_000_000
    planted = [(f"p{k}", k * 10 * ms, k * 10 * ms) for k in range(200)]
    # p0..p195 take 1 ms, all of it publish_to_receive; p196..p199 take 5 ms, 4 of it judging
    arrived = {f"p{k}": k * 10 * ms + (5 if k >= 196 else 1) * ms for k in range(200)}
    received = {f"p{k}": k * 10 * ms + ms for k in range(200)}
    probes = {
        "received": received,
        "at_gateway": received,
        "judging": received,
        "transaction": {s: t + (4 * ms if int(s[1:]) >= 196 else 0) for s, t in received.items()},
    }
    slow = summarize(5000, planted, arrived, probes)["slowest"]
    assert slow["values"] == 4 and slow["latency_ms"] == 5.0
    assert slow["stages_ms"]["publish_to_receive"] == 1.0
    assert slow["stages_ms"]["judged"] == 4.0
    assert slow["stages_ms"]["producer_lag"] == 0.0


def test_config_loads() -> None:
    """The generated gateway config passes the same loader as ``shopspc run``."""
    cfg, _ = parse_config(config_text(1000, 3, 1883, 8428, "normal"))
    assert cfg.alarms.durability == "normal" and cfg.alarms.clear_after == 1
    assert cfg.alarms.mqtt is not None and len(cfg.characteristics) == 3
    assert {sec.kind for sec in cfg.sinks.values()} == {"influxdb"}
    local, models = parse_config(
        config_text(1000, 3, 1883, 8428, "full", "localstore", "/tmp/run dir/series.sqlite")
    )
    assert {sec.kind for sec in local.sinks.values()} == {"localstore"}
    assert str(models["local"].path) == "/tmp/run dir/series.sqlite"  # never the working dir
    floor, models = parse_config(config_text(1000, 3, 1883, 1, "full", tag="r1000-floor"))
    assert floor.gateway.id == "bench-lat-r1000-floor"
    assert [s.topic for s in models["mqtt"].subscriptions] == ["bench/r1000-floor/+"]


@pytest.mark.integration
def test_tiny_run_matches_every_planted_alarm() -> None:
    """mosquitto + VictoriaMetrics + the gateway (and the floor relay) for 1 s at 500 msg/s: every
    plant alarmed, nothing else."""
    require_binary("mosquitto")
    require_binary("victoria-metrics")
    out = main(
        ["--rates", "500", "--seconds", "1", "--chars", "10", "--plants-per-s", "20", "--floor"]
    )
    floor = out["runs"]["floor/500"]  # the relay in place of the gateway
    assert "error" not in floor, floor
    assert floor["planted"] == floor["matched"] == 20
    assert floor["unplanted_alarms"] == 0
    assert floor["producer"]["sent"] == floor["producer"]["acked"] == 500
    assert set(floor["stages_ms"]) == {
        "producer_lag",
        "publish_to_receive",
        "commit_to_publish",
        "publish_to_subscriber",
        "outbox_commit_fsync",
    }
    assert floor["stages_ms"]["outbox_commit_fsync"]["max"] > 0
    run = out["runs"]["full/500"]
    assert "error" not in run, run
    assert run["planted"] == 20
    assert run["matched"] == run["planted"]
    assert run["unplanted_alarms"] == 0
    assert run["producer"]["sent"] == run["producer"]["acked"] == 500
    assert run["gateway"]["values_in"] == 500
    assert run["gateway"]["sink_write_requests"] > 0  # series flushed to VictoriaMetrics meanwhile
    assert run["latency_ms"]["max"] is not None
    assert set(run["stages_ms"]) == {
        "producer_lag",
        "publish_to_receive",
        "receive_to_emit",
        "gateway_to_commit",
        "queued",
        "judged",
        "alarm_transaction",
        "commit_to_publish",
        "publish_to_subscriber",
        "publish_to_puback",
    }


def test_publish_packet_is_mqtt_311_qos1() -> None:
    """The producer's hand-encoded PUBLISH: type 3 QoS 1, remaining length as a varint, packet id."""
    assert publish_packet("a/b", b"xy", 7) == b"\x32\x09\x00\x03a/b\x00\x07xy"
    long = publish_packet("t", b"x" * 200, 65535)
    assert long[:3] == b"\x32\xcd\x01" and long[3:8] == b"\x00\x01t\xff\xff"
