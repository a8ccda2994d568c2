"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium, with the network off: the
report and review pages are opened from disk and must fetch nothing, log no error, and draw what they say.

The network is off three ways: every request goes to a proxy on a port where nothing listens, every host name
resolves to nothing, and the pages' own Content-Security-Policy allows no fetch; each request the page made is
read back from Chrome's performance log, so a test can assert that none left the disk.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTEFACTS = Path(__file__).resolve().parents[1] / "out" / "browser"  # out/ is ignored by git
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
NO_NETWORK = (
    "--proxy-server=http://127.0.0.1:9",  # the discard port: nothing listens, every request fails
    "--proxy-bypass-list=<-loopback>",  # loopback included
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


@dataclass(frozen=True)
class Loaded:
    seconds: float  # from the request to the page's script marking it ready
    console: list[dict[str, Any]]  # the browser log: console errors, failed loads, CSP refusals
    requests: list[str]  # every URL the page asked for

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.console if entry.get("level") in ("SEVERE", "ERROR")]

    @property
    def off_disk(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


class Browser:
    """One headless Chromium; `open` loads a page from disk and reports what it logged and requested."""

    def __init__(self, width: int = 1100, height: int = 800, arguments: tuple[str, ...] = ()):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = next(filter(None, map(shutil.which, CHROMIUM)), "chromium")
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            *NO_NETWORK,
            *arguments,
        ):
            options.add_argument(argument)
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        self.driver = webdriver.Chrome(options=options, service=Service(driver_path))

    def open(self, page: Path, ready: str = "document.body.dataset.ready === 'true'", timeout: float = 60) -> Loaded:
        self._drain()
        started = time.perf_counter()
        self.driver.get(page.resolve().as_uri())
        self.wait_for(ready, timeout)
        seconds = time.perf_counter() - started
        return Loaded(seconds, self.driver.get_log("browser"), self._requests())

    def wait_for(self, condition: str, timeout: float = 30) -> None:
        """Until the JavaScript expression `condition` holds (an event the page sets, never a guessed sleep)."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout, poll_frequency=0.02).until(
            lambda d: d.execute_script(f"return {condition}")
        )

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def screenshot(self, name: str, whole_page: bool = False) -> Path:
        """A PNG of the window (or of the whole page's height) in out/browser/, the tests' artefacts."""
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTEFACTS / name
        size = self.driver.get_window_size()
        if whole_page:
            self.driver.set_window_size(size["width"], self.run("return document.documentElement.scrollHeight") + 120)
        try:
            self.driver.save_screenshot(str(target))
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return target

    def download_to(self, folder: Path) -> None:
        """Files the page downloads (a Blob link's) land in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})

    def log(self) -> list[dict[str, Any]]:
        return self.driver.get_log("browser")

    def close(self) -> None:
        self.driver.quit()

    def _drain(self) -> None:
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def _requests(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls


@contextmanager
def browser_session(arguments: tuple[str, ...] = ()) -> Iterator[Browser]:
    browser = Browser(arguments=arguments)
    try:
        yield browser
    finally:
        browser.close()
