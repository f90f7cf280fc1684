"""Real servers for integration tests: started on free loopback ports in temp dirs, stopped by PID.

Under ``CI=true`` a missing server binary is a failure, never a skip
(DEVELOPERS.md, "Real servers in tests"). Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def in_ci() -> bool:
    """True when running under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """The path of a server binary; skip the test when absent, fail under CI."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed (make test installs it with apt-get)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Block until 127.0.0.1:port accepts connections (or fail, with the server's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_log_tail(proc)}")
        with contextlib.closing(socket.socket()) as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


@dataclass
class Server:
    """A running server process and where it listens."""

    proc: subprocess.Popen
    port: int
    workdir: Path
    argv: Sequence[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop by PID (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.proc = _spawn(self.argv, self.workdir)
        wait_for_port(self.port, proc=self.proc)


_LOGS: dict[int, Path] = {}


def _spawn(argv: Sequence[str], cwd: Path) -> subprocess.Popen:
    """Start a server with its output in ``cwd/server.log`` (a pipe could fill and stall it)."""
    log = cwd / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = log
    return proc


def _log_tail(proc: subprocess.Popen) -> str:
    log = _LOGS.get(proc.pid)
    return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


@contextlib.contextmanager
def run_server(
    argv: Sequence[str], port: int, workdir: Path, timeout: float = 15.0
) -> Iterator[Server]:
    """Start ``argv`` in ``workdir``, wait for ``port``, yield the :class:`Server`, stop it by PID."""
    server = Server(_spawn(argv, workdir), port, workdir, argv)
    try:
        wait_for_port(port, timeout, server.proc)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mosquitto(tmp: Path) -> Iterator[Server]:
    """A Debian mosquitto broker on a free loopback port, persistence in ``tmp``."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    # As root, mosquitto drops to the `mosquitto` user, which cannot write pytest's 0700
    # temp dir, and persistence (sessions across a restart) silently fails.
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp}/\nlog_dest stdout\nmax_queued_messages 100000\n"
        # Nagle off, as deploy/mosquitto/mosquitto.conf: PUBACKs otherwise wait ~40 ms
        "set_tcp_nodelay true\n" + user
    )
    with run_server([binary, "-c", str(conf)], port, tmp) as server:
        yield server


async def cancel_and_wait(task: asyncio.Task, interval: float = 0.5, attempts: int = 40) -> None:
    """Cancel a task and wait for it, cancelling again while it still runs (bounded).

    Python 3.11's ``asyncio.wait_for``, used inside asyncua and pymodbus, can
    swallow a cancellation that arrives as the wrapped call finishes; a source
    then retries as if nothing happened. The gateway re-cancels the same way.
    """
    for _ in range(attempts):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=interval)
        if done:
            break
    with contextlib.suppress(asyncio.CancelledError):
        await task
