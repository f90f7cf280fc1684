"""Unit tests of the gateway pipeline with a fake source and a recording sink (no servers)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.api.recent import RecentPoints
from collector.config import GatewayConfig
from collector.limitstore import LimitsStore
from collector.outbox import Outbox
from collector.pipeline import BindingIndex, Gateway, alarm_id, batch_ranks, violation_codes
from connectors.base import ConnectorError, ConnectorStats, Quality, Sample
from connectors.influxdb.sink import RejectedLines, WriteResult
from connectors.localstore.parse import parse_line
from spc.rules import BITS

T0 = 1_764_000_000_000_000


def _char(cid: str, **over: Any) -> dict[str, Any]:
    base = {
        "id": cid,
        "site": "s1",
        "area": "a1",
        "line": "l1",
        "station": "st1",
        "chart": "imr",
        "value": {"source": "dev", "binding": cid},
        "limits": {"center": 10.0, "sigma": 1.0},
        "context": {
            "operator": {"source": "dev", "binding": "operator"},
            "machine": {"static": "M-1"},
            "material_lot": {"source": "dev", "binding": "dev.lot"},
            "environment": {"temperature": {"static": 20.5}},
        },
    }
    base.update(over)
    return base


def _cfg(*chars: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "gw-t"},
            "sources": {"dev": {"kind": "mqtt"}},
            "characteristics": list(chars),
        }
    )


class FakeSource:
    """Emits the given batches once, then waits to be cancelled."""

    def __init__(self, batches: Sequence[Sequence[Sample]], name: str = "dev") -> None:
        self.name = name
        self.stats = ConnectorStats()
        self.batches = batches
        self.done = asyncio.Event()

    async def run(self, emit: Any) -> None:
        for b in self.batches:
            await emit(b)
        self.done.set()
        await asyncio.Event().wait()


async def _run_until_sent(gw: Gateway, src: FakeSource) -> None:
    """Run ``gw`` until ``src`` has emitted all it has, then stop it gracefully (bounded)."""
    stop = asyncio.Event()

    async def stopper() -> None:
        await asyncio.wait_for(src.done.wait(), 20)
        stop.set()

    async with asyncio.timeout(30):
        await asyncio.gather(gw.run(stop), stopper())


def _text(batch: Sequence[str | bytes]) -> list[str]:
    return [b.decode() if isinstance(b, bytes) else b for b in batch]


class RecordingSink:
    """Keeps every line written."""

    def __init__(self) -> None:
        self.name = "rec"
        self.stats = ConnectorStats()
        self.precision = "us"
        self.lines: list[str] = []
        self.closed = False

    async def write(self, batch: Sequence[str | bytes]) -> Any:
        self.lines.extend(_text(batch))
        return None

    async def close(self) -> None:
        self.closed = True


def _s(binding: str, value: float, k: int, *, serial: str | None = None, **kw: Any) -> Sample:
    return Sample(
        binding,
        value,
        kw.pop("quality", Quality.GOOD),
        T0 + k * 1000,
        T0 + k * 1000,
        serial=serial,
        **kw,
    )


def _gw(tmp_path, cfg: GatewayConfig, **kw: Any) -> Gateway:
    return Gateway(cfg, {}, data_dir=tmp_path, sources=[], sinks=[RecordingSink()], **kw)


def _parsed(lines: list[str], measurement: str) -> list[Any]:
    return [p for p in map(parse_line, lines) if p.measurement == measurement]


def test_binding_index_and_context_snapshot() -> None:
    cfg = _cfg(_char("a"), _char("b", value={"source": "dev", "binding": "a"}))
    idx = BindingIndex(cfg.characteristics)
    assert idx.values[("dev", "a")] == [0, 1]
    # context from a binding sample (string via fields['raw']) and from fields of a value sample
    lot = Sample("dev.lot", math.nan, Quality.BAD, T0, fields={"raw": "LOT-7"}, status="NonNumeric")
    val = Sample("a", 1.0, Quality.GOOD, T0, fields={"operator": "Ann"})
    assert idx.observe("dev", [lot, val]) == 1
    snap = idx.snapshot(0)
    assert snap == {"operator": "Ann", "machine": "M-1", "lot": "LOT-7", "env_temperature": 20.5}


def test_measurement_line_contract_and_context_as_fields(tmp_path) -> None:
    gw = _gw(tmp_path, _cfg(_char("a")))
    try:
        lines = gw.process([("dev", [_s("a", 10.5, 1, serial="P1", fields={"operator": "Ann"})])])
        (m,) = _parsed(lines, "measurement")
        assert m.tags == {
            "gateway": "gw-t",
            "line": "l1",
            "station": "st1",
            "characteristic": "a",
            "source": "mqtt",
        }
        assert m.fields["value"] == 10.5
        assert m.fields["quality"] == "good"
        assert m.fields["serial"] == "P1"
        assert m.fields["operator"] == "Ann"
        assert m.fields["machine"] == "M-1"
        assert m.time_us == T0 + 1000
        (p,) = _parsed(lines, "spc")
        assert p.tags["chart"] == "imr"
        assert p.fields["statistic"] == 10.5
        assert p.fields["center"] == 10.0
        assert p.fields["ucl"] == pytest.approx(13.0)
        assert p.fields["violations"] == ""
        assert p.fields["limits_id"].startswith("L-")
    finally:
        gw.close()


def test_duplicates_dropped_by_serial_not_value(tmp_path) -> None:
    gw = _gw(tmp_path, _cfg(_char("a")))
    try:
        gw.process([("dev", [_s("a", 10.0, 1, serial="P1"), _s("a", 10.0, 2, serial="P2")])])
        gw.process([("dev", [_s("a", 11.0, 3, serial="P1")])])
        assert gw.stats.duplicates == 1
        assert gw.stats.points == 2
        # a bad read of P3 does not hide the good re-read of P3
        bad = Sample("a", math.nan, Quality.BAD, T0, serial="P3", status="BadTimeout")
        gw.process([("dev", [bad, _s("a", 10.0, 4, serial="P3")])])
        assert gw.stats.duplicates == 1 and gw.stats.points == 3
    finally:
        gw.close()


def test_bad_samples_stored_not_charted(tmp_path) -> None:
    gw = _gw(tmp_path, _cfg(_char("a")))
    try:
        bad = Sample("a", math.nan, Quality.BAD, T0, status="BadTimeout")
        lines = gw.process([("dev", [bad])])
        (m,) = _parsed(lines, "measurement")
        assert m.fields["quality"] == "bad"
        assert m.fields["status"] == "BadTimeout"
        assert "value" not in m.fields
        assert _parsed(lines, "spc") == []
        assert gw.stats.bad == 1 and gw.stats.points == 0
    finally:
        gw.close()


def test_alarm_line_for_a_violation(tmp_path) -> None:
    seen = []
    gw = Gateway(
        _cfg(_char("a", severity={"default": "minor", "N1": "critical"})),
        {},
        data_dir=tmp_path,
        sources=[],
        sinks=[RecordingSink()],
        on_alarm=seen.append,
    )
    try:
        lines = gw.process([("dev", [_s("a", 10.0, 1), _s("a", 20.0, 2, serial="P9")])])
        spc = _parsed(lines, "spc")
        assert spc[1].fields["violations"] == "N1"
        # the jump is beyond the X limits and its moving range beyond the MR limits
        x_alarm, mr_alarm = _parsed(lines, "alarm")
        assert x_alarm.tags["rule"] == "N1" and x_alarm.tags["severity"] == "critical"
        assert x_alarm.fields["event"] == "raised"
        assert (x_alarm.tags["chart"], mr_alarm.tags["chart"]) == ("x", "mr")
        assert x_alarm.fields["value"] == 20.0 and mr_alarm.fields["value"] == 10.0
        lid = spc[1].fields["limits_id"]
        path = "s1/a1/l1/st1/a"
        assert x_alarm.fields["alarm_id"] == alarm_id(path, "N1", lid, T0 + 2000, "P9", chart="x")
        assert mr_alarm.fields["alarm_id"] == alarm_id(path, "N1", lid, T0 + 2000, "P9", chart="mr")
        assert x_alarm.fields["alarm_id"] != mr_alarm.fields["alarm_id"]
        assert [a.chart for a in seen] == ["x", "mr"]
        assert seen[0].rule == "N1" and seen[0].serial == "P9"
    finally:
        gw.close()


def test_violation_codes() -> None:
    assert violation_codes(0) == []
    assert violation_codes(1 << BITS["N1"] | 1 << BITS["N5"]) == ["N1", "N5"]


def test_phase1_freezes_then_phase2(tmp_path) -> None:
    ch = _char("a", limits={"phase1_subgroups": 10})
    gw = _gw(tmp_path, _cfg(ch))
    try:
        rng = np.random.default_rng(3)
        vals = 10 + rng.normal(0, 1, 15)
        lines = gw.process([("dev", [_s("a", float(v), k) for k, v in enumerate(vals[:9])])])
        assert _parsed(lines, "spc") == [] and gw.views[0].phase == "phase1"
        lines = gw.process([("dev", [_s("a", float(v), 9 + k) for k, v in enumerate(vals[9:])])])
        rec = gw.records[0]
        assert rec.created_by == "phase1" and rec.n_points == 10 and rec.method == "mr"
        assert rec.center == pytest.approx(vals[:10].mean())
        assert rec.window[0].startswith("2025-")
        spc = _parsed(lines, "spc")
        assert len(spc) == 15  # the 10 Phase I values judged retrospectively, then 5 live
        assert {p.fields["limits_id"] for p in spc} == {rec.id}
        with LimitsStore(tmp_path / "limits.db", readonly=True) as store:
            (a,) = store.history("s1/a1/l1/st1/a")
            assert a.limits_id == rec.id and a.source == "phase1" and a.user == "gateway gw-t"
    finally:
        gw.close()


def test_xbar_subgroups_and_context_close(tmp_path) -> None:
    ch = _char(
        "a",
        chart="xbar-r",
        subgroup={"size": 3, "close_on": ["material_lot"]},
        limits={"center": 10.0, "sigma": 1.0},
    )
    gw = _gw(tmp_path, _cfg(ch))
    try:

        def lot(name: str, k: int) -> Sample:
            return Sample("dev.lot", math.nan, Quality.BAD, T0 + k, fields={"raw": name})

        lines = gw.process(
            [("dev", [lot("L1", 0), _s("a", 10.0, 1), _s("a", 10.2, 2), _s("a", 9.9, 3)])]
        )
        assert len(_parsed(lines, "spc")) == 1
        lines = gw.process([("dev", [_s("a", 10.1, 4)])])
        assert _parsed(lines, "spc") == []
        # a new lot closes the open subgroup of one part
        lines = gw.process([("dev", [lot("L2", 5), _s("a", 10.3, 6)])])
        (p,) = _parsed(lines, "spc")
        assert p.fields["n"] == 1 and p.fields["statistic"] == pytest.approx(10.1)
    finally:
        gw.close()


async def test_restart_restores_limits_and_engine_state(tmp_path) -> None:
    ch = _char("a", limits={"phase1_subgroups": 5}, rules=["N2"])
    cfg = _cfg(ch)
    gw = _gw(tmp_path, cfg)
    base = [10.0, 10.5, 9.5, 10.2, 9.8]
    gw.process([("dev", [_s("a", v, k) for k, v in enumerate(base)])])
    rec = gw.records[0]
    # 9 above the centre make N2 (Nelson); 5 before the restart, 4 after
    above = rec.center + 0.1
    gw.process([("dev", [_s("a", above, 10 + k) for k in range(5)])])
    assert gw.stats.alarms == 0
    await gw._close()

    gw2 = _gw(tmp_path, cfg)
    try:
        assert gw2.records[0].id == rec.id
        lines = gw2.process([("dev", [_s("a", above, 20 + k) for k in range(4)])])
        spc = _parsed(lines, "spc")
        assert [p.fields["violations"] for p in spc] == ["", "", "", "N2"]
        assert gw2.views[0].n_points == len(base) + 9
    finally:
        gw2.outbox.close()


async def test_an_alarm_after_a_restart_quotes_its_samples_from_before_it(tmp_path, caplog) -> None:
    """The alarms' sample windows are saved with the engine state: N2 raised by the fourth
    point after a restart names all nine parts of its run. Without the saved windows (a
    damaged file: a warning, no failure) it can name only the four judged since."""
    ch = _char("a", limits={"phase1_subgroups": 5}, rules=["N2"])
    cfg = _cfg(ch)

    async def run(dirname: str, damage: bool) -> list[str]:
        d = tmp_path / dirname
        gw = _gw(d, cfg)
        base = [10.0, 10.5, 9.5, 10.2, 9.8]
        gw.process([("dev", [_s("a", v, k, serial=f"B{k}") for k, v in enumerate(base)])])
        above = gw.records[0].center + 0.1
        gw.process([("dev", [_s("a", above, 10 + k, serial=f"P{k}") for k in range(5)])])
        await gw._close()
        if damage:
            (d / "alarm_rings.json").write_text('{"schema": "shopspc.alarm-rings/1", "keys": 7}')
        gw2 = _gw(d, cfg)
        raised: list[dict[str, Any]] = []
        gw2.alarm_listeners.append(lambda out: raised.extend(out.events))
        try:
            gw2.process([("dev", [_s("a", above, 20 + k, serial=f"P{5 + k}") for k in range(4)])])
        finally:
            await gw2._close()
        (ev,) = [e for e in raised if e["event"] == "raised"]
        assert ev["rule"] == "N2"
        return ev["samples"]

    assert await run("kept", damage=False) == [f"P{k}" for k in range(9)]
    assert "not restored" not in caplog.text
    assert await run("damaged", damage=True) == [f"P{k}" for k in range(5, 9)]
    assert "alarm sample windows" in caplog.text and "not restored" in caplog.text


async def test_changed_characteristics_keep_limits_restart_engine(tmp_path, caplog) -> None:
    ch = _char("a", limits={"phase1_subgroups": 5})
    gw = _gw(tmp_path, _cfg(ch))
    gw.process([("dev", [_s("a", v, k) for k, v in enumerate([10.0, 10.5, 9.5, 10.2, 9.8])])])
    rec = gw.records[0]
    await gw._close()
    gw2 = _gw(tmp_path, _cfg(dict(ch, description="changed")))
    try:
        assert gw2.records[0].id == rec.id
        assert "not restored" in caplog.text
    finally:
        gw2.outbox.close()


async def test_freeze_gc_takes_start_up_objects_out_of_collections(tmp_path) -> None:
    """``shopspc run`` freezes what start-up built, so full collections stay short."""
    src = FakeSource([[_s("a", 10.0, 0, serial="P0")]])
    gw = Gateway(
        _cfg(_char("a")), {}, data_dir=tmp_path, sources=[src], sinks=[RecordingSink()],
        freeze_gc=True,
    )  # fmt: skip
    stop = asyncio.Event()
    frozen: list[int] = []

    async def stopper() -> None:
        await asyncio.wait_for(src.done.wait(), 20)
        frozen.append(gc.get_freeze_count())
        stop.set()

    before = gc.get_freeze_count()
    async with asyncio.timeout(30):
        await asyncio.gather(gw.run(stop), stopper())
    assert frozen[0] > before + 1000  # the configuration, models, engine and modules
    assert gc.get_freeze_count() == 0  # given back when run ends
    assert gw.stats.points == 1


async def test_run_drains_outbox_on_stop(tmp_path) -> None:
    batches = [
        [_s("a", 10.0 + 0.1 * (k % 3), k, serial=f"P{k}", fields={"operator": "Ann"})]
        for k in range(50)
    ]
    src = FakeSource(batches)
    sink = RecordingSink()
    gw = Gateway(
        _cfg(_char("a")),
        {},
        data_dir=tmp_path,
        sources=[src],
        sinks=[sink],
        queue_size=4,
        metrics_interval_s=0.0,
    )
    await _run_until_sent(gw, src)
    assert sink.closed
    assert len(_parsed(sink.lines, "measurement")) == 50
    assert len(_parsed(sink.lines, "spc")) == 50
    assert _parsed(sink.lines, "gateway")
    assert gw.stats.outbox_pending == 0
    assert (tmp_path / "engine.npz").exists() and (tmp_path / "state.json").exists()


def test_phase1_xbar_subgroups(tmp_path) -> None:
    ch = _char("a", chart="xbar-r", subgroup={"size": 4}, limits={"phase1_subgroups": 5})
    gw = _gw(tmp_path, _cfg(ch))
    try:
        vals = 10 + np.random.default_rng(5).normal(0, 1, 24)
        lines = gw.process([("dev", [_s("a", float(v), k) for k, v in enumerate(vals)])])
        rec = gw.records[0]
        assert (rec.chart, rec.method, rec.n_points) == ("xbar-r", "rbar", 5)
        assert rec.center == pytest.approx(vals[:20].mean())
        spc = _parsed(lines, "spc")
        assert len(spc) == 6 and all(p.fields["n"] == 4 for p in spc)
    finally:
        gw.close()


class FlakySink(RecordingSink):
    """Fails the first write (retryable), rejects the first line of the second as malformed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def write(self, batch: Sequence[str | bytes]) -> Any:
        batch = _text(batch)
        self.calls += 1
        if self.calls == 1:
            raise ConnectorError("flaky", "connection refused", retryable=True)
        if self.calls == 2:
            self.lines.extend(batch[1:])
            return WriteResult(len(batch) - 1, (RejectedLines((0,), (batch[0],), 400, "bad line"),))
        self.lines.extend(batch)
        return WriteResult(len(batch))


