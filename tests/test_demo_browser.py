"""The demo in a real headless Chromium, used as a person uses it: upload, type, click, wait, read the page.

Selenium drives Debian's `chromium` through the installed `chromedriver` (the service path is given, so Selenium
Manager never runs and nothing is downloaded). Each tab is saved as a PNG screenshot in the test's folder; with
`SMARTCLIP_SAVE_SCREENSHOTS=1` the mask tab is also copied to `docs/mask_tab.png` for the README.
"""

import base64
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import GRADIO_PANDAS_WARNINGS, LOOPBACK, running_demo, save_tiny_smartclip, write_gallery_folder

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver; "
        ".ci/run installs them)",
    ),
    *GRADIO_PANDAS_WARNINGS,
]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
README_SCREENSHOT = Path(__file__).parents[1] / "docs" / "mask_tab.png"
LABELS = ["red circle", "blue square", "green cross"]


@pytest.fixture(scope="module")
def page(tmp_path_factory, clip_dir, processor):
    root = tmp_path_factory.mktemp("demo_browser")
    save_tiny_smartclip(clip_dir, processor, root / "smartclip-tiny")
    write_gallery_folder(root / "gallery")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={root / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    # Relative paths, so that the page header (and the README screenshot) names the model, not a temporary folder.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        with running_demo(Path("smartclip-tiny"), Path("gallery")) as (url, _, startup):
            driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
            try:
                opened = time.perf_counter()
                driver.get(url)
                yield SimpleNamespace(
                    driver=driver, wait=WebDriverWait(driver, 60), image=str(root / "gallery" / "scene_0.png"),
                    captions=(root / "gallery" / "captions.txt").read_text().splitlines(), opened=opened,
                    startup=startup,
                )
            finally:
                driver.quit()


def find(page, selector):
    return page.driver.find_elements(By.CSS_SELECTOR, selector)


def wait_for(page, selector, count=1):
    """Waits until `selector` matches at least `count` elements; returns them."""

    def enough(_):
        found = find(page, selector)
        return found if len(found) >= count else None

    return page.wait.until(enough)


def open_tab(page, name):
    tab = page.wait.until(lambda _: [b for b in find(page, "button[role='tab']") if b.text.strip() == name])[0]
    tab.click()


def type_into(page, selector, text):
    box = wait_for(page, selector)[0]
    box.clear()
    box.send_keys(text)


def upload(page, component, path):
    wait_for(page, f"#{component} input[type='file']")[0].send_keys(path)
    wait_for(page, f"#{component} img")


def natural_width(page, image) -> int:
    """0 until the browser has loaded and decoded the image."""
    return page.driver.execute_script("return arguments[0].naturalWidth", image)


def screenshot(page, path: Path) -> Path:
    """The whole page, below the window's edge too, as a PNG (through the DevTools protocol)."""
    size = page.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = page.driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_zero_shot_labels_and_scores_in_the_page(page, tmp_path):
    upload(page, "zs-image", page.image)
    type_into(page, "#zs-labels textarea", ", ".join(LABELS))
    find(page, "#zs-run")[0].click()
    meters = wait_for(page, "#zs-result meter", count=len(LABELS))
    first_result = time.perf_counter() - page.opened
    print(f"\n[demo browser] time to first result: {page.startup:.2f} s to serve + {first_result:.2f} s from opening "
          "the page to the scores (upload, typing, click, inference, render)")

    shown = [meter.get_attribute("aria-label") for meter in meters]
    scores = [float(meter.get_attribute("value")) for meter in meters]
    assert sorted(shown) == sorted(LABELS)
    assert [e.text for e in find(page, "#zs-result dt")] == shown
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)
    assert scores == sorted(scores, reverse=True)
    assert "modular" in find(page, "#zs-note")[0].text
    screenshot(page, tmp_path / "zero_shot_tab.png")


def test_caption_retrieval_in_the_page(page, tmp_path):
    open_tab(page, "Retrieval")
    type_into(page, "#rt-caption textarea", "a large red circle at the top left.")
    find(page, "#rt-run")[0].click()
    page.wait.until(lambda _: "Ranked by" in find(page, "#rt-note")[0].text)
    images = wait_for(page, "#rt-gallery img", count=6)
    page.wait.until(lambda _: all(natural_width(page, image) > 0 for image in images))
    table = find(page, "#rt-table")[0].text
    assert "modular cos" in table and "plain cos" in table and "scene_" in table
    assert "1 unreadable file(s) skipped: broken.png" in find(page, "#rt-note")[0].text

    upload(page, "rt-image", page.image)
    find(page, "#rt-run-image")[0].click()
    page.wait.until(lambda _: "Ranked by" in find(page, "#rt-captions-note")[0].text)
    shown = find(page, "#rt-captions")[0].text
    assert "plain cos" in shown and sum(caption in shown for caption in set(page.captions)) >= 6
    screenshot(page, tmp_path / "retrieval_tab.png")


def test_mask_heatmap_in_the_page(page, tmp_path):
    open_tab(page, "Mask inspection")
    upload(page, "mk-image", page.image)
    find(page, "#mk-run")[0].click()
    wait_for(page, "#mk-heatmap img")
    page.wait.until(lambda _: natural_width(page, find(page, "#mk-heatmap img")[0]) > 400)
    page.wait.until(lambda _: "modular cos" in find(page, "#mk-scores")[0].text)
    assert "plain cos" in find(page, "#mk-scores")[0].text and "dims kept" in find(page, "#mk-scores")[0].text
    assert "caption" in find(page, "#mk-overlap")[0].text
    assert "3 caption(s)" in find(page, "#mk-note")[0].text
    path = screenshot(page, tmp_path / "mask_tab.png")
    if os.environ.get("SMARTCLIP_SAVE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOT)


def test_the_page_requested_nothing_from_outside(page):
    requested = set()
    for entry in page.driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            requested.add(message["params"].get("request", message["params"]).get("url"))
    web = [url for url in requested if urlparse(url).scheme in ("http", "https", "ws", "wss")]
    assert web, "the performance log recorded no request at all"
    assert [url for url in web if urlparse(url).hostname not in LOOPBACK] == []
