#!/usr/bin/env python3
"""Container health check of the shopspc gateway (the Dockerfile's ``HEALTHCHECK``).

Standard library only, exit status 0 = healthy, 1 = unhealthy, one line of reason on stdout.

``SHOPSPC_HEALTHCHECK`` selects what is checked:

* ``http``: ``GET $SHOPSPC_HEALTH_URL`` (default ``http://127.0.0.1:8470/healthz``) must
  answer 2xx within 3 s.
* ``process``: a ``shopspc run`` process is alive in this container (``/proc``).
* ``auto`` (default): ``http`` when something listens on the URL's port, else ``process``.
  The gateway has no HTTP API yet, so today this is the process check; once ``/healthz``
  exists it is used without changing the image. Set ``http`` then, so that a gateway whose
  API stopped answering is unhealthy rather than "alive".
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8470/healthz"


@dataclass(frozen=True)
class Health:
    """The verdict of one check and why."""

    ok: bool
    reason: str


def check_http(url: str, timeout: float = 3.0) -> Health | None:
    """GET ``url``: healthy on 2xx; ``None`` when nothing listens there (connection refused)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return Health(200 <= resp.status < 300, f"{url}: HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        exc.close()
        return Health(False, f"{url}: HTTP {exc.code}")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        return Health(False, f"{url}: {exc.reason}")
    except OSError as exc:
        return Health(False, f"{url}: {exc}")


def find_gateway(proc: Path = Path("/proc")) -> int | None:
    """The pid of a ``shopspc run`` process under ``proc``, or None."""
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        names = [os.path.basename(a.decode(errors="replace")) for a in argv]
        if "shopspc" in names and "run" in names[names.index("shopspc") + 1 :]:
            return int(entry.name)
    return None


def check(mode: str, url: str = DEFAULT_URL, proc: Path = Path("/proc")) -> Health:
    """Run the check ``mode`` (``auto``, ``http`` or ``process``)."""
    if mode not in ("auto", "http", "process"):
        return Health(False, f"SHOPSPC_HEALTHCHECK={mode!r}: expected auto, http or process")
    if mode in ("auto", "http"):
        result = check_http(url)
        if result is not None:
            return result
        if mode == "http":
            return Health(False, f"{url}: connection refused")
    pid = find_gateway(proc)
    if pid is None:
        return Health(False, "no 'shopspc run' process")
    return Health(True, f"'shopspc run' is alive (pid {pid})")


def main() -> int:
    """Entry point: check, print the reason, exit 0 (healthy) or 1."""
    result = check(
        os.environ.get("SHOPSPC_HEALTHCHECK", "auto"),
        os.environ.get("SHOPSPC_HEALTH_URL", DEFAULT_URL),
    )
    print(result.reason)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
