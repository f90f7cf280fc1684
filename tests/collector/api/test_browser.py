"""The web screens in headless Chromium (Debian chromium + chromium-driver, Selenium).

A real Gateway and the app are served by uvicorn on 127.0.0.1 in a thread of
their own (Selenium blocks); the test signs in through the page, watches the
overview, plants an out-of-control value with ``gw.process`` in the server's
loop, sees the tile turn red and the alarm appear live, acknowledges it with
a cause and sees it acknowledged. With ``SHOPSPC_SCREENSHOTS=1`` it writes a
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
from tests.servers import free_port, require_binary

from .conftest import sample

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

    def stop(self) -> None:
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
    gateway.process([("dev", batch)])
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
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(cond)
    except TimeoutException:
        logs = ""
        with contextlib.suppress(Exception):
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
        raise AssertionError(f"waited {WAIT_S} s for {what}; browser log:\n{logs}") from None


def _css(driver: Any, sel: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def _shot(driver: Any, name: str) -> None:
    if os.environ.get("SHOPSPC_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))


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
    tiles = _css(driver, f'.tile[data-path="{path}"]')
    return tiles[0].get_attribute("data-state") if tiles else None


def test_overview_shows_a_planted_alarm_live_and_it_is_acknowledged(served, browser) -> None:
    d = browser
    _sign_in(d, served.url)
    _wait(d, "three tiles", lambda d: len(_css(d, ".tile")) == 3)
    assert _tile_state(d, A) == "ok"
    _wait(
        d, "the live stream", lambda d: "on" in d.find_element("id", "live").get_attribute("class")
    )
    assert "No open alarms" in d.find_element("id", "newest-alarms").text
    _shot(d, "overview")

    # a planted out-of-control value: the tile turns red, the alarm is listed, no reload
    served.call(lambda: served.gw.process([("dev", [sample("a", 30.0, 100, "P100")])]))
    _wait(d, "the red tile", lambda d: _tile_state(d, A) == "bad")
    _wait(d, "the alarm on top", lambda d: _css(d, "#newest-alarms li[data-alarm]"))
    row = _css(d, "#newest-alarms li[data-alarm]")[0]
    assert "N1" in row.text and "30" in row.text
    alarm_id = row.get_attribute("data-alarm")
    _shot(d, "overview-alarm")

    # the alarm view: acknowledge with a comment and an assignable cause
    d.find_element("id", "nav-alarms").click()
    _wait(d, "the alarm row", lambda d: _css(d, f'tr[data-alarm="{alarm_id}"] button.ack'))
    _shot(d, "alarms")
    _css(d, f'tr[data-alarm="{alarm_id}"] button.ack')[0].click()
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
    _wait(
        d,
        "the acknowledged status",
        lambda d: any(
            r.get_attribute("data-status") == "acknowledged"
            for r in _css(d, f'tr[data-alarm="{alarm_id}"]')
        ),
    )
    row = _css(d, f'tr[data-alarm="{alarm_id}"]')[0]
    assert USER in row.text and "MC-TOOL-WEAR" in row.text
    assert not _css(d, f'tr[data-alarm="{alarm_id}"] button.ack')
    _wait(d, "the Pareto bar", lambda d: _css(d, "#pareto svg rect.cause"))
    _shot(d, "alarms-acknowledged")
    a = served.call(lambda: served.gw.alarms.get(alarm_id))
    assert a["status"] == "acknowledged" and a["ack_user"] == USER
    assert (a["cause_category"], a["cause_code"]) == ("machine", "MC-TOOL-WEAR")
    assert a["ack_comment"] == "insert changed"


def test_chart_view_draws_limits_zones_violations_and_appends_live(served, browser) -> None:
    d = browser
    served.call(lambda: served.gw.process([("dev", [sample("a", 30.0, 100, "P100")])]))
    _sign_in(d, served.url)
    _wait(d, "the overview", lambda d: len(_css(d, ".tile")) == 3)
    _css(d, f'.tile[data-path="{A}"]')[0].click()
    _wait(d, "the control chart", lambda d: _css(d, "#control-chart svg.control-chart circle.pt"))
    _wait(d, "the capability", lambda d: "Cpk" in d.find_element("id", "capability").text)
    svg = _css(d, "#control-chart svg.control-chart")[0]
    assert len(_css(d, "#control-chart svg.control-chart path.ctl")) == 2  # UCL, LCL
    assert len(_css(d, "#control-chart svg.control-chart path.zone")) == 4  # ±1σ, ±2σ
    assert len(_css(d, "#control-chart svg.control-chart line.spec")) == 2  # LSL, USL
    assert [e.text for e in _css(d, "#control-chart svg.control-chart text.code")] == ["N1"]
    assert _css(d, "#control-chart svg.dispersion-chart circle.pt")  # the MR chart
    before = len(_css(d, "#control-chart svg.control-chart circle.pt"))
    assert before == 61 and "USL" in svg.text
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
    _css(d, "#control-chart svg.control-chart circle.pt.viol")[0].click()
    _wait(d, "the point's details", lambda d: "N1" in d.find_element("id", "point-context").text)
    assert "P100" in d.find_element("id", "point-context").text

    # the engineer view: limits in force and their history
    d.get(f"{served.url}/#/engineer/{A}")
    _wait(d, "the limits history", lambda d: _css(d, "#limits-history tbody tr"))
    assert "Recompute limits" in d.find_element("id", "limits").text
    _shot(d, "engineer")


def test_language_switch_is_remembered(served, browser) -> None:
    d = browser
    _sign_in(d, served.url)
    _wait(d, "the overview", lambda d: len(_css(d, ".tile")) == 3)
    assert d.find_element("id", "nav-overview").text == "Line overview"
    d.find_element("id", "lang").click()
    _wait(d, "Chinese labels", lambda d: d.find_element("id", "nav-overview").text == "产线总览")
    _wait(d, "Chinese tiles", lambda d: "受控" in d.find_element("id", "tiles").text)
    _shot(d, "overview-zh")
    d.refresh()
    _wait(d, "Chinese after a reload", lambda d: d.find_element("id", "nav-alarms").text == "报警")
    assert d.execute_script("return localStorage.getItem('shopspc.lang')") == "zh"
