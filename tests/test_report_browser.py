"""The report in headless Chromium (Debian's chromium + chromedriver): pictures load, no console errors, the
head explorer answers clicks, hostile text stays text, and the page renders (screenshot)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_report import EVIL_ID, EVIL_QUESTION, build_study

from corehead.heads import HeadSet
from corehead.models.qwen_vl import QwenVLAdapter

pytestmark = pytest.mark.browser

DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "report.png"  # written when COREHEAD_DOCS_SCREENSHOT=1


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_builtin: QwenVLAdapter) -> Path:
    return build_study(tmp_path_factory.mktemp("browser-study"), tiny_builtin)


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    yield chrome
    chrome.quit()


def canvases(driver: webdriver.Chrome) -> list[str]:
    """The explorer's drawn canvases of the first run, as data URLs ('' while a picture is still loading)."""
    script = "return [...document.querySelectorAll('#explorer-0 canvas')].map(c => c.width ? c.toDataURL() : '')"
    return driver.execute_script(script)


def test_report_in_a_browser(study: Path, driver: webdriver.Chrome, tmp_path: Path) -> None:
    driver.get(study.as_uri())
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (the property raises when no alert is pending)
    widths = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 8 and all(w > 0 for w in widths)
    body = driver.find_element(By.TAG_NAME, "body").text
    assert EVIL_QUESTION in body and EVIL_ID in body  # shown as text, never run
    headset = HeadSet.load(study.parent / "run" / "heads.json")
    title = driver.find_element(By.CSS_SELECTOR, "#explorer-0 .ex-title")
    layer, head = headset.selected[0]
    assert title.text == f"layer {layer} head {head}"
    WebDriverWait(driver, 10).until(lambda d: all(canvases(d)))
    before = canvases(driver)
    assert len(before) == 1 + 2  # a scene and a two-page document
    layer, head = headset.ranking[-1]
    driver.find_element(By.CSS_SELECTOR, f'#heat-0 td[data-l="{layer}"][data-h="{head}"]').click()
    assert title.text == f"layer {layer} head {head}"
    stats = driver.find_element(By.CSS_SELECTOR, "#explorer-0 .ex-stats").text
    assert f"rank {len(headset.ranking)} of {len(headset.ranking)}" in stats
    WebDriverWait(driver, 10).until(lambda d: all(canvases(d)))
    after = canvases(driver)
    assert len(after) == 3 and after != before  # the other head's maps are drawn
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert image.width >= 1000 and colours is not None and len(colours) > 50
    if os.environ.get("COREHEAD_DOCS_SCREENSHOT") == "1":
        DOCS_SHOT.write_bytes(shot.read_bytes())
