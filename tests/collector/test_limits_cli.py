"""`shopspc limits …` on a real limits store and a real local series store filled through its API."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from collector.cli import app
from collector.limitstore import LimitsStore
from connectors.influxdb.lineprotocol import measurement_line
from connectors.localstore.store import SeriesStore, iso_us

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_144_000_000_000  # 2025-11-26T08:00:00Z
MIN = 60_000_000
D2_2 = 2 / math.sqrt(math.pi)  # d2(2), exact
D2_5 = 2.325929  # d2(5), table
BORE = "sz/machining/L1/OP20/bore"
GAP = "sz/machining/L1/OP30/gap"

CONFIG = """\
version: 1
gateway: {{id: gw-1, data_dir: {data_dir}}}
characteristics:
  - id: bore
    site: sz
    area: machining
    line: L1
    station: OP20
    chart: imr
    lsl: 24.95
    usl: 25.05
    limits: {{phase1_subgroups: 20}}
    value: {{static: 0}}
  - id: gap
    site: sz
    area: machining
    line: L1
    station: OP30
    chart: xbar-r
    subgroup: {{size: 5}}
    limits: {{phase1_subgroups: 10}}
    value: {{static: 0}}
  - id: bore
    site: sz
    area: machining
    line: L2
    station: OP20
    chart: imr
    value: {{static: 0}}
