"""Drive a built feature browser in headless Chromium (Debian's chromium and chromium-driver; Selenium is told both
paths, so nothing is downloaded) and check what a user does: the page loads without console errors, switching the
layer changes the listed latents, a latent's images load, the data view draws its points (hover shows an image),
the information view shows an image's maps. A screenshot of each view is written to ``shots``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: set by .ci/run: there the browser test must run, not skip
REQUIRED = os.environ.get("DIFFLENS_REQUIRE_BROWSER") == "1"


def chromium_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        message = (f"headless Chromium is not installed ({missing}); apt-get install chromium chromium-driver "
                   "(make test does so when it runs as root)")
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


def open_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shown_latents(driver) -> list[tuple[str, str]]:
    rows = driver.find_elements("css selector", "#latent-table tbody tr")
    return [tuple(td.text for td in r.find_elements("css selector", "td")[:2]) for r in rows]


def check_browser(index: Path, shots: Path, expect_info: bool = True) -> dict:
    """Run the checks on ``index`` (results/browser/index.html); returns what it saw."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select, WebDriverWait

    chromium_or_skip()
    shots.mkdir(parents=True, exist_ok=True)
    driver = open_chromium()
    seen = {}
    try:
        # a table re-rendered between finding a row and reading it: the wait polls again
        wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(Path(index).resolve().as_uri())
        wait.until(lambda d: shown_latents(d))
        wait.until(lambda d: d.find_elements("css selector", "#latent-images img"))
        assert console_errors(driver) == []
        before = shown_latents(driver)
        layer = Select(driver.find_element("id", "layer-select"))
        layers = [o.get_attribute("value") for o in layer.options]
        assert len(layers) >= 2, f"the browser offers one layer only: {layers}"
        first = layer.first_selected_option.get_attribute("value")
        layer.select_by_value(next(l for l in layers if l != first))
        wait.until(lambda d: shown_latents(d) and shown_latents(d) != before)
        seen["layers"], seen["latents_before"], seen["latents_after"] = layers, before, shown_latents(driver)
        rows = driver.find_elements("css selector", "#latent-table tbody tr")
        rows[min(1, len(rows) - 1)].click()
        wait.until(lambda d: d.find_elements("css selector", "#latent-images img"))
        images = driver.find_elements("css selector", "#latent-images img, #quantile-images img")
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                                  im) for im in images))
        seen["latent_images"] = len(images)
        seen["heat_maps"] = len(driver.find_elements("css selector", "#latent-images canvas"))
        seen["histogram_bars"] = len(driver.find_elements("css selector", "#latent-page svg.hist rect"))
        # the SAE's controls beside it: its sigma_label / purity line, and the untrained SAE's AUROC for the latent
        seen["sae_meta"] = driver.find_element("id", "sae-meta").text
        seen["latent_text"] = driver.find_element("css selector", "#latent-page p").text
        assert "controls, sigma_label / purity: untrained " in seen["sae_meta"], seen["sae_meta"]
        assert "random-set null of the mean purity: 95th pct " in seen["sae_meta"], seen["sae_meta"]
        assert "random directions " in seen["sae_meta"] and "the untrained SAE's best latent: " in seen["latent_text"]
        driver.save_screenshot(str(shots / "latents.png"))

        driver.find_element("id", "tab-data").click()
        wait.until(lambda d: len(d.find_elements("css selector", "#data-points circle")) > 0)
        points = driver.find_elements("css selector", "#data-points circle")
        seen["points"] = len(points)
        ActionChains(driver).move_to_element(points[len(points) // 2]).perform()
        wait.until(lambda d: "hidden" not in d.find_element("id", "tooltip").get_attribute("class"))
        tip = driver.find_element("css selector", "#tooltip img")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth > 0", tip))
        driver.save_screenshot(str(shots / "data_view.png"))

        if expect_info:
            driver.find_element("id", "tab-info").click()
            wait.until(lambda d: d.find_elements("css selector", "#info-page .word-row, #aro-table"))
            seen["word_rows"] = len(driver.find_elements("css selector", "#info-page .word-row"))
            seen["aro_rows"] = len(driver.find_elements("css selector", "#aro-table tr")) - 1
            driver.save_screenshot(str(shots / "information.png"))
        assert console_errors(driver) == []
    finally:
        driver.quit()
    return seen
