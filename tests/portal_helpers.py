"""Portal browser tests' shared parts: the real app on loopback, Debian's chromium through
Playwright, sign-in and screenshots (saved under ``test-artifacts/portal/``).

Test modules import the fixtures they use: ``from portal_helpers import browser, portal``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from api_helpers import PASSWORD
from conftest import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "portal"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]

@contextlib.contextmanager
def serving(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``app`` served by uvicorn on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the portal did not start within 20 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def portal(sqlite_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on 127.0.0.1 with a fresh SQLite database; yields its base URL."""
    from latentops.core.settings import get_settings
    from latentops.platform.api.app import create_app

    for key in list(os.environ):
        if key.startswith("LATENTOPS_") and not key.startswith("LATENTOPS_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    with serving(create_app(get_settings())) as url:
        yield url
    get_settings.cache_clear()


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        launched.close()


def new_page(browser, base: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=base, viewport={"width": 1366, "height": 820})
    context.set_default_timeout(15_000)
    return context.new_page()


def login(page, email: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def tiny_public_model(settings, home: Path) -> None:  # type: ignore[no-untyped-def]
    """A tiny SD1 model catalogued as ``tiny`` (public), and policy data releasing what no detector covers."""
    from latentops.governance import policy
    from latentops.pipelines import tiny
    from latentops.platform.database import session_scope
    from latentops.platform.services import models as models_service

    source = tiny.create("sd1", home / "imports" / "tiny-sd1")
    with session_scope(settings.database_url) as session:
        models_service.import_model(session, source=source, name="tiny", actor="system",
                                    store_root=settings.model_store, sensitivity="public")
        # Uploads are content-screened; with no detector for most categories, policy data releases them.
        policy.set_policy_data(session, key="screening.release_without_detector", value=True, actor="cli:test")


@pytest.fixture
def portal_with_worker(queue_settings, start_worker, home: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app on loopback with the test's database and Redis, a tiny public model, and a real worker."""
    from latentops.platform.api.app import create_app

    tiny_public_model(queue_settings, home)
    start_worker("gpu,cpu")
    with serving(create_app(queue_settings)) as url:
        yield url