async def test_sink_retry_and_dead_letter(tmp_path) -> None:
    src = FakeSource([[_s("a", 10.0 + 0.01 * k, k, serial=f"P{k}")] for k in range(5)])
    sink = FlakySink()
    gw = Gateway(_cfg(_char("a")), {}, data_dir=tmp_path, sources=[src], sinks=[sink])
    stop = asyncio.Event()

    async def stopper() -> None:
        await asyncio.wait_for(src.done.wait(), 20)
        stop.set()

    outbox_path = gw.outbox.path
    async with asyncio.timeout(30):
        await asyncio.gather(gw.run(stop), stopper())
    assert gw.stats.sink_errors == 1 and gw.stats.lines_dead == 1
    assert gw.stats.outbox_pending == 0
    assert len(sink.lines) == gw.stats.lines_appended - 1
    with Outbox(outbox_path) as ob:
        (dead,) = ob.dead_letters("series")
        assert "bad line" in dead.reason
        # only the refused line is dead, not the outbox entry (a chunk of lines) it came in
        assert b"\n" not in dead.payload and dead.payload.decode() not in sink.lines


async def test_phase1_collection_survives_a_restart(tmp_path) -> None:
    cfg = _cfg(_char("a", limits={"phase1_subgroups": 5}))
    gw = _gw(tmp_path, cfg)
    gw.process([("dev", [_s("a", v, k) for k, v in enumerate([10.0, 10.5, 9.5])])])
    await gw._close()
    gw2 = _gw(tmp_path, cfg)
    try:
        assert gw2.views[0].phase1_have == 3
        lines = gw2.process([("dev", [_s("a", v, 3 + k) for k, v in enumerate([10.2, 9.8])])])
        assert gw2.records[0].n_points == 5
        assert len(_parsed(lines, "spc")) == 5
    finally:
        gw2.outbox.close()


