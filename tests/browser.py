"""Browser plumbing shared by the browser test modules: Debian's chromium driven by playwright.

Screenshots go to test-artifacts/screenshots/ (one full page per step; ``*-FAILED.png`` when a step fails).
Skipped only when chromium or playwright is missing outside CI; under CI=1 a missing chromium is an error.
Never run ``playwright install``: the system chromium is driven through ``executable_path``.
Test modules import what they use from here; the ``page`` fixture (conftest.py) opens one page per module.
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from apprunner import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000  # one wait on this loaded 2-core machine; the whole module takes well under this per step
SAVED_RUN = REPO / "assets" / "runs" / "rge-micro"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser test (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

if os.environ.get("CI"):  # CI must fail loudly, not skip, when the driver is missing
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def open_page(app):
    """A chromium page on the running app, ready when Compare's examples show (conftest's ``page`` fixture)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(app.url)
        expect(pg.get_by_text("Examples: click one to run it")).to_be_visible()
        yield pg
        browser.close()


@contextmanager
def tab(page, app, name, shot_name):
    """Open a tab; on success save a full-page screenshot, on failure one named *-FAILED plus the app log."""
    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")
    try:
        yield
    except Exception as e:
        page.screenshot(path=str(SHOTS / f"{shot_name}-FAILED.png"), full_page=True)
        log = app.log_path.read_text()[-3000:] if app.log_path.exists() else ""
        raise AssertionError(f"{name} tab: {e}\n--- app log tail ---\n{log}") from e
    page.screenshot(path=str(SHOTS / f"{shot_name}.png"), full_page=True)
    assert not page.errors, f"uncaught errors in the page: {page.errors}"


def visible(page, selector):
    return page.locator(f"{selector} >> visible=true")


def choose(page, label, option):
    """Pick ``option`` in the gradio dropdown labelled ``label``."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)
