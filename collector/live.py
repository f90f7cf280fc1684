"""``shopspc demo --live``: simulated stations and the gateway in one process, live in the terminal.

The stations of :mod:`collector.simulate` and a :class:`~collector.pipeline.Gateway`
on the same configuration run in one event loop; a ``rich`` table shows per
characteristic the last value, the points plotted, the limits, whether it is in
control and the last rule that fired, and alarm lines are printed above it as
they happen. A station or broker port another program holds (a second demo,
a real server) is moved to a free loopback port first, with one line saying so
(:func:`collector.simulate.prepare_demo`). A rule that keeps firing on consecutive points is printed once
(and counted); the series and every alarm line still go to the store. The HTTP
API and web screens are served on ``gateway.http`` (the next free port if it is
taken) in the same loop, and the user ``demo`` (an admin) gets a new random
password at each start, printed with the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from collector.config import GatewayConfig
from collector.pipeline import AlarmEvent, Gateway
from collector.simulate import prepare_demo, run_simulation

__all__ = ["run_live_demo", "status_table"]

log = logging.getLogger(__name__)

STATIONS_READY_S = 15.0
"""The gateway waits at most this long for the simulated stations before it starts anyway."""


def _num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.5g}"


def status_table(gw: Gateway) -> Table:
    """The live table: one row per characteristic."""
    t = Table(
        title=f"shopspc gateway {gw.gateway_id} — {gw.stats.samples_in} samples, "
        f"{gw.stats.points} points, {gw.stats.alarms} alarms, "
        f"outbox {gw.stats.lines_written}/{gw.stats.lines_appended} written",
        title_justify="left",
    )
    for col, just in (
        ("station/characteristic", "left"),
        ("last value", "right"),
        ("points", "right"),
        ("LCL", "right"),
        ("centre", "right"),
        ("UCL", "right"),
        ("state", "left"),
        ("last rule", "left"),
    ):
        t.add_column(col, justify=just, no_wrap=col.startswith("station"))  # type: ignore[arg-type]
    for v in gw.views:
        if v.phase == "phase1":
            state = f"[cyan]Phase I {v.phase1_have}/{v.phase1_need}[/]"
        elif v.phase == "uncharted":
            state = "[dim]not charted[/]"
        elif v.n_points == 0:
            state = "[dim]no data[/]"
        elif v.in_control:
            state = "[green]in control[/]"
        else:
            state = "[bold red]OUT OF CONTROL[/]"
        unit = f" {v.unit}" if v.unit else ""
        t.add_row(
            v.path.split("/", 3)[3],
            _num(v.last_value) + unit,
            str(v.n_points),
            _num(v.lcl),
            _num(v.center),
            _num(v.ucl),
            state,
            v.last_rule or "",
        )
    return t


class _AlarmPrinter:
    """Prints an alarm line, once per run of consecutive firings of one rule.

    An alarm of no characteristic on the screen (a line-level one such as an
    alarm flood) is printed every time.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.gw: Gateway | None = None
        self._last: dict[tuple[str, str, str], int] = {}
        self.printed = 0

    def __call__(self, a: AlarmEvent) -> None:
        assert self.gw is not None
        view = next((v for v in self.gw.views if v.path == a.path), None)
        if view is not None:
            key = (a.path, a.chart, a.rule)
            prev = self._last.get(key)
            self._last[key] = view.n_points
            if prev is not None and view.n_points - prev <= 1:
                return
        self.printed += 1
        when = datetime.fromtimestamp(a.time_us / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3]
        colour = {"critical": "bold red", "major": "red", "minor": "yellow"}.get(a.severity, "red")
        self.console.print(
            f"[{colour}]ALARM[/] {when} {a.path} [bold]{a.rule}[/] on {a.chart} ({a.severity}): "
            f"{a.value:.5g} vs [{a.lcl:.5g}, {a.ucl:.5g}], part {a.serial or '-'}"
        )


