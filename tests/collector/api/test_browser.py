"""The web screens in headless Chromium (Debian chromium + chromium-driver, Selenium).

A real Gateway and the app are served by uvicorn on 127.0.0.1 in a thread of
their own (Selenium blocks); the test signs in through the page, watches the
overview, plants an out-of-control value with ``gw.process`` in the server's
loop, sees the tile turn red and the alarm appear live, acknowledges it with
a cause and sees it acknowledged; on a RUNNING gateway (``gw.run`` in the
server's loop) values are typed into the manual-entry screen and stored with
``source=manual``. With ``SHOPSPC_SCREENSHOTS=1`` it writes a
screenshot of every screen to ``docs/screenshots/`` (run
``SHOPSPC_SCREENSHOTS=1 .venv/bin/pytest tests/collector/api/test_browser.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.api.app import ApiSettings, close_app, create_app
from collector.api.server import serve
from collector.pipeline import Gateway
from connectors.base import ConnectorStats
from connectors.localstore.store import SeriesStore
from tests.servers import free_port, require_binary

from .conftest import IdleSource, char, config, sample

pytestmark = pytest.mark.integration

A = "s1/a1/l1/st1/a"
USER, PASSWORD = "lea", "correct horse battery"
SHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
WAIT_S = 15
# no run of 9 on a side, no trend of 6, no 14 alternating, nothing beyond 2σ
_WOBBLE = (0.3, -0.6, 0.9, 0.4, -0.8, -0.2, 1.2, -1.1)


class Served:
    """The app served by uvicorn in a thread with its own event loop."""

    def __init__(self, gateway: Any, tmp_path: Path) -> None:
        self.gw = gateway
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(
            gateway, ApiSettings(users_db=tmp_path / "users.db", cookie_secure=False)
        )
        self.app.state.api.auth.add_user(USER, PASSWORD, "engineer")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="web-test-server", daemon=True)

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc
        finally:
            self.ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        started = asyncio.Event()
        task = asyncio.create_task(
            serve(self.app, "127.0.0.1", self.port, self._stop, graceful_s=2, started=started)
        )
        await asyncio.wait_for(started.wait(), 10)
        self.ready.set()
        await task

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(15), "the server did not start in 15 s"
        if self.error is not None:
            raise self.error

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's loop (where the gateway's calls belong) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def run_gateway(self) -> None:
        """Start ``gw.run`` in the server's loop (``Gateway.enter`` waits for its processor)."""

        async def go() -> None:
            self._gw_stop = asyncio.Event()
            self._gw_task = asyncio.create_task(self.gw.run(self._gw_stop))

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop_gateway(self) -> None:
        """Stop a gateway started by :meth:`run_gateway` (idempotent)."""
        task = getattr(self, "_gw_task", None)
        if task is None or self.loop is None or not self.thread.is_alive():
            return
        self._gw_task = None

        async def end() -> None:
            self._gw_stop.set()
            await asyncio.wait_for(task, 15)

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(20)

    def stop(self) -> None:
        self.stop_gateway()
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)
        close_app(self.app)


@pytest.fixture
def served(gateway, tmp_path) -> Iterator[Served]:
    s = Served(gateway, tmp_path)
    # in-control history that breaks no Nelson rule: green tiles, a chart, a capability
    batch = [
        sample(b, 10 + _WOBBLE[(k + j) % len(_WOBBLE)], k, f"P{k}")
        for k in range(60)
        for j, b in enumerate(("a", "b", "c"))
    ]
    lines = gateway.process([("dev", batch)])
    with SeriesStore(gateway.data_dir / "series.db") as store:  # what recompute reads
        store.write_lines(lines)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium")
    driver_bin = require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1920,1080",
        "--lang=en-US",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, what: str, cond: Callable[[Any], Any]) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # live events re-render the screens: an element found a moment ago may be gone
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(cond)
    except TimeoutException:
        logs = ""
        with contextlib.suppress(Exception):
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
        raise AssertionError(f"waited {WAIT_S} s for {what}; browser log:\n{logs}") from None