def test_time_window_closes_a_subgroup(tmp_path) -> None:
    ch = _char("a", chart="xbar-r", subgroup={"size": 5, "window_s": 2.0})
    gw = _gw(tmp_path, _cfg(ch))
    try:
        first = [_s("a", 10.0, 0), _s("a", 10.4, 1)]
        assert _parsed(gw.process([("dev", first)]), "spc") == []
        assert gw.close_windows(T0 + 1_000_000) == []  # window not over yet
        (p,) = _parsed(gw.close_windows(T0 + 3_000_000), "spc")
        assert p.fields["n"] == 2 and p.fields["statistic"] == pytest.approx(10.2)
        # a late sample past the window closes the open subgroup before it is added
        lines = gw.process([("dev", [_s("a", 10.0, 10), _s("a", 10.0, 3_000_000)])])
        (p,) = _parsed(lines, "spc")
        assert p.fields["n"] == 1
    finally:
        gw.close()


# ---------------------------------------------------------------- columnar path and new charts


def test_columnar_lines_equal_the_single_line_encoders(tmp_path) -> None:
    from connectors.influxdb.lineprotocol import measurement_line, spc_line

    cfg = _cfg(_char("a"), _char("b", chart="xbar-r", subgroup={"size": 3}))
    gw = _gw(tmp_path, cfg)
    rng = np.random.default_rng(3)
    batch = [_s("operator", math.nan, 0, quality=Quality.BAD, fields={"raw": "Li, Wei"})]
    for k in range(1, 40):
        batch.append(_s("a" if k % 3 else "b", float(rng.normal(10, 1)), k, serial=f"P {k}"))
    batch.append(_s("a", math.nan, 50, quality=Quality.BAD, status='timeout "x"'))
    lines = gw.process([("dev", batch)])
    expected_m = []
    for s in batch[1:]:
        ch = next(c for c in cfg.characteristics if c.id == s.binding)
        ctx = {"operator": "Li, Wei", "machine": "M-1", "env_temperature": 20.5}
        if s.status:
            ctx["status"] = s.status
        expected_m.append(
            measurement_line(
                gateway="gw-t",
                line="l1",
                station="st1",
                characteristic=ch.id,
                source="mqtt",
                value=s.value,
                quality=str(s.quality),
                time_us=s.time_us,
                serial=s.serial,
                context=ctx,
            )
        )
    assert [ln for ln in lines if ln.startswith("measurement,")] == expected_m
    # every spc line re-encoded by spc_line from its parsed fields is the same text
    spc = [ln for ln in lines if ln.startswith("spc,")]
    assert len(spc) == 26 + 4  # 26 individuals of a, 13 values of b → 4 subgroups of 3
    for ln in spc:
        p = parse_line(ln)
        f = p.fields
        again = spc_line(
            gateway=p.tags["gateway"],
            line=p.tags["line"],
            station=p.tags["station"],
            characteristic=p.tags["characteristic"],
            chart=p.tags["chart"],
            time_us=p.time_us,
            statistic=f.get("statistic"),
            center=f.get("center"),
            lcl=f.get("lcl"),
            ucl=f.get("ucl"),
            sigma=f.get("sigma"),
            n=f.get("n"),
            violations=f["violations"],
            limits_id=f["limits_id"],
        )
        assert again == ln


