"""The browser tier: the dashboard in a real headless chromium, driven by selenium.

It uses Debian's ``chromium`` and its ``chromedriver`` (``scripts/browser-setup.sh`` installs them as
root), or the browser and driver that ``VR_CHROMIUM`` and ``VR_CHROMEDRIVER`` name. Without them the
tier skips with one reason; as root (CI) their absence is a failure, since ``make test-browser``
installs them first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMEDRIVER = Path(os.environ.get("VR_CHROMEDRIVER") or "/usr/bin/chromedriver")
CHROMIUM = Path(os.environ.get("VR_CHROMIUM") or "/usr/bin/chromium")
#: A laptop screen's width; the height grows to the page's for a whole-page screenshot.
WINDOW = (1440, 900)


def _unavailable(reason: str) -> None:
    if os.geteuid() == 0:
        pytest.fail(f"{reason}; as root the browser tier must run (make test-browser sets it up)")
    pytest.skip(f"{reason}, and not root to install it (run make test-browser as root)")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless chromium through the system chromedriver (never a downloaded one)."""
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        _unavailable(f"no {CHROMIUM} with {CHROMEDRIVER} (Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root with its sandbox
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
