"""Dependency direction and one-library-one-module (CONVENTIONS.md, "The shape" and habit 7)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"spc", "collector", "connectors", "benchmarks", "tests"}
# spc is pure maths: no I/O frameworks, no clock, no logging set-up.
SPC_FORBIDDEN = {
    "asyncio",
    "socket",
    "logging",
    "time",
    "datetime",
    "threading",
    "subprocess",
    "selectors",
}
SPC_ALLOWED_THIRD_PARTY = {"numpy", "scipy"}
PROTOCOL_LIBS = ("asyncua", "pymodbus", "paho", "influxdb_client", "httpx")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", _modules("spc"), ids=lambda p: str(p.relative_to(ROOT)))
def test_spc_is_pure(path: Path) -> None:
    """spc imports nothing of ours but spc, no asyncio/socket/logging/clock, only numpy/scipy outside stdlib."""
    import sys

    for name in _imports(path):
        top = _top(name)
        assert top not in OURS - {"spc"}, (
            f"{path.name} imports {name}: spc must import nothing of ours"
        )
        assert top not in SPC_FORBIDDEN, (
            f"{path.name} imports {name}: spc has no I/O, clock or logging"
        )
        if top != "spc" and top not in sys.stdlib_module_names:
            assert top in SPC_ALLOWED_THIRD_PARTY, (
                f"{path.name} imports {name}: spc uses numpy/scipy only"
            )


@pytest.mark.parametrize("path", _modules("connectors"), ids=lambda p: str(p.relative_to(ROOT)))
def test_connectors_import_no_collector(path: Path) -> None:
    """Dependencies point one way: collector → connectors, never back."""
    for name in _imports(path):
        assert _top(name) != "collector", f"{path} imports {name}"


def test_each_protocol_library_in_one_module_only() -> None:
    """asyncua, pymodbus, paho and influxdb-client are each imported in exactly one adapter module."""
    seen: dict[str, list[str]] = {lib: [] for lib in PROTOCOL_LIBS}
    for package in ("spc", "collector", "connectors"):
        for path in _modules(package):
            for name in _imports(path):
                if _top(name) in seen:
                    seen[_top(name)].append(str(path.relative_to(ROOT)))
    for lib, where in seen.items():
        assert len(set(where)) <= 1, f"{lib} is imported in {sorted(set(where))}"


def test_config_is_data_only() -> None:
    """config/ holds data (YAML, JSON schema), no Python package."""
    assert not list((ROOT / "config").rglob("*.py"))