def test_xbar_completions_interleaved_across_batches(tmp_path) -> None:
    # subgroups of 4 and 3 interleaved and split over calls: each spc point carries the
    # time of the value that completed it
    cfg = _cfg(
        _char("a", chart="xbar-r", subgroup={"size": 4}),
        _char("b", chart="xbar-s", subgroup={"size": 3}),
    )
    gw = _gw(tmp_path, cfg)
    seq = [("a" if k % 2 else "b", k) for k in range(1, 50)]
    times: dict[str, list[int]] = {"a": [], "b": []}
    count = {"a": 0, "b": 0}
    out: list[str] = []
    for lo in range(0, len(seq), 7):
        batch = [_s(b, 10.0 + (k % 5) * 0.1, k) for b, k in seq[lo : lo + 7]]
        for b, k in seq[lo : lo + 7]:
            count[b] += 1
            if count[b] % (4 if b == "a" else 3) == 0:
                times[b].append(T0 + k * 1000)
        out += gw.process([("dev", batch)])
    for cid in ("a", "b"):
        got = [p.time_us for p in _parsed(out, "spc") if p.tags["characteristic"] == cid]
        assert got == times[cid]


@pytest.mark.parametrize("chart", ["p", "np", "u"])
def test_attribute_charts_take_the_sample_size_binding(tmp_path, chart) -> None:
    from spc.charts.attributes import np_chart, p_chart, u_chart

    size = {"source": "dev", "binding": "n"} if chart != "u" else {"static": 2.5}
    cfg = _cfg(
        _char("d", chart=chart, sample_size=size, limits={"phase1_subgroups": 20}, context={})
    )
    gw = _gw(tmp_path, cfg)
    rng = np.random.default_rng(5)
    counts = rng.poisson(4, 30).astype(float)
    counts[25] = 25  # an out-of-control sample after Phase I
    sizes = rng.integers(80, 120, 30).astype(float) if chart != "u" else np.full(30, 2.5)
    lines: list[str] = []
    # without a known size nothing is charted
    lines += gw.process([("dev", [_s("d", 3.0, 0)])])
    assert gw.stats.no_size == (1 if chart != "u" else 0)
    gw = _gw(tmp_path / "fresh", cfg)
    lines = []
    for k in range(30):
        batch = [_s("d", counts[k], k)]
        if chart != "u":
            batch.insert(0, _s("n", sizes[k], k))
        lines += gw.process([("dev", batch)])
    spc = _parsed(lines, "spc")
    assert len(spc) == 30
    fn = {"p": p_chart, "np": np_chart, "u": u_chart}[chart]
    ref = fn(counts[:20], sizes[:20], phase2_counts=counts[20:], phase2_sizes=sizes[20:])
    stat = np.array([p.fields["statistic"] for p in spc])
    np.testing.assert_allclose(stat, ref.statistics, rtol=1e-12)
    np.testing.assert_allclose([p.fields["ucl"] for p in spc], ref.ucl, rtol=1e-12)
    assert "N1" in spc[25].fields["violations"]
    assert gw.views[0].phase == "phase2"