"""


def _line(station: str, char: str, value: float, t: int, serial: str, quality: str = "good") -> str:
    line = measurement_line(
        gateway="gw-1",
        line="L1",
        station=station,
        characteristic=char,
        source="opcua",
        value=value,
        quality=quality,
        time_us=t,
        serial=serial,
        context={"operator": "Zhang San"},
    )
    assert line is not None
    return line


@pytest.fixture
def plant(tmp_path: Path) -> dict[str, Any]:
    """A config, a data_dir and a series store with planted bore (I-MR) and gap (X̄-R) data."""
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(CONFIG.format(data_dir=data))
    rng = np.random.default_rng(7)
    bore = 25.0 + 0.01 * rng.standard_normal(40)
    bore[17] += 0.2  # the planted outlier, serial B-017
    gap = 3.0 + 0.05 * rng.standard_normal((20, 5))
    lines = [_line("OP20", "bore", v, T0 + i * MIN, f"B-{i:03d}") for i, v in enumerate(bore)]
    lines.append(_line("OP20", "bore", 99.0, T0 + 5 * MIN + 1, "B-bad", quality="bad"))
    lines.append(_line("OP20", "bore", 50.0, T0 - MIN, "B-early"))  # before the window
    for g in range(20):
        for j in range(5):
            t = T0 + (g * 5 + j) * MIN
            lines.append(_line("OP30", "gap", gap[g, j], t, f"G-{g}-{j}"))
    with SeriesStore(data / "series.db") as store:
        written = store.write_lines(lines)
    assert not written.errors
    return {"cfg": cfg, "data": data, "bore": bore, "gap": gap}


def limits(*args: str) -> Any:
    """Run ``shopspc limits ARGS`` in-process; returns the result (stdout/stderr apart)."""
    return CliRunner().invoke(app, ["limits", *args], env={"COLUMNS": "250"})


def window(hours: float = 1.0) -> list[str]:
    return ["--from", iso_us(T0), "--to", iso_us(T0 + int(hours * 60) * MIN)]


def recompute(plant: dict[str, Any], char: str, *more: str) -> Any:
    return limits(
        "recompute",
        char,
        "--config",
        str(plant["cfg"]),
        "--user",
        "qe.anna",
        "--reason",
        "capability study",
        "--json",
        *more,
    )


def imr_expected(x: np.ndarray, excluded: set[int]) -> tuple[float, float]:
    use = np.array([i not in excluded for i in range(len(x))])
    mrs = [abs(x[i] - x[i - 1]) for i in range(1, len(x)) if use[i] and use[i - 1]]
    return float(x[use].mean()), float(np.mean(mrs)) / D2_2


def test_recompute_imr_with_exclusion_matches_numpy(plant: dict[str, Any]) -> None:
    res = recompute(plant, BORE, *window(), "--exclude", "serial:B-017=probe bounced")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    center, sigma = imr_expected(plant["bore"], {17})
    new = out["new"]
    assert new["center"] == pytest.approx(center, rel=1e-12)
    assert new["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert new["lcl"] == pytest.approx(center - 3 * sigma, rel=1e-12)
    assert new["method"] == "mr" and new["n_points"] == 40 and new["excluded"] == 1
    assert new["cpk"] == pytest.approx(min(25.05 - center, center - 24.95) / (3 * sigma))
    assert out["old"] is None and out["assigned"] and out["measurements"] == 40
    rec = out["record"]
    assert rec["exclusions"] == [{"index": 17, "reason": "serial B-017: probe bounced"}]
    assert rec["window"] == [iso_us(T0), iso_us(T0 + 60 * MIN)]
    assert (rec["created_by"], rec["reason"]) == ("qe.anna", "capability study")
    # the change is in the store, audited
    with LimitsStore(plant["data"] / "limits.db", readonly=True) as store:
        (entry,) = store.audit(BORE)
        assert entry.action == "recompute" and entry.user == "qe.anna"
        assert entry.new_limits_id == rec["id"] and entry.old_limits_id is None
        assert store.effective(BORE, 2**62).exclusions[0].index == 17
    show = limits("show", BORE, "--config", str(plant["cfg"]), "--json")
    assert show.exit_code == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["limits"]["id"] == rec["id"]
    assert shown["assignment"]["user"] == "qe.anna"


def test_dry_run_changes_nothing(plant: dict[str, Any]) -> None:
    res = recompute(plant, BORE, *window(), "--dry-run")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["assigned"] is False and out["audit_seq"] is None
    assert not (plant["data"] / "limits.db").exists()
    assert recompute(plant, BORE, *window()).exit_code == 0
    db = plant["data"] / "limits.db"
    before = db.read_bytes()
    res = recompute(plant, BORE, *window(), "--exclude", "17", "--dry-run")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["old"]["center"] != out["new"]["center"]
    with LimitsStore(db, readonly=True) as store:
        assert len(store.audit()) == 1
    assert db.read_bytes() == before


def test_recompute_xbar_r_with_index_and_time_range(plant: dict[str, Any]) -> None:
    gap = plant["gap"]
    # subgroup 3 by index, subgroups 10 and 11 by a time range inside them
    lo, hi = iso_us(T0 + 52 * MIN), iso_us(T0 + 57 * MIN)
    res = recompute(
        plant,
        "gap",
        *window(2),
        "--exclude",
        "index:3=tool change",
        "--exclude",
        f"time:{lo}..{hi}",
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    use = np.ones(20, dtype=bool)
    use[[3, 10, 11]] = False
    center = gap[use].mean()
    sigma = np.mean(np.ptp(gap[use], axis=1)) / D2_5
    assert out["new"]["center"] == pytest.approx(center, rel=1e-12)
    assert out["new"]["sigma"] == pytest.approx(sigma, rel=1e-6)
    assert out["new"]["method"] == "rbar" and out["new"]["subgroup_size"] == 5
    k = 3 * out["new"]["sigma"] / math.sqrt(5)
    assert out["new"]["ucl"] == pytest.approx(out["new"]["center"] + k)
    assert [e["index"] for e in out["record"]["exclusions"]] == [3, 10, 11]
    assert out["record"]["exclusions"][1]["reason"].startswith(f"time {lo}..{hi}: ")


def test_csv_export_gives_the_same_record(plant: dict[str, Any], tmp_path: Path) -> None:
    csv_path = tmp_path / "export.csv"
    with (
        SeriesStore(plant["data"] / "series.db", readonly=True) as store,
        open(csv_path, "w") as fp,
    ):
        store.export(fp, "csv", measurement="measurement")
    args = [*window(), "--exclude", "serial:B-017=probe bounced", "--dry-run"]
    from_store = json.loads(recompute(plant, BORE, *args).stdout)
    res = recompute(plant, BORE, *args, "--csv", str(csv_path))
    assert res.exit_code == 0, res.stderr
    from_csv = json.loads(res.stdout)
    assert from_csv["record"]["id"] == from_store["record"]["id"]
    assert from_csv["measurements"] == 40


def test_change_history_set_revert_pending_cancel(plant: dict[str, Any]) -> None:
    cfg = ["--config", str(plant["cfg"])]
    who = ["--user", "qe.bob", "--reason", "gauge R&R [red]study[/red] :smile:"]
    first = json.loads(recompute(plant, BORE, *window()).stdout)
    res = limits("set", BORE, *cfg, *who, "--center", "25.0", "--sigma", "0.02", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["old"]["limits_id"] == first["record"]["id"]
    assert out["new"]["method"] == "known" and out["new"]["sigma"] == 0.02
    assert out["new"]["ucl"] == pytest.approx(25.06)
    res = limits("revert", BORE, *cfg, *who, "--to", first["record"]["id"], "--effective", "+2h")
    assert res.exit_code == 0, res.stderr
    assert "old" in res.stdout and "%" in res.stdout  # the side-by-side table
    hist = json.loads(limits("history", BORE, *cfg, "--json").stdout)
    assert [h["status"] for h in hist] == ["superseded", "in force", "pending"]
    shown = json.loads(limits("show", BORE, *cfg, "--json").stdout)
    assert shown["limits"]["method"] == "known"
    then = json.loads(
        limits("show", BORE, *cfg, "--at", hist[0]["effective_from"], "--json").stdout
    )
    assert then["limits"]["id"] == first["record"]["id"]
    before = limits("show", BORE, *cfg, "--at", iso_us(T0))
    assert before.exit_code == 0 and "no limits in force at 2025-11-26 08:00:00Z" in before.stdout
    assert [p["limits_id"] for p in shown["pending"]] == [first["record"]["id"]]
    res = limits("cancel", str(hist[2]["seq"]), *cfg, *who)
    assert res.exit_code == 0, res.stderr
    assert json.loads(limits("show", BORE, *cfg, "--json").stdout)["pending"] == []
    trail = json.loads(limits("audit", BORE, *cfg, "--json").stdout)
    assert [e["action"] for e in trail] == ["recompute", "set", "revert", "cancel"]
    assert trail[1]["old"]["center"] == first["new"]["center"]
    assert all(e["user"] and e["why"] for e in trail)
    listed = json.loads(limits("list", *cfg, "--json").stdout)
    assert [x["path"] for x in listed] == [BORE, GAP, "sz/machining/L2/OP20/bore"]
    assert listed[0]["limits"]["method"] == "known" and listed[1]["limits"] is None
    table = limits("list", *cfg)
    assert table.exit_code == 0, table.stderr
    assert listed[0]["limits"]["id"] in table.stdout and "qe.bob (cli)" in table.stdout
    text = limits("audit", *cfg)
    assert text.exit_code == 0 and "gauge R&R [red]study[/red] :smile:" in text.stdout
    ok = limits("verify", *cfg)
    assert ok.exit_code == 0 and "intact (4 audit rows)" in ok.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no characteristic 'nope'"),
        (["show", "bore"], "ambiguous"),
        (["recompute", BORE, "--from", "yesterday", "--to", "now"], "--from 'yesterday'"),
        (["recompute", BORE, "--from", "-1h"], "--from and --to are required"),
        (["recompute", BORE, *window(0.25)], "too few points"),
        (["recompute", BORE, *window(), "--exclude", "serial:X-1"], "serial X-1 matches no"),
        (["recompute", BORE, *window(), "--exclude", "index:40"], "outside the window's 40"),
        (["recompute", BORE, *window(), "--user", " "], "user: must not be empty"),
        (["recompute", BORE, *window(), "--effective", "-1d"], "effective_from is in the past"),
        (["set", BORE, "--center", "1"], "needs a known σ"),
        (["revert", BORE, "--to", "L-0000000000000000"], "never assigned"),
    ],
)
def test_errors_exit_2_with_one_line(plant: dict[str, Any], args: list[str], message: str) -> None:
    full = [*args, "--config", str(plant["cfg"])]
    if args[0] in ("recompute", "set", "revert") and "--user" not in args:
        full += ["--user", "qe.anna"]
    full += ["--reason", "r"] if args[0] in ("recompute", "set", "revert") else []
    res = limits(*full)
    assert res.exit_code == 2, res.stdout
    assert message in res.stderr
    assert res.stderr.startswith("shopspc limits ") and res.stderr.count("\n") == 1
    assert not (plant["data"] / "limits.db").exists()


def test_foreign_store_and_missing_series_are_errors(plant: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = recompute(plant, BORE, *window(), "--data-dir", str(empty))
    assert res.exit_code == 2 and "no local series store" in res.stderr
    conn = sqlite3.connect(plant["data"] / "limits.db")
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    res = limits("list", "--config", str(plant["cfg"]))
    assert res.exit_code == 2
    assert "limits.db" in res.stderr and "not a shopspc limits store" in res.stderr


def test_real_entry_point_bad_config_and_no_traceback(
    plant: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(plant["cfg"].read_text().replace("chart: imr", "chart: imr\n    colour: red", 1))
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "collector.cli", "limits", "list", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 2
    assert "bad.yaml:10: characteristics[0].colour: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recompute_again_is_unchanged(plant: dict[str, Any]) -> None:
    assert recompute(plant, BORE, *window()).exit_code == 0
    res = recompute(plant, BORE, *window())
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["unchanged"]
    with LimitsStore(plant["data"] / "limits.db", readonly=True) as store:
        assert len(store.audit()) == 1


def test_import_legacy_and_list_unconfigured(plant: dict[str, Any]) -> None:
    from spc.limits import LimitsRecord

    a = LimitsRecord("imr", 25.0, 0.01, "mr", 25, params=(("nsigmas", 3.0),))
    gone = "sz/machining/L9/OP99/old"
    (plant["data"] / "limits.json").write_text(json.dumps({BORE: a.to_json(), gone: a.to_json()}))
    cfg = ["--config", str(plant["cfg"])]
    res = limits("import", *cfg, "--user", "migration")
    assert res.exit_code == 0, res.stderr
    assert "2 record(s) imported" in res.stdout
    again = limits("import", *cfg, "--user", "migration")
    assert again.exit_code == 0 and "0 record(s) imported" in again.stdout
    listed = json.loads(limits("list", *cfg, "--json").stdout)
    assert listed[0]["limits"]["id"] == a.id
    assert listed[-1]["path"] == gone and listed[-1]["chart"] == "not configured"
    trail = json.loads(limits("audit", BORE, *cfg, "--json").stdout)
    assert [(e["action"], e["user"]) for e in trail] == [("import", "migration")]


@pytest.mark.parametrize(
    ("values", "more", "message"),
    [
        ([1.0] * 6, [], "no variation"),
        ([1.0, 2.0, 1.5, 1.2], ["--exclude", "1", "--exclude", "3"], "cannot estimate: needs"),
        ([1.0, "x"], [], "plain.csv:3:value: not a number: 'x'"),
        ([1.0, 2.0], ["--from", "-1h", "--to", "now"], "no time or time_us column"),
        ([1.0, 2.0], ["--column", "bore_mm"], "no column 'bore_mm'"),
    ],
)
def test_csv_without_times_and_its_errors(
    plant: dict[str, Any], tmp_path: Path, values: list[Any], more: list[str], message: str
) -> None:
    csv_path = tmp_path / "plain.csv"
    csv_path.write_text("value\n" + "".join(f"{v}\n" for v in values))
    res = recompute(plant, BORE, "--csv", str(csv_path), "--min-points", "2", *more)
    assert res.exit_code == 2, res.stdout
    assert message in res.stderr and res.stderr.count("\n") == 1


def test_csv_without_times_is_indexed(plant: dict[str, Any], tmp_path: Path) -> None:
    x = np.array([1.0, 1.4, 0.8, 1.1, 5.0, 1.2, 0.9, 1.3])
    csv_path = tmp_path / "plain.csv"
    csv_path.write_text("value\n" + "".join(f"{v}\n" for v in x))
    res = recompute(plant, BORE, "--csv", str(csv_path), "--min-points", "5", "--exclude", "4")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    center, sigma = imr_expected(x, {4})
    assert out["new"]["center"] == pytest.approx(center, rel=1e-12)
    assert out["new"]["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert out["record"]["window"] == [str(csv_path), ""]


def test_recompute_agrees_with_the_gateways_phase1(plant: dict[str, Any]) -> None:
    """Without exclusions, recompute estimates exactly what the gateway's Phase I freezes."""
    from collector.config import load_config
    from collector.pipeline import estimate_phase1

    cfg, _ = load_config(plant["cfg"])
    for path, data in ((BORE, plant["bore"]), (GAP, plant["gap"])):
        ch = next(c for c in cfg.characteristics if c.path == path)
        frozen = estimate_phase1(ch, np.asarray(data, dtype=float).ravel(), [T0], T0)
        out = json.loads(recompute(plant, path, *window(2), "--dry-run").stdout)
        rec = out["record"]
        assert (rec["center"], rec["sigma"], rec["method"], rec["n_points"]) == (
            frozen.center,
            frozen.sigma,
            frozen.method,
            frozen.n_points,
        )
        assert rec["params"] == dict(frozen.params)
