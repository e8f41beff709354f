"""What an operator's screen costs the coordinator: the console open in Chromium, /metrics
scraped every second (bench/dispatch.py --console).

`ConsoleLoad(url, admin_key)` is a context manager: it starts Debian's Chromium headless
through Playwright (never `playwright install`), signs in to the console with the operator key
and opens the Jobs tab, whose view polls /v1 every two seconds (coordinator/console/app.js),
and starts a thread that GETs /metrics every second with OpenMetrics negotiation, as
Prometheus would. `scrapes` and `failed` count the scrapes; a scrape that fails, or a page
error, makes `problem` say so, and the benchmark fails rather than report a flattering ratio.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
SCRAPE_EVERY_S = 1.0


class ConsoleLoad:
    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url
        self.key = admin_key
        self.scrapes = 0
        self.failed = 0
        self.page_errors: list[str] = []
        self.polls = 0  # /v1 requests the page made
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pw: Any = None
        self._browser: Any = None
        self._page: Any = None

    def __enter__(self) -> ConsoleLoad:
        if not Path(CHROMIUM).exists():
            raise RuntimeError("chromium is not installed: apt-get install -y chromium")
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = self._browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", self._count)
        page.goto(self.url + "/")
        page.fill("#key", self.key)
        page.click("#sign-in-form button")
        page.wait_for_selector("#who-name")
        page.click(".tab[data-view=jobs]")
        page.wait_for_selector("#jobs-table")
        self._page = page
        self._thread = threading.Thread(target=self._scrape, name="scrape", daemon=True)
        self._thread.start()
        return self

    def _count(self, request: Any) -> None:
        if "/v1/" in request.url:
            self.polls += 1

    def _scrape(self) -> None:
        headers = {
            "authorization": f"Bearer {self.key}",
            "accept": "application/openmetrics-text; version=1.0.0",
        }
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(SCRAPE_EVERY_S):
                try:
                    r = http.get(f"{self.url}/metrics", headers=headers)
                    ok = r.status_code == 200 and b"fogwheel_" in r.content
                except httpx.HTTPError:
                    ok = False
                self.scrapes += ok
                self.failed += not ok

    def pump(self, seconds: float) -> None:
        """Let the page's timers run (Playwright's sync API delivers its events here)."""
        self._page.wait_for_timeout(int(seconds * 1000))

    @property
    def problem(self) -> str | None:
        if self.page_errors:
            return f"the console's page failed: {self.page_errors[0]}"
        if self.failed:
            return f"{self.failed} of {self.failed + self.scrapes} /metrics scrapes failed"
        return None

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()


def wait_seconds(load: ConsoleLoad | None, seconds: float) -> None:
    """Sleep, pumping the page's events when the console is open."""
    if load is None:
        time.sleep(seconds)
    else:
        load.pump(seconds)
