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

from tests.e2e.services import apt_install

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
    # how far the page runs past the tab's width (> 0: the reader must scroll sideways)
    overflow = driver.execute_script(
        "const d = document.documentElement; return {scroll: d.scrollWidth, client: d.clientWidth}"
    )
    driver.switch_to.default_content()
    return {"text": text, "images": images, "overflow": overflow["scroll"] - overflow["client"], **overflow}


def read_trigger_form(driver: Any, dag_url: str, sections: list[str], timeout: float = 90.0) -> str:
    """Open a DAG's page, click Trigger, open each of ``sections`` of the params form in turn; the
    text each section shows, one after the other."""
    from selenium.webdriver.common.by import By

    driver.get(dag_url)

    def button(within: Any, text: str) -> Any:  # by its text, shown or scrolled out of the dialog's view
        if "'" in text:
            raise ValueError(f"cannot look up a button named {text!r} (an apostrophe ends the XPath string)")
        found = within.find_elements(By.XPATH, f".//button[normalize-space(.)='{text}']")
        return found[0] if found else None

    wait_until(f"the Trigger button at {dag_url}", lambda: button(driver, "Trigger"), timeout=timeout).click()
    dialog = wait_until(
        "the trigger form",
        lambda: next(
            (d for d in driver.find_elements(By.CSS_SELECTOR, "[role=dialog]") if "Trigger Dag" in d.text),
            None,
        ),
        timeout=timeout,
    )

    def opened(name: str) -> Any:
        """Click the section open unless it is; its header once it reads open (the form may re-render,
        and close its sections, while the DAG's details load, so a click can be undone: click again)."""
        header = button(dialog, name)
        if header is None or header.get_attribute("aria-expanded") == "true":
            return header
        # A real click (the accordion ignores a scripted one); opening a section moves the ones below,
        # so a click that lands on another element raises, and the next poll tries again.
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
        header.click()
        return False

    texts = []
    for name in sections:  # the form shows one section at a time: read each while it is open
        header = wait_until(f"section {name!r} of the trigger form to open", lambda name=name: opened(name))
        content_id = header.get_attribute("aria-controls")
        texts.append(
            wait_until(
                f"section {name!r} to show its fields",
                lambda content_id=content_id: dialog.find_element(By.ID, content_id).text,
            )
        )
    return "\n".join(texts)


def screenshot(driver: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
