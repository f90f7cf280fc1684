"""The real-server harness itself: mosquitto starts, listens on loopback, stops by PID."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.servers import HOST, free_port, mosquitto, require_binary


@pytest.mark.integration
def test_mosquitto_starts_and_stops(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        with socket.create_connection((HOST, broker.port), timeout=5):
            pass
        pid = broker.pid
    assert broker.proc.poll() is not None, f"mosquitto {pid} still running"


def test_free_port_is_loopback_and_unused() -> None:
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex((HOST, port)) != 0


def test_require_binary_finds_sh() -> None:
    assert require_binary("sh").endswith("sh")
