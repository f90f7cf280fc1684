"""Screenshots of the web screens for the README, on a small plausible plant.

``.venv/bin/python -m tests.collector.api.screenshots`` serves a real Gateway
(eight characteristics on two lines, one in Phase I, one without data, a few
acknowledged alarms with causes and two open ones, one out of service, one
measured with a hand gauge) on 127.0.0.1, drives headless Chromium through
every screen and writes ``docs/screenshots/plant-*.png``.
The browser test takes its own screenshots with ``SHOPSPC_SCREENSHOTS=1``.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from collector.pipeline import Gateway
from tests.collector.api.conftest import IdleSource, RecordingSink, char, config, sample
from tests.collector.api.test_browser import (
    PASSWORD,
    SHOTS,
    USER,
    Served,
    _click,
    _css,
    _sign_in,
    _text,
    _wait,
)

_PLANT = (
    # id, line, station, centre, σ, lsl, usl, unit, limits given
    ("bore_dia", "l1", "op10", 25.0, 0.004, 24.985, 25.015, "mm", True),
    ("bore_depth", "l1", "op10", 40.0, 0.02, 39.94, 40.06, "mm", True),
    ("flange_thk", "l1", "op20", 12.0, 0.01, 11.97, 12.03, "mm", True),
    ("torque", "l1", "op30", 18.0, 0.15, 17.4, 18.6, "N·m", True),
    ("leak_rate", "l2", "test1", 2.0, 0.05, None, 2.2, "cc/min", True),
    ("weld_width", "l2", "weld", 6.0, 0.04, 5.85, 6.15, "mm", True),
    ("press_force", "l2", "press", 50.0, 0.5, 48.0, 52.0, "kN", False),
    ("paint_thk", "l2", "paint", 80.0, 1.5, 74.0, 86.0, "µm", True),
)
_WOBBLE = (0.3, -0.6, 0.9, 0.4, -0.8, -0.2, 1.2, -1.1, 0.1, -0.4, 0.7, -0.9)
_CAUSES = ("machine:MC-TOOL-WEAR", "machine:MC-TOOL-WEAR", "material:MT-LOT", "operator:OP-ERROR")


def _gateway(data_dir: Path) -> Gateway:
    chars = []
    for cid, line, station, c, s, lsl, usl, unit, given in _PLANT:
        over: dict[str, Any] = {"line": line, "station": station, "unit": unit, "lsl": lsl}
        over["usl"] = usl
        over["limits"] = {"center": c, "sigma": s} if given else {"phase1_subgroups": 25}
        if cid == "flange_thk":  # a micrometer without an interface: typed in at the line
            over["nominal"] = c
            over["manual"] = {"plausible_min": 11.5, "plausible_max": 12.5, "decimals": 3}
            over["context"] = {
                "machine": {"static": "MC-20"},
                "method": {"static": "P-2041 rev C"},
                "gauge": {"id": {"static": "MIC-017"}},
            }
        chars.append(char(cid, **over))
    return Gateway(
        config(*chars), {}, data_dir=data_dir, sources=[IdleSource()], sinks=[RecordingSink()]
    )


def _history(gw: Gateway) -> None:
    """In-control history, then spikes on three characteristics (x and MR alarms)."""
    batch = []
    for k in range(120):
        for j, (cid, *_, c, s, _lsl, _usl, _unit, _given) in enumerate(_PLANT):
            if cid == "paint_thk":
                continue  # no data yet
            if cid == "press_force" and k >= 12:
                continue  # still collecting Phase I
            wob = _WOBBLE[(k + 3 * j) % len(_WOBBLE)] + 0.3 * math.sin(k / 7 + j)
            batch.append(sample(cid, c + s * wob, k, f"{cid[:2].upper()}{k:05d}"))
    gw.process([("dev", batch)])
    spikes = [("bore_dia", 25.0 + 0.016), ("torque", 18.0 - 0.6), ("weld_width", 6.0 + 0.15)]
    gw.process([("dev", [sample(cid, v, 200 + i, f"SP{i}") for i, (cid, v) in enumerate(spikes)])])


def main() -> int:
    """Take the screenshots; 0 on success."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.servers import require_binary

    with tempfile.TemporaryDirectory(prefix="shopspc-shots-") as tmp:
        gw = _gateway(Path(tmp) / "gw")
        served = Served(gw, Path(tmp))  # its listeners keep the recent points
        _history(gw)
        # acknowledge most alarms with causes: the Pareto has something to show
        for a, cause in zip(
            sorted(gw.alarms.active(), key=lambda a: a["alarm_id"]), _CAUSES, strict=False
        ):
            payload = {"alarm_id": a["alarm_id"], "user": "wang", "comment": "", "cause": cause}
            gw.command(a["path"], payload, "ack", source="api")
        gw.command(
            "s1/a1/l2/paint/paint_thk",
            {"in_service": False, "user": "wang", "comment": "gauge at calibration"},
            "service",
        )
        served.start()
        served.run_gateway()  # manual entry waits for the gateway's processor
        opts = webdriver.ChromeOptions()
        opts.binary_location = require_binary("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=en-US"):
            opts.add_argument(arg)
        opts.add_argument("--window-size=1920,1080")
        driver = webdriver.Chrome(
            options=opts, service=Service(executable_path=require_binary("chromedriver"))
        )
        try:
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = lambda name: driver.save_screenshot(str(SHOTS / f"plant-{name}.png"))  # noqa: E731
            _sign_in(driver, served.url)
            _wait(driver, "tiles", lambda d: len(_css(d, ".tile")) == len(_PLANT))
            # a fresh alarm arrives live on top
            served.call(lambda: gw.process([("dev", [sample("leak_rate", 2.0 + 0.2, 300, "LK1")])]))
            _wait(driver, "the live alarm", lambda d: "leak_rate" in _text(d, "#newest-alarms"))
            shot("overview")
            _click(driver, "#nav-alarms")
            _wait(driver, "the Pareto", lambda d: _css(d, "#pareto svg rect.cause"))
            shot("alarms")
            driver.get(f"{served.url}/#/chart/s1/a1/l1/op10/bore_dia")
            _wait(driver, "the capability", lambda d: "Cpk" in (_text(d, "#capability") or ""))
            _click(driver, "#control-chart svg.control-chart circle.pt.viol")
            _wait(driver, "the point", lambda d: "N1" in _text(d, "#point-context"))
            driver.set_window_size(1920, 1300)
            shot("chart")
            driver.set_window_size(1920, 1080)
            driver.get(f"{served.url}/#/engineer/s1/a1/l1/op30/torque")
            _wait(driver, "the limits", lambda d: _css(d, "#limits-history tbody tr"))
            driver.set_window_size(1920, 1900)
            shot("engineer")
            driver.set_window_size(1920, 1080)
            driver.get(f"{served.url}/#/entry/s1/a1/l1/op20/flange_thk")
            _wait(driver, "the entry form", lambda d: _css(d, "#entry-form #entry-value"))
            driver.find_element("id", "entry-serial").send_keys("FL00121")
            driver.find_element("id", "entry-f-lot").send_keys("AL-2611-07")
            driver.find_element("id", "entry-value").send_keys("12.004")
            _click(driver, "#entry-submit")
            _wait(driver, "stored", lambda d: "12.004" in (_text(d, "#entry-ok") or ""))
            driver.find_element("id", "entry-serial").send_keys("FL00122")
            driver.find_element("id", "entry-value").send_keys("11.99")
            shot("entry")
            driver.get(f"{served.url}/#/overview")
            _click(driver, "#lang")
            _wait(driver, "Chinese", lambda d: _text(d, "#nav-overview") == "产线总览")
            _wait(driver, "tiles", lambda d: len(_css(d, ".tile")) == len(_PLANT))
            shot("overview-zh")
        finally:
            driver.quit()
            served.stop()
            gw.close()
    print(f"screenshots in {SHOTS}")
    return 0


if __name__ == "__main__":
    assert USER and PASSWORD  # the test's user signs in
    sys.exit(main())
