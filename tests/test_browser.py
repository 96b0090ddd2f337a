"""The demo page in a real browser: headless Chromium (Debian's package) driven by chromedriver through Selenium
loads the page, sees the cursor move and hits counted, both rasters (incoming spikes, spikes simulated from the
cursor) draw and update with their correlation shown, switches the decoder without a restart, and saves a
screenshot."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")


def test_demo_page_shows_the_cursor_moving_and_hits(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    from alignnet.service.http.launcher import free_port

    page_port, service_port = free_port(), free_port()
    demo = subprocess.Popen([str(Path(sys.executable).parent / "alignnet"), "demo", "--port", str(page_port),
                             "--service-port", str(service_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{page_port}"
    driver = None
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/state", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert demo.poll() is None, demo.communicate()[0]
            time.sleep(0.1)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                     "--window-size=1220,900"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
        driver.get(url)
        body = driver.find_element("tag name", "body")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            moved, hits = int(body.get_attribute("data-moved") or 0), int(body.get_attribute("data-hits") or 0)
            if moved > 20 and hits >= 2:
                break
            time.sleep(0.25)
        assert moved > 20, f"the cursor did not move (moved={moved})"
        assert hits >= 2, f"no hits counted in 60 s (hits={hits})"
        assert driver.find_element("id", "hits").text == str(hits) or int(driver.find_element("id", "hits").text) >= 2
        assert "ms" in driver.find_element("id", "p50").text  # latency shown

        def wait_for(cond, what, seconds=30):
            end = time.monotonic() + seconds
            while time.monotonic() < end and not cond():
                time.sleep(0.25)
            assert cond(), what

        drawn = lambda which: int(body.get_attribute(f"data-raster-{which}") or 0)  # noqa: E731
        wait_for(lambda: drawn("in") > 100 and drawn("sim") > 50, f"rasters did not update ({drawn('in')}, "
                 f"{drawn('sim')} bins)")
        first = drawn("sim")
        wait_for(lambda: drawn("sim") > first + 20, "the simulated raster stopped updating")
        wait_for(lambda: driver.find_element("id", "corr").text.replace("-", "").replace(".", "").isdigit(),
                 f"no correlation shown ({driver.find_element('id', 'corr').text!r})")
        assert "none" in driver.find_element("id", "smoothing").text  # the decoder's smoothing is named
        shot = Path(os.environ.get("ALIGNNET_SCREENSHOT", tmp_path / "demo.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))

        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "decoder")).select_by_value("wiener")  # no restart
        wait_for(lambda: body.get_attribute("data-decoder") == "wiener",
                 f"decoder not switched: {driver.find_element('id', 'decoder-status').text!r}")
        assert "wiener" in httpx.get(f"http://127.0.0.1:{service_port}/model", timeout=5).json()["model"]
        moved_before = int(body.get_attribute("data-moved"))
        wait_for(lambda: int(body.get_attribute("data-moved")) > moved_before + 20, "the cursor stopped")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    finally:
        if driver is not None:
            driver.quit()
        demo.terminate()
        try:
            demo.wait(15)
        except subprocess.TimeoutExpired:
            demo.kill()
