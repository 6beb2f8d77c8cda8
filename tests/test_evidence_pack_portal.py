"""A compliance officer downloads an evidence pack from the audit page in chromium, and it verifies."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from api_helpers import make_user
from portal_helpers import login, new_page
from test_evidence_pack import run_verify, unpack

from latentops.governance import policy
from latentops.platform.database import session_scope

OFFICER = "carol@example.com"


@pytest.mark.usefixtures("fresh_policy")
def test_officer_downloads_a_pack_that_verifies(portal: str, browser, sqlite_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, OFFICER, "compliance_officer", "compliance")
    with session_scope(sqlite_url) as db:
        policy.decide("prompt", {"prompt": "a lighthouse at dusk"}, session=db, actor="cli:tester")
    today = dt.datetime.now(dt.UTC).date()
    page = new_page(browser, portal)
    login(page, OFFICER)
    page.goto("/audit")
    form = page.get_by_role("form", name="Evidence pack")
    form.get_by_label("From").fill((today - dt.timedelta(days=1)).isoformat())
    form.get_by_label("To (inclusive)").fill(today.isoformat())
    with page.expect_download() as download:
        form.get_by_role("button", name="Download evidence pack").click()
    name = download.value.suggested_filename
    assert re.fullmatch(r"latentops-evidence-\d{8}T000000Z-\d{8}T000000Z-\d{8}T\d{6}Z\.zip", name), name
    saved = tmp_path / name
    download.value.save_as(saved)
    result = run_verify(unpack(saved.read_bytes(), tmp_path / "pack"))
    assert result.returncode == 0, result.stdout
    assert re.match(r"OK: [1-9]\d* entries in the window", result.stdout), result.stdout
