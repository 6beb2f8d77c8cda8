"""The protected-names page in a real browser (the harness of ``test_portal_browser.py``): a
compliance officer searches, adds a name that the prompt tester then refuses, changes its category,
removes it again and sees a bad edit refused with its field; a submitter has no such page.
Screenshots go to ``test-artifacts/portal-names/``."""

from __future__ import annotations

import pytest
from api_helpers import make_user
from conftest import REPO
from portal_helpers import login, new_page

ARTIFACTS = REPO / "test-artifacts" / "portal-names"

pytestmark = pytest.mark.slow


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _verdict(page, prompt: str) -> str:  # type: ignore[no-untyped-def]
    page.get_by_label("Prompt to test").fill(prompt)
    page.get_by_role("button", name="Test prompt").click()
    answer = page.locator("#names-verdict").get_by_role("alert").or_(page.locator("#names-verdict").get_by_role("status"))
    answer.wait_for()
    return str(answer.inner_text())


def test_compliance_officer_adds_a_name_the_prompt_tester_refuses_then_removes_it(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, "carol@example.com", "compliance_officer", "compliance")
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal)
    login(page, "carol@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Protected names").click()
    page.wait_for_url("**/protected-names")

    page.get_by_label("Name", exact=True).fill("rutkowski")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/protected-names?q=rutkowski*")
    rows = page.get_by_role("table", name="Protected names").locator("tbody tr")
    assert rows.count() == 1 and "Greg Rutkowski" in rows.first.inner_text()
    _shot(page, "search")
    assert "Allowed by policy" in _verdict(page, "Zorblax Quintera at the beach")

    page.get_by_label("New name", exact=True).fill("Zorblax Quintera")
    page.get_by_label("Category of the new name").select_option("celebrity")
    page.get_by_label("Note (why; kept in the audit trail)").fill("takedown request 7")
    page.get_by_role("button", name="Add name").click()
    assert "added Zorblax Quintera (celebrity)" in page.get_by_role("status").first.inner_text()
    assert page.get_by_label("Category of Zorblax Quintera", exact=True).input_value() == "celebrity"
    refused = _verdict(page, "Zorblax Quintera at the beach")
    assert "Blocked by policy" in refused and "Zorblax Quintera, a protected celebrity" in refused
    _shot(page, "added")

    page.get_by_label("Category of Zorblax Quintera", exact=True).select_option("living artist")
    page.get_by_role("button", name="Change the category of Zorblax Quintera").click()
    assert "Zorblax Quintera is now a protected living artist" in page.get_by_role("status").first.inner_text()
    assert "a protected living artist" in _verdict(page, "in the style of zorblax quintera")

    page.get_by_role("button", name="Remove Zorblax Quintera").click()
    assert "removed Zorblax Quintera" in page.get_by_role("status").first.inner_text()
    assert "No protected name matches." in page.get_by_role("table", name="Protected names").inner_text()
    assert "Allowed by policy" in _verdict(page, "Zorblax Quintera at the beach")

    page.get_by_label("New name", exact=True).fill("spiderman")
    page.get_by_role("button", name="Add name").click()
    assert "add[0].name: 'spiderman' is already protected (as 'Spider-Man')" in page.get_by_role("alert").inner_text()
    _shot(page, "refused")

    page.get_by_role("button", name="Sign out").click()
    login(page, "alice@example.com")
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Protected names").count() == 0
    page.goto("/protected-names")
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
