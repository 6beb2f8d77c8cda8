"""The compliance officer's pages in a real browser (Debian's chromium through Playwright): the
audit trail newest first with pages both ways and a detail view per entry, exports with distinct
file names, quarantine cards that say what was asked by whom on which model, the released tab
paged with working thumbnails, the unscreened-images banner, and release and reject with a reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from api_helpers import make_user, team_id
from job_helpers import queued_job
from PIL import Image, ImageDraw
from portal_helpers import login, new_page, shot

from latentops.core.errors import InvalidInput
from latentops.core.settings import get_settings
from latentops.governance import policy, quarantine, screening
from latentops.platform.database import session_scope

pytestmark = pytest.mark.slow

OFFICER = "carol@example.com"
SUBMITTER = "alice@example.com"


def _picture(seed: int) -> Image.Image:
    image = Image.new("RGB", (96, 96), ((seed * 53) % 255, (seed * 97) % 255, (seed * 31) % 255))
    ImageDraw.Draw(image).rectangle((10 + seed % 40, 12, 60, 70), fill=(240, 240, 20))
    return image


def _tiny_model(database_url: str, home: Path) -> int:
    """The id of the version of a tiny imported base model ``tiny-sd1``."""
    from latentops.pipelines import tiny
    from latentops.platform.services import models as models_service

    source = tiny.create("sd1", home / "imports" / "tiny-sd1")
    with session_scope(database_url) as session:
        models_service.import_model(session, source=source, name="tiny-sd1", actor="system", store_root=home / "models",
                                    sensitivity="public")
        return int(models_service.versions_of(session, model=models_service.get_model(session, name="tiny-sd1"))[-1].id)


def _generated(database_url: str, *, prompts: list[str], version_id: int, start_seed: int = 0) -> list[int]:
    """Images of a ``generate`` job by the submitter, each admitted through screening; their asset ids."""
    from latentops.platform.services.generation import prompt_ref
    from latentops.platform.services.users import get_user_by_email

    design = team_id(database_url, "design")
    with session_scope(database_url) as session:
        job = queued_job(session, kind="generate", params={"model": "tiny-sd1", "actor": SUBMITTER, "prompts": prompts}, actor=SUBMITTER, team_id=design)
        owner = get_user_by_email(session, SUBMITTER).id
        admissions = quarantine.admit_batch(
            session, settings=get_settings(), images=[_picture(start_seed + i) for i in range(len(prompts))],
            actor=SUBMITTER, seeds=[start_seed + i for i in range(len(prompts))],
            prompt_refs=[prompt_ref(p) for p in prompts], team="design", team_id=design, owner_id=owner,
            job_id=job.id, model_version_id=version_id)
        return [a.asset.id for a in admissions]


def test_audit_trail_newest_first_paged_both_ways_with_entry_details(portal: str, browser, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                                     fresh_policy) -> None:
    make_user(sqlite_url, OFFICER, "compliance_officer", "compliance")
    for index in range(30):
        make_user(sqlite_url, f"user{index:02d}@example.com", "submitter", "design")
    with session_scope(sqlite_url) as session:
        denied = policy.decide("prompt", {"prompt": "Mickey Mouse riding a skateboard"}, session=session,
                               actor=SUBMITTER)
    assert not denied.allow
    page = new_page(browser, portal)
    login(page, OFFICER)
    page.goto("/audit")
    table = page.get_by_role("table", name="Audit entries")
    rows = table.locator("tbody tr")
    seqs = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(rows.count())]
    assert len(seqs) == 25 and seqs == sorted(seqs, reverse=True)
    newest = seqs[0]
    assert page.get_by_role("link", name="Newer entries").count() == 0
    shot(page, "audit-newest-first")

    page.get_by_role("link", name="Older entries").click()
    page.wait_for_url("**/audit?before=*")
    older = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(rows.count())]
    assert older[0] == seqs[-1] - 1 and older == sorted(older, reverse=True)
    page.get_by_role("link", name="Newer entries").click()
    page.wait_for_url("**/audit?after=*")
    assert int(rows.first.locator("td").first.inner_text()) == newest
    assert rows.count() == 25

    page.get_by_label("Per page").select_option("50")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*limit=50*")
    assert rows.count() == 50
    page.get_by_label("Order").select_option("oldest")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*order=oldest*")
    assert int(rows.first.locator("td").first.inner_text()) == 0

    # The denied prompt's decision: its reasons, rule ids and categories, the hash and the chain link.
    page.get_by_label("Action").fill("policy.decision")
    page.get_by_label("Outcome").fill("deny")
    page.get_by_label("Order").select_option("newest")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*outcome=deny*")
    seq = int(rows.first.locator("td").first.inner_text())
    page.get_by_role("link", name=f"Entry {seq}", exact=True).click()
    page.wait_for_url(f"**/audit/{seq}")
    decision = page.get_by_role("region", name=re.compile(r"^Decision \d+$"))
    assert "Mickey Mouse" in decision.inner_text() and "prompt.protected_name" in decision.inner_text()
    assert "Categories: protected_name" in decision.inner_text() and "denied" in decision.inner_text()
    fields = page.get_by_role("table", name="Entry fields").inner_text()
    assert "policy.decision" in fields and re.search(r"Entry hash\s+[0-9a-f]{64}", fields)
    assert "Linked: the previous hash is the hash of entry" in page.get_by_role("status").inner_text()
    shot(page, "audit-entry")
    page.get_by_role("link", name="Previous entry").click()
    page.wait_for_url(f"**/audit/{seq - 1}")
    assert page.get_by_role("heading", level=1).inner_text() == f"Audit entry {seq - 1}"
    page.goto("/audit/999999")
    assert page.get_by_role("heading", level=1).inner_text() == "Not found"


def test_exports_download_distinct_descriptive_file_names(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, OFFICER, "compliance_officer", "compliance")
    page = new_page(browser, portal)
    login(page, OFFICER)
    names = {}
    for label in ("Export CSV", "Export JSON lines"):
        page.goto("/audit")
        with page.expect_download() as download:
            page.get_by_role("button", name=label).click()
        names[label] = download.value.suggested_filename
    assert re.fullmatch(r"latentops-audit-csv-all-\d{8}T\d{6}Z\.zip", names["Export CSV"]), names
    assert re.fullmatch(r"latentops-audit-jsonl-all-\d{8}T\d{6}Z\.zip", names["Export JSON lines"]), names
    page.goto("/audit?since=2026-01-01&until=2026-12-31")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    assert re.fullmatch(r"latentops-audit-csv-from-20260101T000000Z-to-20261231T000000Z-\d{8}T\d{6}Z\.zip",
                        download.value.suggested_filename)


def test_officer_reviews_cards_releases_and_rejects_with_reasons(portal: str, browser, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                                 home: Path, fresh_policy) -> None:
    make_user(sqlite_url, OFFICER, "compliance_officer", "compliance")
    make_user(sqlite_url, SUBMITTER, "submitter", "design")
    version = _tiny_model(sqlite_url, home)
    # No detector is configured and policy holds unscreened images: both are quarantined.
    first, second = _generated(sqlite_url, prompts=["a lighthouse at dusk", "a yellow square on teal"],
                               version_id=version)
    page = new_page(browser, portal)
    login(page, OFFICER)
    page.goto("/quarantine")
    assert page.get_by_role("alert", name="Unscreened images").count() == 0  # held, not released
    card = page.get_by_role("article", name=f"Image {first}")
    text = card.inner_text()
    assert "a lighthouse at dusk" in text and SUBMITTER in text and "tiny-sd1 v1" in text and "team design" in text
    assert "a yellow square on teal" in page.get_by_role("article", name=f"Image {second}").inner_text()
    assert card.get_by_role("img").evaluate("img => img.complete && img.naturalWidth > 0")
    shot(page, "quarantine-cards")

    # Reject needs a reason: the browser asks for one, and the server refuses a request without.
    reason = card.get_by_label(f"Reason for image {first}")
    card.get_by_role("button", name="Reject").click()
    assert reason.evaluate("input => input.validity.valueMissing")
    assert page.get_by_role("article", name=f"Image {first}").count() == 1
    refused = page.request.post(f"/quarantine/{first}/reject", form={"reason": " ", "csrf_token": _csrf(page)})
    assert refused.status == 422 and f"reason: a reason is required to reject image {first}" in refused.text()

    reason.fill("a test pattern, nothing harmful")
    card.get_by_role("button", name="Release").click()
    page.wait_for_url("**/quarantine?message=*")
    assert f"released image {first}" in page.get_by_role("status").inner_text()
    other = page.get_by_role("article", name=f"Image {second}")
    other.get_by_label(f"Reason for image {second}").fill("unclear provenance of the source pattern")
    other.get_by_role("button", name="Reject").click()
    page.wait_for_url("**/quarantine?message=*")
    assert "No quarantined images" in page.inner_text("main")

    page.get_by_role("link", name="Rejected").click()
    rejected = page.get_by_role("article", name=f"Image {second}")
    history = rejected.locator("ul.history").inner_text()
    assert f"Rejected by {OFFICER}" in history and "unclear provenance of the source pattern" in history
    page.get_by_role("link", name="Released").click()
    released = page.get_by_role("article", name=f"Image {first}")
    assert f"Released by {OFFICER}" in released.locator("ul.history").inner_text()
    assert "a test pattern, nothing harmful" in released.inner_text()
    assert released.get_by_role("img").evaluate("img => img.complete && img.naturalWidth > 0")
    shot(page, "quarantine-released-reviewed")


def test_released_tab_is_paged_newest_first_and_the_unscreened_banner_names_categories(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str, home: Path, fresh_policy) -> None:
    make_user(sqlite_url, OFFICER, "compliance_officer", "compliance")
    make_user(sqlite_url, SUBMITTER, "submitter", "design")
    version = _tiny_model(sqlite_url, home)
    with session_scope(sqlite_url) as session:
        policy.set_policy_data(session, key="screening.release_without_detector", value=True, actor="cli:test")
    assets = _generated(sqlite_url, prompts=[f"pattern number {i}" for i in range(23)], version_id=version)
    page = new_page(browser, portal)
    login(page, OFFICER)
    page.goto("/quarantine?status=released")
    banner = page.get_by_role("alert", name="Unscreened images")
    shown = banner.inner_text()
    assert "going out unscreened" in shown
    # Every category no detector covers here (all six without any detector; nsfwjs covers sexual).
    status = screening.status(get_settings())
    expected = status["uncovered"] if status["real_detector"] else list(status["coverage"])
    assert expected and all(name.replace("_", " ") in shown for name in expected), shown
    assert all(name not in shown for name in status["coverage"] if name not in expected), shown
    cards = page.locator("article.review")
    assert cards.count() == 20
    assert cards.first.get_attribute("aria-label") == f"Image {assets[-1]}"  # newest first
    page.wait_for_function("() => [...document.querySelectorAll('article.review img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    shot(page, "quarantine-released-page-1")
    page.get_by_role("link", name="Older images").click()
    page.wait_for_url("**/quarantine?status=released&offset=20")
    assert [cards.nth(i).get_attribute("aria-label") for i in range(cards.count())] == [
        f"Image {asset}" for asset in reversed(assets[:3])]
    page.get_by_role("link", name="Newer images").click()
    page.wait_for_url("**/quarantine?status=released&offset=0")
    assert cards.count() == 20
    page.goto("/audit")
    assert "going out unscreened" in page.get_by_role("alert", name="Unscreened images").inner_text()


def _csrf(page) -> str:  # type: ignore[no-untyped-def]
    return str(page.locator("input[name=csrf_token]").first.get_attribute("value"))


@pytest.mark.parametrize("newest_first", [True, False])
def test_audit_query_pages_cover_every_entry_once_in_both_directions(settings_env, newest_first: bool) -> None:  # type: ignore[no-untyped-def]
    from latentops.governance import compliance

    for index in range(12):
        make_user(settings_env.database_url, f"user{index:02d}@example.com", "submitter", "design")
    only = compliance.Filters(action="user.create")
    with session_scope(settings_env.database_url) as session:
        every = [e["seq"] for e in compliance.query(session, filters=only, limit=1000).entries]
        assert len(every) == 12
        expected = list(reversed(every)) if newest_first else every
        # Forward through the pages, then back again from the last one.
        pages, page = [], compliance.query(session, filters=only, limit=5, newest_first=newest_first)
        while True:
            pages.append([e["seq"] for e in page.entries])
            cursor = page.next_before if newest_first else page.next_after
            if cursor is None:
                break
            page = compliance.query(session, filters=only, limit=5, newest_first=newest_first,
                                    **({"before": cursor} if newest_first else {"after": cursor}))
        assert [len(p) for p in pages] == [5, 5, 2] and [s for p in pages for s in p] == expected
        back = []
        while True:
            cursor = page.next_after if newest_first else page.next_before
            if cursor is None:
                break
            page = compliance.query(session, filters=only, limit=5, newest_first=newest_first,
                                    **({"after": cursor} if newest_first else {"before": cursor}))
            back.append([e["seq"] for e in page.entries])
        assert back == [pages[1], pages[0]]
        with pytest.raises(InvalidInput, match="either after or before"):
            compliance.query(session, after=1, before=5)
