"""The shopspc console command: analyze's exit codes and I/O (contracts/analyze.md), demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.pistonrings import PHASE1

SHOPSPC = [sys.executable, "-m", "collector.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="100")
    return subprocess.run(
        [*SHOPSPC, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_analyze_file_ok(tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"chart": "xbar-r", "data": PHASE1}))
    proc = run("analyze", str(req))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [c["name"] for c in out["charts"]] == ["xbar", "r"]


def test_analyze_stdin_with_violations_exits_0() -> None:
    """Exit 0 on success, also when violations are found."""
    body = {"chart": "imr", "data": [0, 0.1, -0.1, 0, 0.05, 50]}
    proc = run("analyze", "-", stdin=json.dumps(body))
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["charts"][0]["violations"]["N1"] == [5]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"chart": "imr", "data": [1, "x"]}', "data[1]"),
        ('{"chart": "imr", "data": [1, NaN]}', ""),
        ("not json", ""),
        ('{"chart": "p", "data": [1, 2], "sizes": [5]}', "sizes"),
        ("[" * 50000, ""),
    ],
)
def test_bad_request_exit_2_json_error_no_traceback(text: str, path: str) -> None:
    """A bad request prints one JSON error object on stdout, a readable line on stderr, exit 2."""
    proc = run("analyze", "-", stdin=text)
    assert proc.returncode == 2
    err = json.loads(proc.stdout)
    assert set(err) == {"error"}
    assert err["error"]["path"] == path
    assert err["error"]["message"]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("shopspc analyze: bad request")


def test_missing_file_is_a_bad_request(tmp_path: Path) -> None:
    proc = run("analyze", str(tmp_path / "nope.json"))
    assert proc.returncode == 2
    assert "cannot read" in json.loads(proc.stdout)["error"]["message"]


def test_csv_shortcut_matches_json_request(tmp_path: Path) -> None:
    """The CSV shortcut turns a column into the same request and the same response."""
    csv = tmp_path / "bore.csv"
    lines = ["subgroup,part,bore_mm"]
    for g, row in enumerate(PHASE1, start=1):
        lines += [f"{g},{j},{v}" for j, v in enumerate(row, start=1)]
    csv.write_text("\n".join(lines) + "\n")
    proc = run(
        "analyze",
        str(csv),
        "--chart",
        "xbar-r",
        "--column",
        "bore_mm",
        "--subgroup-column",
        "subgroup",
    )
    assert proc.returncode == 0, proc.stderr
    by_csv = json.loads(proc.stdout)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"chart": "xbar-r", "data": PHASE1}))
    by_json = json.loads(run("analyze", str(req)).stdout)
    assert by_csv == by_json
    same = run(
        "analyze", str(csv), "--chart", "xbar-r", "--column", "bore_mm", "--subgroup-size", "5"
    )
    assert json.loads(same.stdout) == by_json


def test_csv_bad_cell_names_line_and_column(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("t,value\n1,1.5\n2,abc\n3,2.0\n")
    proc = run("analyze", str(csv), "--column", "value")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["path"] == f"{csv}:3:value"


def test_csv_missing_cells_are_missing_observations(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("value\n1\n\n2\nNA\n4\n")
    out = json.loads(run("analyze", str(csv)).stdout)
    assert out["charts"][0]["statistics"] == [1.0, 2.0, None, 4.0]


def test_summary_is_readable(tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text(
        json.dumps({"chart": "imr", "data": [1, 2, 1, 2, 30], "capability": {"lsl": 0, "usl": 40}})
    )
    proc = run("analyze", str(req), "--summary")
    assert proc.returncode == 0
    assert "N1" in proc.stdout and "Cpk" in proc.stdout


def test_demo_runs_and_shows_alarms() -> None:
    proc = run("demo")
    assert proc.returncode == 0, proc.stderr
    assert "Phase II" in proc.stdout
    assert "N1" in proc.stdout and "EWMA" in proc.stdout