def test_shortrun_dnom_and_zmr_chart_against_each_parts_target(tmp_path) -> None:
    targets = {"P-10": {"nominal": 10.0, "sigma": 0.5}, "P-20": {"nominal": 20.0, "sigma": 2.0}}
    ctx = {"method": {"source": "dev", "binding": "program"}}
    cfg = _cfg(
        _char("dn", context=ctx, limits={}, shortrun={"kind": "dnom", "targets": targets}),
        _char(
            "z",
            value={"source": "dev", "binding": "dn"},
            context=ctx,
            limits={},
            shortrun={"kind": "zmr", "targets": targets},
        ),
    )
    gw = _gw(tmp_path, cfg)
    rng = np.random.default_rng(9)
    lines: list[str] = []
    expect_dev, expect_z = [], []
    for k in range(60):
        part = "P-10" if (k // 10) % 2 == 0 else "P-20"
        sd = 0.5 if part == "P-10" else 2.0
        nominal = 10.0 if part == "P-10" else 20.0
        x = float(nominal + rng.normal(0, sd))
        expect_dev.append(x - nominal)
        expect_z.append((x - nominal) / sd)
        batch = [_s("program", math.nan, k, quality=Quality.BAD, fields={"raw": part})]
        batch.append(_s("dn", x, k))
        lines += gw.process([("dev", batch)])
    # an unknown part is stored, not charted
    unknown = [_s("program", math.nan, 99, quality=Quality.BAD, fields={"raw": "P-99"})]
    lines += gw.process([("dev", [*unknown, _s("dn", 5.0, 99)])])
    assert gw.stats.unknown_part == 2
    spc = _parsed(lines, "spc")
    dn = [p.fields["statistic"] for p in spc if p.tags["characteristic"] == "dn"]
    z = [p for p in spc if p.tags["characteristic"] == "z"]
    np.testing.assert_allclose(dn, expect_dev, rtol=1e-12)  # Phase I then Phase II on deviations
    np.testing.assert_allclose([p.fields["statistic"] for p in z], expect_z, rtol=1e-12)
    assert {p.fields["center"] for p in z} == {0.0}
    assert {p.fields["ucl"] for p in z} == {3.0}  # standards 0 and 1 by construction
    meas = [p for p in _parsed(lines, "measurement") if p.tags["characteristic"] == "dn"]
    assert meas[0].fields["method"] == "P-10"  # the raw value is stored, not the deviation


def test_shortrun_and_sample_size_config_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs sample_size"):
        _cfg(_char("p1", chart="p"))
    with pytest.raises(ValidationError, match="zmr needs a sigma"):
        _cfg(_char("z", shortrun={"kind": "zmr", "targets": {"A": {"nominal": 1.0}}}))
    with pytest.raises(ValidationError, match="individual values"):
        _cfg(
            _char(
                "x",
                chart="xbar-r",
                subgroup={"size": 3},
                shortrun={"targets": {"A": {"nominal": 1.0}}},
            )
        )


def test_commands_ack_shelve_service_and_refusals(tmp_path) -> None:
    from collector.alarms import AlarmError

    gw = _gw(tmp_path, _cfg(_char("a")))
    try:
        gw.process([("dev", [_s("a", 10.0, 0, serial="P0"), _s("a", 30.0, 1, serial="P1")])])
        (alarm,) = [a for a in gw.alarms.active() if a["chart"] == "x"]
        path, aid = "s1/a1/l1/st1/a", alarm["alarm_id"]
        with pytest.raises(AlarmError, match="cause"):
            gw.command(path, {"alarm_id": aid, "user": "li", "cause": "nonsense"})
        with pytest.raises(AlarmError, match="no alarm"):
            gw.command("s1/a1/l1/st1/b", {"alarm_id": aid, "user": "li"})
        ev = gw.command(
            path,
            {"alarm_id": aid, "user": "li", "comment": "tool", "cause": "machine:MC-TOOL-WEAR"},
        )
        assert ev is not None and ev["event"] == "acknowledged" and ev["user"] == "li"
        assert ev["source"] == "api"
        ev = gw.command(path, {"alarm_id": aid, "user": "li", "minutes": 5}, "shelve")
        assert ev is not None and ev["event"] == "shelved"
        gw.command(path, {"in_service": False, "user": "li"}, "service")
        assert gw.alarms.counts()  # still answers; state now suspended
        gw.on_command(path, {"alarm_id": 7}, "ack")  # refused, counted, not raised
        gw.on_command(path, {}, "explode")
        assert gw.stats.bad_commands == 4 and gw.stats.commands == 7
        assert any(ln.startswith("alarm,") and "acknowledged" in ln for ln in gw.tick_alarms(0))
    finally:
        gw.close()


@given(st.lists(st.integers(0, 6), max_size=40))
def test_batch_ranks_count_earlier_rows_of_the_same_key(keys: list[int]) -> None:
    rank, per_key = batch_ranks(np.array(keys, dtype=np.intp), 7)
    seen: dict[int, int] = {}
    expected = []
    for k in keys:
        expected.append(seen.get(k, 0))
        seen[k] = seen.get(k, 0) + 1
    assert rank.tolist() == expected
    assert per_key.tolist() == [seen.get(k, 0) for k in range(7)]


def _rows(judged) -> list[tuple[Any, ...]]:
    """A point listener's batch as rows (NaN-safe), for equality."""
    p, n = judged.points, judged.n
    cols = [
        np.nan_to_num(np.asarray(getattr(p, f.name)[:n], dtype=np.float64), nan=-999.0).tolist()
        for f in dataclasses.fields(p)
    ]
    rest = (
        judged.time_us[:n].tolist(),
        judged.serial,
        judged.limits_id,
        judged.violations,
        judged.context or [None] * n,
    )
    return list(zip(*cols, *rest, strict=True))


def _views(gw: Gateway) -> list[tuple[Any, ...]]:
    return [
        (v.n_points, v.center, v.lcl, v.ucl, v.in_control, v.last_value, v.n_samples)
        for v in gw.views
    ]


@settings(max_examples=25, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.lists(
                st.tuples(st.sampled_from("abc"), st.floats(5.0, 15.0, allow_nan=False)),
                min_size=0,
                max_size=6,
            ),
            st.booleans(),  # flush after this call
        ),
        min_size=1,
        max_size=12,
    )
)
def test_deferred_series_encode_to_the_lines_and_views_of_undeferred(
    tmp_path_factory, calls
) -> None:
    """process(defer=True) + flush_series() gives, per measurement, the same lines in the
    same order and the same live views as process() encoding each call at once."""
    cfg = _cfg(
        _char("a"),
        _char("b", chart="xbar-r", subgroup={"size": 3}, value={"source": "dev", "binding": "b"}),
        _char("c", value={"source": "dev", "binding": "c"}),
    )
    now = _gw(tmp_path_factory.mktemp("now"), cfg)
    later = _gw(tmp_path_factory.mktemp("later"), cfg)
    heard: dict[str, list[Any]] = {"now": [], "later": []}
    now.point_listeners.append(heard["now"].append)
    later.point_listeners.append(heard["later"].append)
    rings = {"now": RecentPoints(3, capacity=8), "later": RecentPoints(3, capacity=8)}
    now.point_listeners.append(rings["now"].on_points)
    later.point_listeners.append(rings["later"].on_points)
    try:
        got_now: list[str] = []
        got_later: list[str] = []
        k = 0
        for values, flush in calls:
            batch = []
            for binding, v in values:
                batch.append(_s(binding, v, k, serial=f"P{k}"))
                k += 1
            got_now += now.process([("dev", batch)])
            deferred = later.process([("dev", batch)], defer=True)
            # the alarm lines come at once; the series wait for the flush
            assert not _parsed(deferred, "spc") and not _parsed(deferred, "measurement")
            got_later += deferred
            calls_before = len(heard["later"])
            if flush:
                got_later += later.flush_series()
                assert _views(later) == _views(now)
                # the point listeners: one call per flush, with the points of every call since
                assert len(heard["later"]) <= calls_before + 1
            else:
                assert len(heard["later"]) == calls_before  # nothing before the flush
        got_later += later.flush_series()
        assert later.flush_series() == []  # nothing left twice
        for m in ("measurement", "spc"):
            assert [ln for ln in got_later if ln.startswith(m + ",")] == [
                ln for ln in got_now if ln.startswith(m + ",")
            ]
        # the same alarm events (their lines carry the gateway's clock, and a flood alarm's id
        # is made from it, so only their number compares)
        assert len(got_later) == len(got_now)
        assert _views(later) == _views(now)
        points = _parsed(got_later, "spc")
        for v in later.views:
            assert v.n_points == sum(p.tags["characteristic"] == v.id for p in points)
        # the listeners hear the same points in the same order, merged or not
        assert [r for j in heard["later"] for r in _rows(j)] == [
            r for j in heard["now"] for r in _rows(j)
        ]
        assert sum(j.n for j in heard["later"]) == len(points)
        for i in range(3):
            a, b = rings["later"].query(i), rings["now"].query(i)
            assert a.serial == b.serial and a.violations == b.violations
            assert np.array_equal(a.statistic, b.statistic, equal_nan=True)
            assert np.array_equal(a.disp_statistic, b.disp_statistic, equal_nan=True)
    finally:
        now.close()
        later.close()


async def test_emit_returns_after_the_deferred_series_are_committed(tmp_path) -> None:
    """With series encoding deferred (here 0.3 s), a batch's emit still returns only once its
    measurement and spc lines are committed to the outbox: nothing acknowledged can be lost."""
    committed: list[int] = []

    class Checking(FakeSource):
        async def run(self, emit: Any) -> None:
            for k in range(3):
                await emit([_s("a", 10.0, k, serial=f"P{k}")])
                committed.append(gw.stats.lines_appended)
            self.done.set()
            await asyncio.Event().wait()

    src = Checking([])
    gw = Gateway(
        _cfg(_char("a")),
        {},
        data_dir=tmp_path,
        sources=[src],
        sinks=[RecordingSink()],
        series_defer_s=0.3,
        metrics_interval_s=3600.0,
    )
    await _run_until_sent(gw, src)
    # a measurement and an spc line per value, committed before its emit returned
    assert [c >= 2 * (k + 1) for k, c in enumerate(committed)] == [True] * 3
