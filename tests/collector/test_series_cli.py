"""`shopspc series query|export|stats` on a real store file, through a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.localstore.parse import parse_line
from connectors.localstore.store import SeriesStore, iso_us
from tests.connectors.localstore.helpers import T0, contract_points, encode

SHOPSPC = [sys.executable, "-m", "collector.cli", "series"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [*SHOPSPC, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("series") / "series.sqlite"
    with SeriesStore(path) as store:
        for i in range(5):
            store.write_lines([encode(p) for p in contract_points(T0 + 1000 * i)])
        store.write_lines([encode(p) for p in contract_points(T0, characteristic="depth")])
    return path


def test_query_jsonl_filters(db: Path) -> None:
    proc = run("query", "--db", str(db), "--measurement", "spc", "--characteristic", "bore")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["time_us"] for r in rows] == [T0 + 1000 * i + 1 for i in range(5)]
    assert rows[0]["time"] == iso_us(T0 + 1)
    assert rows[0]["tags"] == contract_points()[1]["tags"]
    assert rows[0]["fields"] == contract_points()[1]["fields"]
    since = iso_us(T0 + 2001).removesuffix("Z")  # naive ISO 8601 is UTC
    proc = run(
        "query",
        "--db",
        str(db),
        "--measurement",
        "spc",
        "--tag",
        "characteristic=bore",
        "--tag",
        "chart=xbar",
        "--since",
        since,
        "--until",
        str(T0 + 4001),
        "--limit",
        "5",
    )
    assert [json.loads(x)["time_us"] for x in proc.stdout.splitlines()] == [T0 + 2001, T0 + 3001]
    proc = run(
        "query", "--db", str(db), "--measurement", "measurement", "--limit", "2", "--newest-first"
    )
    assert [json.loads(x)["time_us"] for x in proc.stdout.splitlines()] == [T0 + 4000, T0 + 3000]
    proc = run("query", "--db", str(db), "--measurement", "alarm", "--since", "1h")  # all older
    assert (proc.returncode, proc.stdout) == (0, "")


def test_query_table(db: Path) -> None:
    proc = run(
        "query",
        "--db",
        str(db),
        "--measurement",
        "alarm",
        "--format",
        "table",
        "--characteristic",
        "depth",
    )
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["time", "characteristic", "gateway"]
    assert len(rows) == 1 and iso_us(T0 + 2) in rows[0] and "tool\tchanged," in rows[0]


def test_export_formats(db: Path, tmp_path: Path) -> None:
    proc = run("export", "--db", str(db), "--format", "lp")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 23 and "23 point(s)" in proc.stderr  # gateway at T0 merged
    assert encode(contract_points()[0]) in lines
    assert {parse_line(x).measurement for x in lines} == {"measurement", "spc", "alarm", "gateway"}

    out = tmp_path / "spc.csv"
    proc = run("export", "--db", str(db), "--format", "csv", "--measurement", "spc", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 6
    assert {r["characteristic"] for r in rows} == {"bore", "depth"}
    assert rows[0]["violations"] == "N1,N5" and float(rows[0]["ucl"]) == 25.01

    proc = run(
        "export",
        "--db",
        str(db),
        "--format",
        "jsonl",
        "--measurement",
        "gateway",
        "--until",
        str(T0 + 1000),
    )
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(records) == 1  # bore and depth points at T0 share the gateway series: merged
    assert {r["measurement"] for r in records} <= {"gateway"}


def test_stats(db: Path) -> None:
    proc = run("stats", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["points_by_measurement"] == {"alarm": 6, "gateway": 5, "measurement": 6, "spc": 6}
    assert stats["oldest_us"] == T0


def test_query_while_a_writer_has_the_store_open(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite"
    with SeriesStore(path) as writer:
        writer.write_lines([encode(p) for p in contract_points()])
        proc = run("query", "--db", str(path), "--measurement", "gateway")
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 1
        writer.write_lines([encode(p) for p in contract_points(T0 + 10)])
        assert writer.stats().points == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--db", "{missing}", "--measurement", "spc"], "no store"),
        (["query", "--db", "{db}", "--measurement", "spc", "--since", "yesterday"], "--since"),
        (["query", "--db", "{db}", "--measurement", "spc", "--tag", "chart"], "KEY=VALUE"),
        (["query", "--db", "{db}", "--measurement", "spc", "--format", "xml"], "jsonl or table"),
        (["export", "--db", "{db}", "--format", "parquet"], "csv, lp, jsonl"),
        (["export", "--db", "{db}", "--format", "lp", "--precision", "m"], "precision"),
        (["stats", "--db", "{missing}"], "no store"),
    ],
)
def test_bad_usage_exits_2_without_traceback(
    db: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    argv = [a.format(db=db, missing=tmp_path / "missing.sqlite") for a in args]
    proc = run(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "missing.sqlite").exists()
