"""RecentPoints: ring buffers fed by the gateway's point listener."""

from __future__ import annotations

import numpy as np
import pytest

from collector.api.recent import RecentPoints, zones

from .conftest import T0, sample


def test_points_of_a_batch_land_per_characteristic_in_order(gateway) -> None:
    rp = RecentPoints(len(gateway.chars), capacity=4)
    gateway.point_listeners.append(rp.on_points)
    values = [10.0, 10.5, 11.5, 12.5, 20.0, 9.0]
    batch = [sample("a", v, k, serial=f"P{k}") for k, v in enumerate(values)]
    batch += [sample("b", 10.0 + k / 10, 100 + k) for k in range(3)]
    gateway.process([("dev", batch)])
    a = rp.query(0)
    assert len(a) == 4  # capacity: the newest four of six
    assert a.statistic.tolist() == values[2:]
    assert a.time_us.tolist() == [T0 + k * 1000 for k in range(2, 6)]
    assert a.serial == ["P2", "P3", "P4", "P5"]
    assert a.zone == ["B", "A", "out", "C"]
    assert a.violations[2].startswith("N1") and a.violations[3] == "N1"  # MR of 20 → 9
    assert len(set(a.limits_id)) == 1 and a.limits_id[0]
    b = rp.query(1, limit=2)
    assert b.statistic.tolist() == [10.1, 10.2]
    assert len(rp.query(2)) == 0
    # since filters by source time; a later batch wraps around the ring
    assert rp.query(0, since_us=T0 + 4000).statistic.tolist() == [20.0, 9.0]
    gateway.process([("dev", [sample("a", 10.0, 10)])])
    assert rp.query(0).statistic.tolist() == [12.5, 20.0, 9.0, 10.0]


def test_zones_boundaries_belong_to_the_inner_zone() -> None:
    x = np.array([10.0, 11.0, 11.01, 12.0, 13.0, 13.01, np.nan, 7.0])
    got = zones(x, np.full(8, 10.0), np.ones(8)).tolist()
    assert got == ["C", "C", "B", "B", "A", "out", "", "A"]
    assert zones(np.array([1.0]), np.array([0.0]), np.array([np.nan])).tolist() == [""]


def test_limits_ids_and_serials_of_a_mixed_batch() -> None:
    from types import SimpleNamespace

    from collector.pipeline import JudgedPoints

    n = 6
    cols = {
        k: np.arange(n, dtype=np.float64)
        for k in (
            *("statistic", "center", "lcl", "ucl", "sigma"),
            *("disp_statistic", "disp_center", "disp_lcl", "disp_ucl"),
        )
    }
    pts = SimpleNamespace(
        char=np.array([0, 1, 0, 1, 0, 1]),
        mask=np.zeros(n, np.int64),
        disp_mask=np.zeros(n, np.int64),
        **cols,
    )
    ids = ["L-a", "L-b", "L-a", "L-c", "L-b", "L-b"]
    serial = [None, "S1", None, "S3", "S4", None]
    rp = RecentPoints(2, capacity=2)
    rp.on_points(JudgedPoints(pts, n, np.arange(n, dtype=np.int64), serial, ids, [""] * n))
    zero, one = rp.query(0), rp.query(1)
    assert zero.statistic.tolist() == [2.0, 4.0] and zero.limits_id == ["L-a", "L-b"]
    assert one.statistic.tolist() == [3.0, 5.0] and one.limits_id == ["L-c", "L-b"]
    assert zero.serial == [None, "S4"] and one.serial == ["S3", None]
    assert rp.limits_ids == ["L-a", "L-b", "L-c"]


def test_each_point_keeps_its_completing_samples_context(tmp_path) -> None:
    from collector.pipeline import Gateway
    from connectors.base import Quality, Sample

    from .conftest import RecordingSink, char, config

    ctx = {
        "operator": {"source": "dev", "binding": "operator"},
        "machine": {"static": "MC-1"},
        "environment": {"temperature": {"static": 21.0}},
        "gauge": {"id": {"static": "G-7"}, "calibration_due": {"static": "2020-01-01"}},
    }
    gw = Gateway(
        config(char("a", context=ctx)), {}, data_dir=tmp_path, sources=[], sinks=[RecordingSink()]
    )
    try:
        rp = RecentPoints(1)
        gw.point_listeners.append(rp.on_points)
        batch = [
            Sample("a", 10.0 + k, Quality.GOOD, T0 + k, T0 + k, fields={"operator": op})
            for k, op in enumerate(("li", "wang"))
        ]
        gw.process([("dev", batch)])
        got = rp.query(0).context
    finally:
        gw.close()
    assert [c["operator"] for c in got] == ["li", "wang"]  # each part's own, not the batch's last
    assert got[0]["machine"] == "MC-1" and got[0]["environment"] == {"temperature": 21.0}
    assert got[0]["gauge"] == {
        "id": "G-7",
        "calibration_due": "2020-01-01",
        "calibration_status": "overdue",
    }


# --------------------------------------------------------------------------- across restarts


def _columns(cols) -> dict:
    """Every column of a query, NaN-safe (for equality)."""
    out = {}
    for name, v in vars(cols).items():
        out[name] = np.nan_to_num(v, nan=-999.0).tolist() if isinstance(v, np.ndarray) else v
    return out