async def run_live_demo(
    cfg: GatewayConfig,
    connectors: Mapping[str, BaseModel],
    *,
    rate: float = 5.0,
    duration: float | None = None,
    seed: int = 1,
    pattern_start: int = 20,
    console: Console | None = None,
    refresh_s: float = 0.5,
) -> Gateway:
    """Run stations and gateway until Ctrl-C/SIGTERM or ``duration``; returns the stopped gateway.

    Taken station/broker ports are moved first (one line each on the console);
    the gateway reads the stations where they then listen.
    """
    from rich.live import Live

    console = console or Console()
    setup = prepare_demo(cfg, dict(connectors))
    for move in setup.moves:
        console.print(str(move))
    cfg, connectors = setup.cfg, setup.connectors
    printer = _AlarmPrinter(console)
    gw = Gateway(cfg, dict(connectors), on_alarm=printer)
    printer.gw = gw
    web = _web_screens(cfg, gw, console)
    stop = asyncio.Event()
    stop_sim = asyncio.Event()
    stations_ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    def say(line: str) -> None:
        console.print(f"[dim]{line}[/]")

    async def gateway() -> None:
        try:
            # Stations first: a source that finds its port still closed backs off for
            # seconds, and the table would show no data meanwhile. Bounded, and Ctrl-C wins.
            waits = [asyncio.ensure_future(e.wait()) for e in (stations_ready, stop)]
            try:
                await asyncio.wait(
                    waits, timeout=STATIONS_READY_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            await gw.run(stop)
        finally:
            stop_sim.set()

    async def screen(live: Any) -> None:
        try:
            async with asyncio.timeout(duration):
                while not stop.is_set():
                    live.update(status_table(gw))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), refresh_s)
        except TimeoutError:
            pass
        finally:
            stop.set()

    async def serve_web() -> None:
        if web is None:
            return
        from collector.api.server import serve

        app, host, port = web
        try:
            await serve(app, host, port, stop)
        except OSError as exc:
            say(f"web screens not served: {exc}")

    try:
        with Live(status_table(gw), console=console, refresh_per_second=4) as live:
            await asyncio.gather(
                serve_web(),
                run_simulation(
                    cfg,
                    dict(connectors),
                    rate=rate,
                    seed=seed,
                    start=pattern_start,
                    stop=stop_sim,
                    say=say,
                    ready=stations_ready,
                ),
                gateway(),
                screen(live),
            )
            live.update(status_table(gw))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if web is not None:
            from collector.api.app import close_app

            close_app(web[0])
    console.print(
        f"\nstopped: {gw.stats.points} points, {gw.stats.alarms} alarm lines "
        f"({printer.printed} shown), outbox pending {gw.stats.outbox_pending}; "
        f"series in {_store_hint(cfg, gw)}"
    )
    return gw


DEMO_USER = "demo"
"""The web screens' user of the demo (an admin), with a new random password at each start."""


def _web_screens(cfg: GatewayConfig, gw: Gateway, console: Console) -> tuple[Any, str, int] | None:
    """The HTTP API and web screens on ``gateway.http`` (the next free port if that one is
    taken), with the demo user's new password printed; None when ``http`` is ''."""
    address = cfg.gateway.http_address
    if address is None:
        return None
    from collector.api.app import ApiSettings, create_app
    from collector.simulate import free_port_from

    host, configured = address
    port = free_port_from(host, configured)
    if port != configured:
        console.print(f"web screens: port {configured} busy, using {port}")
    app = create_app(gw, ApiSettings.of(cfg, gw.data_dir), close_at_shutdown=False)
    auth = app.state.api.auth
    password = secrets.token_urlsafe(12)
    if any(u.name == DEMO_USER for u in auth.users()):
        auth.set_password(DEMO_USER, password)
    else:
        auth.add_user(DEMO_USER, password, "admin")
    where = escape(f"[{host}]" if ":" in host else host)
    console.print(
        f"web screens: [bold]http://{where}:{port}/[/] — sign in as [bold]{DEMO_USER}[/], "
        f"password [bold]{escape(password)}[/] (new at each demo start)"
    )
    return app, host, port


def _store_hint(cfg: GatewayConfig, gw: Gateway) -> str:
    for sink in gw.sinks:
        path = getattr(getattr(sink, "config", None), "path", None)
        if path:
            return f"{path} (shopspc series query --db {path})"
    return str(gw.data_dir)
