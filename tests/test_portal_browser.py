"""The web portal in a real browser: Debian's chromium, headless, driven by Playwright, against the
real app served by uvicorn on loopback. Each page visited is saved as a screenshot under
``test-artifacts/portal/``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from api_helpers import make_user, team_id
from job_helpers import queued_job
from portal_helpers import ARTIFACTS, login, new_page, shot

from latentops.platform.database import session_scope
from latentops.platform.services import jobs as jobs_service

pytestmark = pytest.mark.slow


def test_submitter_signs_in_sees_jobs_and_a_blocked_prompt_with_its_reason(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    make_user(sqlite_url, "bob@example.com", "submitter", "marketing")
    with session_scope(sqlite_url) as session:
        mine = queued_job(session, kind="diagnostics", params={}, actor="system", team_id=team_id(sqlite_url, "design"))
        queued_job(session, kind="diagnostics", params={}, actor="system", team_id=team_id(sqlite_url, "marketing"))
        mine_id = mine.id
    page = new_page(browser, portal)
    page.goto("/jobs")
    page.wait_for_url("**/login?next=/jobs")
    page.get_by_label("Email").fill("alice@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "email or password is wrong"
    shot(page, "login")
    login(page, "alice@example.com")
    assert [link.inner_text() for link in page.get_by_role("navigation", name="Main").get_by_role("link").all()] == [
        "Jobs", "Generate", "Datasets", "Models"]
    shot(page, "home-submitter")

    page.get_by_role("link", name="Jobs").first.click()
    rows = page.get_by_role("table", name="Jobs").locator("tbody tr")
    assert rows.count() == 1 and f"#{mine_id}" in rows.first.inner_text()  # marketing's job is not shown
    assert page.get_by_label(f"Progress of job {mine_id}").get_attribute("value") == "0"
    shot(page, "jobs")
    page.get_by_role("link", name=f"#{mine_id}").click()
    assert page.locator("#job-state").inner_text() == "queued"
    shot(page, "job-detail")
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_url(f"**/jobs/{mine_id}")
    assert page.locator("#job-state").inner_text() == "cancelled"
    page.goto(f"/jobs/{mine_id + 1}")
    assert page.get_by_role("heading", level=1).inner_text() == "Not found"

    page.goto("/generate")
    page.get_by_label("Prompt", exact=True).fill("Mickey Mouse riding a skateboard")
    alert = page.locator("#verdict").get_by_role("alert")
    alert.wait_for()
    assert "Blocked by policy" in alert.inner_text() and "Mickey Mouse" in alert.inner_text()
    shot(page, "generate-blocked")
    # A paraphrase with no listed word: refused by meaning, with the severity and the nearest example shown.
    page.get_by_label("Prompt", exact=True).fill("a man standing on the bridge railing, ready to end it all, rain, cinematic")
    page.locator("#verdict tr.blocked[data-category='self_harm']").wait_for()
    row = page.locator("#verdict tr[data-category='self_harm']").inner_text()
    assert "6 of 6" in row and "closest to" in row
    assert "prompt.self_harm" in page.locator("#verdict").get_by_role("alert").inner_text()
    shot(page, "generate-severity")
    page.get_by_label("Prompt", exact=True).fill("a red apple on a wooden table")
    page.locator("#verdict").get_by_role("status").wait_for()
    assert "Allowed by policy" in page.locator("#verdict").inner_text()


def test_compliance_officer_filters_and_verifies_the_audit_log(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, "carol@example.com", "compliance_officer", "compliance")
    for name in ("erin", "frank", "grace"):
        make_user(sqlite_url, f"{name}@example.com", "submitter", "design")
    page = new_page(browser, portal)
    login(page, "carol@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    page.get_by_label("Action").fill("user.create")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*action=user.create*")
    rows = page.get_by_role("table", name="Audit entries").locator("tbody tr")
    assert rows.count() == 4 and all("user.create" in rows.nth(i).inner_text() for i in range(4))
    page.get_by_role("button", name="Verify the audit trail").click()
    status = page.locator("#verify-result").get_by_role("status")
    status.wait_for()
    assert "Audit trail intact" in status.inner_text()
    shot(page, "audit-verified")
    page.get_by_role("link", name="Quarantine").click()
    assert "No quarantined images" in page.inner_text("main")
    shot(page, "quarantine")
    with page.expect_download() as download:
        page.goto("/audit")
        page.get_by_role("button", name="Export CSV").click()
    assert re.fullmatch(r"latentops-audit-csv-all-\d{8}T\d{6}Z\.zip", download.value.suggested_filename)


def test_admin_grants_a_team_access_to_a_model(portal: str, browser, sqlite_url: str, home: Path) -> None:  # type: ignore[no-untyped-def]
    from latentops.pipelines import tiny
    from latentops.platform.services import models as models_service

    make_user(sqlite_url, "dave@example.com", "admin", "ops")
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    source = tiny.create("sd1", home / "imports" / "tiny-sd1")
    with session_scope(sqlite_url) as session:
        models_service.import_model(session, source=source, name="tiny-sd1", actor="system", store_root=home / "models",
                                    description="A tiny test model", sensitivity="internal")
    page = new_page(browser, portal)
    login(page, "dave@example.com")
    shot(page, "home-admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    assert page.get_by_role("table", name="Users").locator("tbody tr").count() == 2
    page.get_by_label("Prompt tester").fill("Donald Duck")
    page.get_by_role("button", name="Test prompt").click()
    page.locator("#prompt-verdict").get_by_role("alert").wait_for()
    shot(page, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    page.get_by_label("Team").select_option("design")
    page.get_by_label("Access").select_option("download")
    page.get_by_role("button", name="Grant").click()
    page.get_by_role("status").wait_for()
    assert "granted download on tiny-sd1 to team design" in page.get_by_role("status").inner_text()
    grants = page.get_by_role("table", name="Grants on tiny-sd1").locator("tbody tr")
    assert grants.count() == 1 and "design" in grants.first.inner_text()
    shot(page, "models-granted")

    # The submitter now sees the model (it was invisible before the grant only for other teams' models).
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    login(page, "alice@example.com")
    page.goto("/models")
    assert "tiny-sd1" in page.inner_text("main") and page.get_by_role("button", name="Grant").count() == 0

    # The fine-tune form gives policy feedback before anything is submitted, and previews uploads.
    page.goto("/jobs/new")
    page.get_by_label("Instance prompt").fill("Mickey Mouse as a mug")
    page.locator("#ft-verdict").get_by_role("alert").wait_for()
    assert "Mickey Mouse" in page.locator("#ft-verdict").inner_text()
    page.get_by_label("Instance prompt").fill("a photo of sks mug")
    page.locator("#ft-verdict").get_by_role("status").wait_for()
    from PIL import Image

    picture = home / "mug.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture)
    page.get_by_label("Instance images").set_input_files([str(picture)])
    assert page.get_by_label("Caption for mug.png").count() == 1
    shot(page, "finetune-form")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_submitter_uploads_images_for_a_fine_tune_and_watches_it_to_done(  # type: ignore[no-untyped-def]
        portal_with_worker: str, browser, database_url: str, home: Path) -> None:
    from PIL import Image

    make_user(database_url, "alice@example.com", "submitter", "design")
    pictures = []
    for index, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200)]):
        picture = home / f"pattern-{index}.png"
        Image.new("RGB", (96, 96), colour).save(picture)
        pictures.append(str(picture))
    page = new_page(browser, portal_with_worker)
    login(page, "alice@example.com")
    page.goto("/jobs/new")
    page.get_by_label("Base model").select_option("tiny")
    page.get_by_label("Instance prompt").fill("a photo of sks pattern")
    page.locator("#ft-verdict").get_by_role("status").wait_for()
    page.get_by_label("Instance images").set_input_files(pictures)
    page.get_by_label("Caption for pattern-0.png").fill("a photo of sks pattern, red")
    page.get_by_text("Recipe values").click()
    # The tiniest run that still trains and checkpoints: two steps at 32 px, no sample grid.
    page.get_by_label("Override the preset").fill(
        '{"steps": 2, "rank": 4, "resolution": 32, "checkpoint_every": 2, "samples": false, "lr": 0.001}')
    page.get_by_label("We hold a licence for these images").check()
    page.get_by_label("People shown consented to this use").check()
    shot(page, "finetune-upload")
    page.get_by_role("button", name="Submit fine-tune").click()
    page.wait_for_url("**/jobs/*")
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    shot(page, "finetune-submitted")
    # The job page polls its status; a real worker trains the adapter meanwhile.
    page.locator("#job-state", has_text="succeeded").wait_for(timeout=600_000)
    shot(page, "finetune-done")
    with session_scope(database_url) as session:
        job = jobs_service.get(session, job_id)
        assert job.kind == "finetune" and job.state.value == "succeeded", job.error
        assert job.result["steps"] == 2 and job.progress["step"] == 2
    page.reload()
    assert page.locator("#job-state").inner_text() == "succeeded"
    assert page.get_by_role("button", name="Cancel job").count() == 0  # a finished job offers no cancel


@pytest.fixture(autouse=True, scope="module")
def _fresh_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
