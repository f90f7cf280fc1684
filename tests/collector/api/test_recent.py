"""RecentPoints: ring buffers fed by the gateway's point listener."""

from __future__ import annotations

import numpy as np

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
