"""A real browser for the live e2e: Debian's headless Chromium driven through its matching chromedriver.

Installed with apt-get when missing, like PostgreSQL. The browser logs in the way a person does (the
UI redirects to SimpleAuthManager's login, which sets the JWT cookie), opens the dashboard's tabs in
the Airflow UI and reads what is drawn inside their iframes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.live import apt_install

PACKAGES = ("chromium", "chromium-driver")


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages if either is missing."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    apt_install(*PACKAGES, what="Chromium")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise RuntimeError(f"apt-get installed {PACKAGES} but chromium/chromedriver are not on PATH")
    return chromium, driver


@contextmanager
def chromium_session(width: int = 1500, height: int = 1100) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = ensure_chromium()
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(what: str, check: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the page is still loading: elements come and go
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


def open_plugin_tab(driver: Any, url: str, ready_text: str, timeout: float = 90.0) -> dict[str, Any]:
    """Open a UI page holding a plugin iframe; wait for ``ready_text`` inside it; describe what it shows.

    Returns the iframe's visible text and, per chart image, whether it loaded and its natural width.
    """
    from selenium.webdriver.common.by import By

    driver.get(url)

    def frame_ready() -> bool:
        driver.switch_to.default_content()
        frames = driver.find_elements(By.CSS_SELECTOR, "iframe")
        for frame in frames:
            driver.switch_to.frame(frame)
            if ready_text in driver.find_element(By.TAG_NAME, "body").text:
                return True
            driver.switch_to.default_content()
        return False

    wait_until(f"{ready_text!r} in a plugin iframe at {url}", frame_ready, timeout=timeout)
    wait_until(
        "the chart images to finish loading",
        lambda: driver.execute_script("return Array.from(document.images).every(i => i.complete)"),
        timeout=30,
    )
    images = driver.execute_script(
        "return Array.from(document.querySelectorAll('img.chart')).map("
        "i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth}))"
    )
    text = driver.find_element(By.TAG_NAME, "body").text
    driver.switch_to.default_content()
    return {"text": text, "images": images}


def screenshot(driver: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
