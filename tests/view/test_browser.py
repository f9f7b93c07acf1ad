"""`distill view` in a real headless browser (Debian's chromium driven by selenium through
chromium-driver): the grid loads, a filter narrows it, a sample opens, and toggling a layer
changes the picture's pixels. Skipped where no chromium can be found (`.ci/run` installs it)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if chromium is None or not os.path.exists(driver):
        return None
    return chromium, driver


@pytest.fixture(scope="module")
def server(labelled_coco7, view_student):
    """The viewer served by uvicorn on a free 127.0.0.1 port, in a thread."""
    import uvicorn

    from distill.view import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(labelled_coco7[1], checkpoint=str(view_student)),
                            host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the viewer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    paths = _browser_paths()
    if paths is None:
        pytest.skip("no chromium / chromedriver on this machine (.ci/run installs Debian's)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(condition, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # an element not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _shot(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"),
                      np.float32)


def _loaded(driver, css: str) -> bool:
    return driver.execute_script(
        "const i = document.querySelectorAll(arguments[0]);"
        "return i.length > 0 && [...i].every(x => x.complete && x.naturalWidth > 0);", css)


def test_grid_filter_sample_and_layer_toggle(server, browser, labelled_coco7, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".card")) == 7, what="7 cards")
    _wait(lambda: _loaded(browser, ".card img.thumb"), what="thumbnails")
    grid = _shot(browser.find_element(By.ID, "grid"))
    assert grid.std() > 10, "the grid looks blank"

    # a filter: people >= 1 leaves the images with COCO people
    import pyarrow.parquet as pq
    with_people = sum(1 for p in (labelled_coco7[1] / "shards").glob("*.parquet")
                      for r in pq.read_table(p, columns=["persons"]).to_pylist() if r["persons"])
    assert 0 < with_people < 7
    field = browser.find_element(By.ID, "f-people")
    field.clear()
    field.send_keys("1")
    browser.find_element(By.ID, "apply").click()
    _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".card")) == with_people
          and "matching" in browser.find_element(By.ID, "grid-status").text,
          what=f"{with_people} filtered cards")

    # open a sample; its image loads; toggling the depth layer changes the picture
    browser.find_elements(By.CSS_SELECTOR, ".card")[0].click()
    _wait(lambda: _loaded(browser, "#base"), what="the sample image")
    _wait(lambda: browser.find_element(By.ID, "layer-teacher-depth"), what="the layer list")
    stack = browser.find_element(By.ID, "stack")
    before = _shot(stack)
    assert before.std() > 10, "the sample image looks blank"
    browser.find_element(By.ID, "layer-teacher-depth").click()
    _wait(lambda: _loaded(browser, "#layer-teacher-depth-img"), what="the depth layer")

    def changed() -> float:  # the share of pixels the overlay changed (painted: a marker)
        after = _shot(stack)
        assert after.shape == before.shape
        return float((np.abs(after - before).max(axis=2) > 24).mean())

    _wait(lambda: changed() > 0.2, what="the depth overlay painted over a fifth of the image")
    after = _shot(stack)
    browser.find_element(By.ID, "layer-teacher-depth").click()  # off again: back as it was
    _wait(lambda: np.abs(_shot(stack) - before).mean() < 2.0, what="the image as it was")
    # the student's layers are there too
    assert browser.find_elements(By.ID, "layer-student-depth")
    Image.fromarray(after.astype(np.uint8)).save(tmp_path / "sample-depth.png")

    browser.get(server + "/#/run")
    _wait(lambda: "rows in" in browser.find_element(By.ID, "run-status").text, what="run page")
    assert "quarantine (0)" in browser.find_element(By.ID, "run-info").text


_SPILLED = """return [...document.querySelectorAll(arguments[0] + ' section')].flatMap((s) => {
  const box = s.getBoundingClientRect();
  return [...s.querySelectorAll('td, th')].filter((c) => c.getBoundingClientRect().right > box.right + 1)
    .map((c) => s.querySelector('h2').textContent + ': ' + c.textContent); });"""


def test_tables_stay_in_their_cards_and_the_run_page_shows_no_raw_json(server, browser):
    """On a narrow window every cell of the sample and run pages' tables is inside its card
    (the provenance's last column, "RANDOM"/"pretrained", included), and each teacher's
    provenance on the run page is key/value rows, not a JSON dump."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(700, 1000)
    try:
        browser.get(server + "/")
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".card"), what="cards")
        browser.find_elements(By.CSS_SELECTOR, ".card")[0].click()
        _wait(lambda: "provenance" in browser.find_element(By.ID, "sample-info").text,
              what="the sample's provenance")
        assert browser.execute_script(_SPILLED, "#sample-info") == []
        browser.get(server + "/#/run")
        _wait(lambda: "teacher: " in browser.find_element(By.ID, "run-info").text,
              what="the run page's teachers")
        assert browser.execute_script(_SPILLED, "#run-info") == []
        cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#run-info td")]
        assert not any(c.startswith("{") for c in cells), cells
        assert "backend" in cells and "label fingerprints" in cells
        assert "RANDOM" in cells  # the demo's tiny teachers
    finally:
        browser.set_window_size(1400, 1000)


@pytest.mark.parametrize("path", ["/static/../../cli.py", "/static/../app.py",
                                  "/api/sample/../../manifest.json/0",
                                  "/thumb/../config.toml/0.jpg", "/static/%2e%2e/app.py"])
def test_raw_paths_over_the_wire_stay_inside(server, path):
    """Paths sent as they are (no client-side normalisation), to the real server."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    res = conn.getresponse()
    body = res.read()
    assert res.status in (400, 404), path
    assert b"import" not in body and b"[project]" not in body