def _fed(tmp_path, capacity: int = 4, chars=("a", "b", "c")):
    """A gateway (context on a) and rings fed past their capacity, serials, two limits records."""
    from collector.pipeline import Gateway
    from connectors.base import Quality, Sample

    from .conftest import RecordingSink, char, config

    ctx = {"operator": {"source": "dev", "binding": "operator"}, "machine": {"static": "MC-1"}}
    specs = [char(c, context=ctx) if c == "a" else char(c) for c in chars]
    gw = Gateway(config(*specs), {}, data_dir=tmp_path, sources=[], sinks=[RecordingSink()])
    rp = RecentPoints(len(gw.chars), capacity=capacity)
    gw.point_listeners.append(rp.on_points)
    batch = [
        Sample(
            "a", 10.0 + k / 4, Quality.GOOD, T0 + k, T0 + k, serial=f"A{k}", fields={"operator": op}
        )
        for k, op in enumerate(("li", "wang", "li", "zhao", "li", "wang"))
    ]
    gw.process([("dev", [*batch, sample("b", 9.0, 50, serial="B0"), sample("b", 30.0, 51)])])
    return gw, rp


def test_saved_rings_come_back_with_every_column(tmp_path) -> None:
    from collector.api.recent import RecentSaver

    gw, rp = _fed(tmp_path)
    try:
        RecentSaver(rp, tmp_path / "r.npz", gw.chars).save()
        back = RecentPoints(3, capacity=4)
        got = RecentSaver(back, tmp_path / "r.npz", gw.chars).load()
        assert got == 2  # a and b; c has no points
        for i in range(3):
            assert _columns(back.query(i)) == _columns(rp.query(i))
        a = back.query(0)
        assert a.serial == ["A2", "A3", "A4", "A5"]
        assert [c["operator"] for c in a.context] == ["li", "zhao", "li", "wang"]
        assert a.context[0]["machine"] == "MC-1"
        assert back.query(1).violations[1]  # the 30.0 broke a rule: its mask came back
        # the restored rings go on where they stopped
        gw.point_listeners[:] = [back.on_points]
        gw.process([("dev", [sample("a", 10.0, 90, serial="A6")])])
        assert back.query(0).serial == ["A3", "A4", "A5", "A6"]
    finally:
        gw.close()


def test_rings_are_matched_by_path_and_chart(tmp_path) -> None:
    from collector.api.recent import RecentSaver
    from collector.config import GatewayConfig

    from .conftest import char, config

    gw, rp = _fed(tmp_path)
    try:
        RecentSaver(rp, tmp_path / "r.npz", gw.chars).save()
        before = {i: _columns(rp.query(i, limit=2)) for i in range(3)}
    finally:
        gw.close()
    # reordered, one new, one now an X̄-R chart (its old points plot another statistic)
    later: GatewayConfig = config(
        char("d"), char("b"), char("a", chart="xbar-r", subgroup={"size": 5}), char("c")
    )
    back = RecentPoints(4, capacity=2)
    assert RecentSaver(back, tmp_path / "r.npz", later.characteristics).load() == 1
    assert _columns(back.query(1)) == before[1]  # b, the newest two of its points
    assert [len(back.query(i)) for i in (0, 2, 3)] == [0, 0, 0]


def test_a_bad_rings_file_is_refused_whole(tmp_path, caplog) -> None:
    import io

    from collector.api.recent import RecentSaver, encode_recent

    gw, rp = _fed(tmp_path)
    path = tmp_path / "r.npz"
    try:
        saver = RecentSaver(rp, path, gw.chars)
        saver.save()
        good = path.read_bytes()
        fresh = RecentPoints(3, capacity=4)
        for bad in (b"", good[: len(good) // 2], b"PK\x03\x04 not a zip"):
            path.write_bytes(bad)
            assert RecentSaver(fresh, path, gw.chars).load() == 0
        assert "chart history in" in caplog.text and "charts start empty" in caplog.text
        # foreign schema, codes out of range, a full ring: ValueError, nothing changed
        part = rp.take(0, 3)
        with np.load(io.BytesIO(good)) as z:
            assert int(z["count"][0]) == 6
        part["limits"][0, :] = 99
        with pytest.raises(ValueError, match="out of range"):
            fresh.restore(encode_recent([part], list(rp.limits_ids), saver.keys, 4), saver.keys)
        with np.load(io.BytesIO(good)) as z:
            members = {k: z[k] for k in z.files}
        members["meta"] = np.frombuffer(b'{"schema": "other/1"}', dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **members)
        foreign = buf.getvalue()
        with pytest.raises(ValueError, match=r"not a shopspc\.recent-points/1 file"):
            fresh.restore(foreign, saver.keys)
        with pytest.raises(ValueError, match="keys for"):
            fresh.restore(good, saver.keys[:2])
        assert not fresh.count.any() and fresh.limits_ids == []
        with pytest.raises(ValueError, match="already hold points"):
            rp.restore(good, saver.keys)
    finally:
        gw.close()


async def test_a_chunked_save_copies_each_characteristic_whole(tmp_path) -> None:
    import asyncio

    from collector.api.recent import RecentSaver

    gw, rp = _fed(tmp_path)
    try:
        seen: dict[int, list[dict]] = {i: [_columns(rp.query(i))] for i in range(3)}

        async def feed() -> None:
            for k in range(6):
                await asyncio.sleep(0)
                gw.process([("dev", [sample(c, 10.0 + k / 8, 200 + k) for c in "abc"])])
                for i in range(3):
                    seen[i].append(_columns(rp.query(i)))

        saver = RecentSaver(rp, tmp_path / "r.npz", gw.chars, chunk=1)
        await asyncio.gather(saver.save_async(), feed())
        back = RecentPoints(3, capacity=4)
        assert saver.saves == 1 and RecentSaver(back, saver.path, gw.chars).load() == 3
        got = [_columns(back.query(i)) for i in range(3)]
        stage = [seen[i].index(got[i]) for i in range(3)]  # each one a state it passed through
        assert stage[0] < stage[2]  # and the feed ran between the chunks
    finally:
        gw.close()
