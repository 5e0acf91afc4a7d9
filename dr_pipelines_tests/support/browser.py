"""A real browser for the tests: Playwright driving the system's Chromium (Debian package `chromium`).

Playwright cannot download its own browsers here, so it is always given the executable:
``DRP_CHROMIUM`` or /usr/bin/chromium. Where neither exists (a user's clone without Chromium)
the browser tests skip, naming the path and the package to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Headless on a machine without a screen or a network beyond loopback: no sandbox (root), no GPU, and none of
# Chromium's background connections (refused here, and slow to give up on).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
UPDATE_SCREENSHOTS = "DRP_UPDATE_SCREENSHOTS"  # =1: the tests rewrite docs/screenshots (the README's pictures)


def chromium_executable() -> str | None:
    """The Chromium to drive (DRP_CHROMIUM or /usr/bin/chromium), or None when it is not installed."""
    return shutil.which(os.environ.get("DRP_CHROMIUM") or DEFAULT_CHROMIUM)


# Skips at collection (a module, or a test), before its servers and databases are set up.
needs_chromium = pytest.mark.skipif(
    chromium_executable() is None,
    reason=f"no Chromium at {os.environ.get('DRP_CHROMIUM') or DEFAULT_CHROMIUM}: the browser tests need it "
           "(Debian/Ubuntu: apt-get install chromium; or set DRP_CHROMIUM to a Chromium or Chrome executable)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (a playwright Browser) per test module, with a fresh profile; closed after the module.
    Tests using it carry ``needs_chromium``."""
    executable = chromium_executable()
    assert executable is not None, "mark the test module with needs_chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # the lock has it; a venv made before it was added does not
        pytest.skip("playwright is not installed: recreate the venv from requirements/test.txt (scripts/test)")
    with sync_playwright() as p:
        # Playwright gives every launch a new temporary --user-data-dir and removes it on close.
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def screenshot(page: object, name: str, scratch: Path, *, full_page: bool = False) -> Path:
    """Save the page as <name>.png: in ``scratch``, or in docs/screenshots (the README's pictures) when
    DRP_UPDATE_SCREENSHOTS=1, so an ordinary test run leaves the checkout clean. Checked to be a real PNG."""
    folder = DOCS_SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS) == "1" else scratch
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)  # type: ignore[attr-defined]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, f"{path} is not a real screenshot"
    return path
