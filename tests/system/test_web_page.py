"""The web page and the docs in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven
by selenium against the real server, with nothing fetched from beyond the server itself."""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import REPO
from tests.helpers import image_files, running_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not installed (make test installs them)"
)
ARTIFACTS = REPO / "test-artifacts"
SAMPLES = [REPO / "tests" / "data" / "cifar10-sample" / name for name in ("cat/0393.jpg", "ship/0201.jpg")]


@pytest.fixture(scope="module")
def server(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(bundled_model, tmp_path_factory.mktemp("web") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def loaded_from(driver, origin: str) -> list[str]:
    """Every script, stylesheet and other resource the page loaded that did not come from `origin`."""
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat([...document.scripts].map(s => s.src).filter(Boolean))"
        ".concat([...document.querySelectorAll('link[href]')].map(l => l.href))"
    )
    return [url for url in urls if not url.startswith(origin + "/")]


def test_the_page_shows_what_predict_says_and_explains_errors(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    expected = httpx.post(
        f"{server}/predict?top_k=5", files=image_files(*((p.name, p.read_bytes()) for p in SAMPLES))
    ).json()
    browser.get(server + "/")
    wait_for(lambda: "cifar10-resnet9" in browser.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys("\n".join(str(path) for path in SAMPLES))
    cards = wait_for(lambda: len(found := browser.find_elements(By.CSS_SELECTOR, "li.prediction")) == 2 and found)
    shown = [[label.text for label in card.find_elements(By.CSS_SELECTOR, ".bar .label")] for card in cards]
    assert shown == [[k["label"] for k in p["top_k"]] for p in expected["predictions"]]
    assert "answered in" in browser.find_element(By.ID, "status").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-page.png"))

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    error = wait_for(lambda: (shown := browser.find_element(By.ID, "error")).is_displayed() and shown.text)
    assert error.startswith("Not an image this service reads") and "notes.txt" in error
    browser.save_screenshot(str(ARTIFACTS / "web-page-error.png"))

    # A bad file among good ones fails only itself: the page retries that request file by file.
    browser.find_element(By.ID, "files").send_keys(f"{SAMPLES[1]}\n{notes}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "li.refused"))
    assert browser.find_element(By.CSS_SELECTOR, "li.prediction .bar .label").text == "ship"
    assert "notes.txt" in browser.find_element(By.CSS_SELECTOR, "li.refused .reason").text
    assert loaded_from(browser, server) == []


def test_the_docs_render_offline_from_the_server_itself(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server + "/docs")
    blocks = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert "/predict" in [block.text.replace("\u200b", "") for block in blocks]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "docs.png"))
    assert loaded_from(browser, server) == []


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(bundled_model: Path, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with running_server(bundled_model, tmp_path / "server.log", api_keys="secret-key", api_key_header="X-Token") as url:
        browser.get(url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.find_element(By.ID, "files").send_keys(str(SAMPLES[1]))
        wait_for(lambda: browser.find_element(By.ID, "key").is_displayed())
        assert browser.find_element(By.ID, "key-header").text == "X-Token"  # from the server's WWW-Authenticate
        assert browser.find_element(By.ID, "error").text.startswith("API key needed")
        browser.find_element(By.ID, "key-value").send_keys("secret-key")
        browser.find_element(By.CSS_SELECTOR, "#key button").click()
        card = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "li.prediction"))
        assert card[0].find_element(By.CSS_SELECTOR, ".bar .label").text == "ship"