def _page_errors(driver: Any) -> list[str]:
    """Script errors and CSP refusals the page logged (failed requests like a 401 are expected)."""
    return [
        f"{e.get('source')}: {e.get('message')}"
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" and e.get("source") != "network"
    ]


def _text(driver: Any, sel: str) -> str | None:
    """The text of the first match, read in one step (no element handle to go stale)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", sel
    )


def _attr(driver: Any, sel: str, name: str) -> str | None:
    """An attribute of the first match, read in one step."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null",
        sel,
        name,
    )


def _click(driver: Any, sel: str) -> None:
    """Click the first match once it is there (retried while re-renders replace it)."""

    def click(d: Any) -> bool:
        found = _css(d, sel)
        if not found:
            return False
        found[0].click()
        return True

    _wait(driver, f"a click on {sel}", click)


def _css(driver: Any, sel: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def _shot(driver: Any, name: str, height: int | None = None) -> None:
    """A PNG of the page into docs/screenshots/ when SHOPSPC_SCREENSHOTS=1 (``height``: a taller window)."""
    if os.environ.get("SHOPSPC_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    if height is not None:
        driver.set_window_size(size["width"], height)
    try:
        driver.save_screenshot(str(SHOTS / f"{name}.png"))
    finally:
        if height is not None:
            driver.set_window_size(size["width"], size["height"])


def _sign_in(driver: Any, url: str) -> None:
    driver.get(url + "/")
    _wait(
        driver,
        "the sign-in form",
        lambda d: _css(d, "#login-form") and d.find_element("id", "login").is_displayed(),
    )
    _shot(driver, "sign-in")
    driver.find_element("id", "login-name").send_keys(USER)
    driver.find_element("id", "login-password").send_keys(PASSWORD)
    driver.find_element("id", "login-submit").click()


def _tile_state(driver: Any, path: str) -> str | None:
    return _attr(driver, f'.tile[data-path="{path}"]', "data-state")


def test_overview_shows_a_planted_alarm_live_and_it_is_acknowledged(served, browser) -> None:
    d = browser
    _sign_in(d, served.url)
    _wait(d, "three tiles", lambda d: len(_css(d, ".tile")) == 3)
    assert _tile_state(d, A) == "ok"
    _wait(d, "the live stream", lambda d: "on" in _attr(d, "#live", "class"))
    assert "No open alarms" in _text(d, "#newest-alarms")
    _shot(d, "overview")

    # a planted out-of-control value: the tile turns red, the alarm is listed, no reload
    served.call(lambda: served.gw.process([("dev", [sample("a", 30.0, 100, "P100")])]))
    _wait(d, "the red tile", lambda d: _tile_state(d, A) == "bad")
    _wait(d, "the alarm on top", lambda d: _css(d, "#newest-alarms li[data-alarm]"))
    # the x chart's N1 (its MR chart raises one too), listed among the newest
    alarm_id = _wait(
        d,
        "the x alarm",
        lambda d: d.execute_script(
            "const li = [...document.querySelectorAll('#newest-alarms li[data-alarm]')]"
            ".find((e) => e.textContent.includes('(x)'));"
            "return li && li.textContent.includes('N1') && li.textContent.includes('30')"
            " ? li.dataset.alarm : null"
        ),
    )
    _shot(d, "overview-alarm")

    # the alarm view: acknowledge with a comment and an assignable cause
    _click(d, "#nav-alarms")
    _wait(d, "the alarm row", lambda d: _css(d, f'tr[data-alarm="{alarm_id}"] button.ack'))
    _shot(d, "alarms")
    _click(d, f'tr[data-alarm="{alarm_id}"] button.ack')
    _wait(d, "the acknowledge dialog", lambda d: _css(d, "#ack-form"))
    d.find_element("id", "ack-comment").send_keys("insert changed")
    cause = d.find_element("id", "ack-cause")
    if cause.tag_name == "select":
        from selenium.webdriver.support.ui import Select

        Select(cause).select_by_value("machine:MC-TOOL-WEAR")
    else:
        cause.send_keys("machine:MC-TOOL-WEAR")
    _shot(d, "acknowledge")
    d.find_element("id", "ack-submit").click()
    row = f'tr[data-alarm="{alarm_id}"]'
    _wait(d, "the acknowledged status", lambda d: _attr(d, row, "data-status") == "acknowledged")
    assert USER in _text(d, row) and "MC-TOOL-WEAR" in _text(d, row)
    assert not _css(d, f'tr[data-alarm="{alarm_id}"] button.ack')
    _wait(d, "the Pareto bar", lambda d: _css(d, "#pareto svg rect.cause"))
    _shot(d, "alarms-acknowledged")
    a = served.call(lambda: served.gw.alarms.get(alarm_id))
    assert a["status"] == "acknowledged" and a["ack_user"] == USER

    # the MR chart's alarm: shelved for an hour by the engineer
    mr = served.call(lambda: next(x for x in served.gw.alarms.active() if x["chart"] == "mr"))
    _click(d, f'tr[data-alarm="{mr["alarm_id"]}"] button.shelve')
    _wait(d, "the shelve dialog", lambda d: _css(d, "#shelve-comment"))
    d.find_element("id", "shelve-comment").send_keys("gauge being recalibrated")
    _click(d, "#shelve-submit")
    _wait(
        d,
        "the unshelve button",
        lambda d: _css(d, f'tr[data-alarm="{mr["alarm_id"]}"] button.unshelve'),
    )
    assert served.call(lambda: served.gw.alarms.get(mr["alarm_id"]))["shelved_until"]

    # signing out ends the session: the sign-in form again
    _click(d, "#logout")
    _wait(d, "the sign-in form", lambda d: _attr(d, "#login", "hidden") is None)
    assert d.execute_script("return fetch('/api/v1/auth/me').then((r) => r.status)") == 401
    assert (a["cause_category"], a["cause_code"]) == ("machine", "MC-TOOL-WEAR")
    assert a["ack_comment"] == "insert changed"


def test_chart_view_draws_limits_zones_violations_and_appends_live(served, browser) -> None:
    d = browser
    served.call(lambda: served.gw.process([("dev", [sample("a", 30.0, 100, "P100")])]))
    _sign_in(d, served.url)
    _wait(d, "the overview", lambda d: len(_css(d, ".tile")) == 3)
    _click(d, f'.tile[data-path="{A}"]')
    _wait(d, "the control chart", lambda d: _css(d, "#control-chart svg.control-chart circle.pt"))
    _wait(d, "the capability", lambda d: "Cpk" in (_text(d, "#capability") or ""))
    assert len(_css(d, "#control-chart svg.control-chart path.ctl")) == 2  # UCL, LCL
    assert len(_css(d, "#control-chart svg.control-chart path.zone")) == 4  # ±1σ, ±2σ
    assert len(_css(d, "#control-chart svg.control-chart line.spec")) == 2  # LSL, USL
    assert [e.text for e in _css(d, "#control-chart svg.control-chart text.code")] == ["N1"]
    assert _css(d, "#control-chart svg.dispersion-chart circle.pt")  # the MR chart
    before = len(_css(d, "#control-chart svg.control-chart circle.pt"))
    assert before == 61 and "USL" in _text(d, "#control-chart svg.control-chart")
    _shot(d, "chart")

    served.call(lambda: served.gw.process([("dev", [sample("a", 10.5, 101, "P101")])]))
    _wait(
        d,
        "the live point",
        lambda d: len(_css(d, "#control-chart svg.control-chart circle.pt")) == before + 1,
    )

    # zoom to the newest points, pick one: its zone, rule and 5M1E context
    from selenium.webdriver.common.keys import Keys

    zoom = d.find_element("id", "zoom")
    zoom.send_keys(Keys.HOME)  # the range's minimum: 10 points
    _wait(
        d,
        "the zoomed chart",
        lambda d: len(_css(d, "#control-chart svg.control-chart circle.pt")) == 10,
    )
    pan = d.find_element("id", "pan")
    pan.send_keys(Keys.HOME)  # back to the oldest points kept: none broke a rule
    _wait(d, "the oldest points", lambda d: not _css(d, "#control-chart svg.control-chart .viol"))
    assert len(_css(d, "#control-chart svg.control-chart circle.pt")) == 10
    d.find_element("id", "pan").send_keys(Keys.END)  # and back to the newest
    _wait(d, "the newest points", lambda d: _css(d, "#control-chart svg.control-chart .viol"))
    _click(d, "#control-chart svg.control-chart circle.pt.viol")
    _wait(d, "the point's details", lambda d: "N1" in _text(d, "#point-context"))
    assert "P100" in _text(d, "#point-context")

    # the engineer view: limits in force and their history
    d.get(f"{served.url}/#/engineer/{A}")
    _wait(d, "the limits history", lambda d: _css(d, "#limits-history tbody tr"))
    assert "Recompute limits" in _text(d, "#limits")

    # recompute (dry run) with the oldest point excluded, picked on the chart
    _wait(d, "the recompute form", lambda d: _css(d, "#rc-exclude"))
    _click(d, "#control-chart svg.control-chart circle.pt")
    _click(d, "#exclude-point")
    assert d.find_element("id", "rc-exclude").get_attribute("value") == "serial:P0"
    for field, text in (
        ("rc-from", "2025-11-24T00:00:00Z"),
        ("rc-to", "2025-11-25T00:00:00Z"),
        ("rc-reason", "probe slipped"),
    ):
        d.find_element("id", field).clear()
        d.find_element("id", field).send_keys(text)
    _click(d, "#recompute button[type=submit]")
    _wait(d, "the dry run's answer", lambda d: "usable" in (_text(d, "#rc-result") or ""))
    assert "60 subgroups, 59 usable, not assigned" in _text(d, "#rc-result")
    assert _page_errors(d) == []
    _shot(d, "engineer", height=1900)


def test_language_switch_is_remembered(served, browser) -> None:
    d = browser
    _sign_in(d, served.url)
    _wait(d, "the overview", lambda d: len(_css(d, ".tile")) == 3)
    assert _text(d, "#nav-overview") == "Line overview"
    _click(d, "#lang")
    _wait(d, "Chinese labels", lambda d: _text(d, "#nav-overview") == "产线总览")
    _wait(d, "Chinese tiles", lambda d: "受控" in _text(d, "#tiles"))
    _shot(d, "overview-zh")
    d.refresh()
    _wait(d, "Chinese after a reload", lambda d: _text(d, "#nav-alarms") == "报警")
    assert d.execute_script("return localStorage.getItem('shopspc.lang')") == "zh"
    assert _page_errors(d) == []


class CaptureSink:
    """Keeps the line protocol the gateway writes (what the series stores would get)."""

    name, precision = "cap", "us"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stats = ConnectorStats(state="connected")

    async def write(self, batch: Any) -> Any:
        self.lines += [b.decode() if isinstance(b, bytes) else b for b in batch]

    async def close(self) -> None:
        return None


@pytest.fixture
def entry_served(tmp_path) -> Iterator[tuple[Served, CaptureSink]]:
    """A running gateway: a (manual checks, a static machine, specs 4…16 mm) and b."""
    sink = CaptureSink()
    manual = {"plausible_min": 0.0, "plausible_max": 20.0, "decimals": 2}
    gw = Gateway(
        config(
            char(
                "a", unit="mm", nominal=10.0, manual=manual, context={"machine": {"static": "MC-7"}}
            ),
            char("b", unit="mm"),
        ),
        {},
        data_dir=tmp_path / "gw",
        sources=[IdleSource()],
        sinks=[sink],
    )
    s = Served(gw, tmp_path)
    gw.process([("dev", [sample(b, 10 + _WOBBLE[k % 8], k) for k in range(40) for b in "ab"])])
    try:
        s.start()
        s.run_gateway()
        yield s, sink
    finally:
        s.stop()
        gw.close()


def _entry_n(driver: Any) -> int:
    return int(_attr(driver, "#entry-chart", "data-n") or -1)


def _type_value(driver: Any, text: str) -> None:
    box = driver.find_element("id", "entry-value")
    box.clear()
    box.send_keys(text)
    _click(driver, "#entry-submit")


def test_manual_entry_stores_confirms_and_refuses(entry_served, browser) -> None:
    served, sink = entry_served
    d = browser
    B = "s1/a1/l1/st1/b"
    _sign_in(d, served.url)
    _wait(d, "two tiles", lambda d: len(_css(d, ".tile")) == 2)

    # out of service: the tile turns amber and says why
    served.call(
        lambda: served.gw.command(
            B, {"in_service": False, "user": USER, "comment": "gauge at cal"}, "service"
        )
    )
    _wait(d, "the suspended tile", lambda d: _tile_state(d, B) == "suspended")
    assert "out of service: gauge at cal" in _text(d, f'.tile[data-path="{B}"]')

    # from the tile to the form: specs, checks and the 5M1E context pre-filled
    _click(d, f'.tile[data-path="{A}"] .entry-link')
    _wait(d, "the entry form", lambda d: _css(d, "#entry-form #entry-value"))
    assert "nav-entry" in d.execute_script(
        "return document.querySelector('header nav a.current').id"
    )
    assert _text(d, "#entry-specs") == "LSL 4 · Nominal 10 · USL 16 mm"
    assert "2 decimals" in _text(d, "#entry-checks")
    field = lambda name: d.find_element("id", f"entry-f-{name}").get_attribute("value")  # noqa: E731
    assert (field("operator"), field("machine"), field("lot")) == (USER, "MC-7", "")
    _wait(d, "the chart", lambda d: _entry_n(d) == 40)

    # implausible and too fine: refused in the page, nothing sent
    _type_value(d, "25")
    _wait(d, "the plausibility error", lambda d: "plausible maximum 20" in _text(d, "#entry-error"))
    _type_value(d, "10.123")
    _wait(d, "the decimals error", lambda d: "resolves 2" in _text(d, "#entry-error"))

    # in spec: stored, on the chart live
    d.find_element("id", "entry-serial").send_keys("M-1")
    d.find_element("id", "entry-f-lot").send_keys("L-42")
    _type_value(d, "10.25")
    _wait(d, "stored", lambda d: "Stored: 10.25 mm · Serial M-1" in _text(d, "#entry-ok"))
    assert _text(d, "#entry-error") == ""
    _wait(d, "the point on the chart", lambda d: _entry_n(d) == 41)

    # the server decides: a value the page lets through (exponent form) is refused there
    _type_value(d, "1.0001e1")
    _wait(d, "the server's refusal", lambda d: "Refused: " in _text(d, "#entry-error"))
    assert "more than 2 decimals" in _text(d, "#entry-error")

    # out of spec: the server asks; cancelled, nothing is stored
    _type_value(d, "17")
    _wait(d, "the confirm dialog", lambda d: _css(d, "#confirm-form #confirm-cancel"))
    _click(d, "#confirm-cancel")
    _wait(d, "not stored", lambda d: _text(d, "#entry-error") == "Not stored")

    # asked again and confirmed: the dialog shows the value against the limits
    _type_value(d, "17")
    _wait(d, "the confirm dialog", lambda d: _css(d, "#confirm-form #confirm-submit"))
    assert "17 mm is above the USL by 1 mm" in _text(d, "#confirm-text")
    _shot(d, "manual-entry-confirm")
    _click(d, "#confirm-submit")
    _wait(d, "stored", lambda d: "Stored: 17 mm" in _text(d, "#entry-ok"))
    _wait(d, "the second point", lambda d: _entry_n(d) == 42)
    _shot(d, "manual-entry")
    assert _page_errors(d) == []

    served.stop_gateway()  # its sinks are flushed on the way out
    manual = [ln for ln in sink.lines if ln.startswith("measurement,") and "source=manual" in ln]
    assert len(manual) == 2, sink.lines[-5:]
    assert "value=10.25" in manual[0] and 'serial="M-1"' in manual[0]
    assert f'operator="{USER}"' in manual[0] and 'lot="L-42"' in manual[0]
    assert 'machine="MC-7"' in manual[0] and "value=17" in manual[1]
