"""The policy-data and screening pages in a real browser: an admin edits a screening threshold with a
note, finds the new revision in the history, views its diff and rolls it back after a confirmation;
a bad edit is shown on the form with the key and the reason, the input kept and nothing stored; a
compliance officer sees per category what screens images and its threshold, and the quotas per team;
a submitter has neither page. Screenshots go to ``test-artifacts/portal/``."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import make_user
from playwright.sync_api import expect
from portal_helpers import login, new_page, shot

pytestmark = pytest.mark.slow


def test_admin_edits_a_threshold_sees_it_in_history_diffs_and_rolls_back(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, "dave@example.com", "admin", "ops")
    page = new_page(browser, portal)
    login(page, "dave@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Policy data").click()
    page.wait_for_url("**/policy-data")
    expect(page.get_by_role("table", name="Policy data history")).to_contain_text("No edits yet")
    page.get_by_role("navigation", name="Policy domains").get_by_role("link", name="screening").click()
    data = page.get_by_role("table", name="screening data in force")
    expect(data.get_by_role("row", name="screening.thresholds.sexual")).to_contain_text("0.5")

    page.get_by_role("link", name="Edit screening.thresholds.sexual").click()
    expect(page.get_by_label("Key", exact=True)).to_have_value("screening.thresholds.sexual")
    expect(page.get_by_label("Value (JSON)")).to_have_value("0.5")
    page.get_by_label("Value (JSON)").fill("0.35")
    page.get_by_label("Note (why; kept in the audit trail)").fill("fewer misses on the new model")
    page.get_by_role("button", name="Save edit").click()
    expect(page.get_by_role("status")).to_contain_text("screening.thresholds.sexual saved; policy revision")
    expect(data.get_by_role("row", name="screening.thresholds.sexual")).to_contain_text("0.35")
    history = page.get_by_role("table", name="Policy data history")
    latest = history.locator("tbody tr").first
    expect(latest).to_contain_text("dave@example.com")
    expect(latest).to_contain_text("screening.thresholds.sexual")
    expect(latest).to_contain_text("fewer misses on the new model")
    shot(page, "policy-data-edited")

    latest.get_by_role("link", name="Changes in revision 1").click()
    changes = page.get_by_role("table", name="Changes in revision 1")
    expect(changes.get_by_role("row", name="screening.thresholds.sexual")).to_contain_text("0.5")
    expect(changes.get_by_role("row", name="screening.thresholds.sexual").locator("td.after")).to_have_text("0.35")
    shot(page, "policy-data-diff")

    page.get_by_role("link", name="Policy data", exact=True).first.click()
    page.get_by_role("link", name="Roll back to the policy files' data").click()
    planned = page.get_by_role("table", name="What the rollback changes")
    expect(planned.get_by_role("row", name="screening.thresholds.sexual").locator("td.after")).to_have_text("0.5")
    page.get_by_role("button", name="Confirm rollback to revision 0").click()  # no note yet: refused, nothing changes
    expect(page.get_by_role("alert")).to_contain_text("note: say why the data is rolled back")
    page.get_by_label("Note (why; kept in the audit trail)").fill("the new model is not deployed yet")
    page.get_by_role("button", name="Confirm rollback to revision 0").click()
    expect(page.get_by_role("status")).to_contain_text("rolled back to revision 0; policy revision")
    expect(history.locator("tbody tr").first).to_contain_text("rollback to revision 0: the new model is not deployed yet")
    page.get_by_role("navigation", name="Policy domains").get_by_role("link", name="screening").click()
    expect(data.get_by_role("row", name="screening.thresholds.sexual")).to_contain_text("0.5")
    expect(history.locator("tbody tr")).to_have_count(2)  # the history keeps the edit and its rollback
    shot(page, "policy-data-rolled-back")


def test_a_bad_edit_shows_the_error_on_the_form_keeps_the_input_and_changes_nothing(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    make_user(sqlite_url, "carol@example.com", "compliance_officer", "compliance")
    page = new_page(browser, portal)
    login(page, "carol@example.com")
    page.goto("/policy-data?domain=screening")
    revision = page.locator("p.muted code").first.inner_text()
    form = page.get_by_role("form", name="Edit policy data")
    for value, reason in (("1.5", "must map categories to numbers between 0 and 1"), ("'high'", "value of screening.thresholds.sexual: not valid JSON")):
        form.get_by_label("Key", exact=True).fill("screening.thresholds.sexual")
        form.get_by_label("Value (JSON)").fill(value)
        form.get_by_label("Note (why; kept in the audit trail)").fill("stricter")
        form.get_by_role("button", name="Save edit").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text(reason)
        expect(form.get_by_label("Value (JSON)")).to_have_value(value)  # what was typed stays
        expect(form.get_by_label("Key", exact=True)).to_have_value("screening.thresholds.sexual")
        expect(form.get_by_label("Note (why; kept in the audit trail)")).to_have_value("stricter")
    expect(page.get_by_role("alert")).to_contain_text("screening.thresholds.sexual")
    shot(page, "policy-data-refused")
    expect(page.get_by_role("table", name="Policy data history")).to_contain_text("No edits yet")
    assert page.locator("p.muted code").first.inner_text() == revision
    expect(page.get_by_role("table", name="screening data in force").get_by_role("row", name="screening.thresholds.sexual")).to_contain_text("0.5")


def test_compliance_officer_sees_screening_per_category_and_quotas_submitter_sees_neither(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_nsfwjs import converted_nsfwjs

    from latentops.governance import nsfwjs

    folder: Path = converted_nsfwjs(tmp_path_factory)
    monkeypatch.setenv(nsfwjs.ENV_DIR, str(folder))
    make_user(sqlite_url, "carol@example.com", "compliance_officer", "compliance")
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal)
    login(page, "carol@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Screening").click()
    page.wait_for_url("**/screening")
    table = page.get_by_role("table", name="Screening per category")
    expect(table.get_by_role("row", name="sexual")).to_contain_text("nsfwjs")
    expect(table.get_by_role("row", name="sexual")).to_contain_text("0.5")
    expect(table.get_by_role("row", name="weapons")).to_contain_text("no detector")
    expect(table.get_by_role("row", name="weapons")).to_contain_text("0.7")
    expect(page.get_by_text("Detectors in force: nsfwjs")).to_be_visible()
    expect(page.get_by_role("status").first).to_contain_text("no configured detector covers minors")
    page.get_by_label("Labels (CSV or .jsonl)").set_input_files(
        files=[{"name": "labels.csv", "mimeType": "text/csv", "buffer": b"file,category\na.png,sexual\n"}])
    page.get_by_role("button", name="Calibrate").click()
    expect(page.get_by_role("alert")).to_contain_text("labels: column 'label' is missing in labels.csv")
    shot(page, "screening-status")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Policy data").click()
    quotas = page.get_by_role("table", name="Job quotas per team")
    expect(quotas.get_by_role("row", name="design")).to_contain_text("last 30 days")
    expect(quotas.get_by_role("row", name="design")).to_contain_text("100")

    other = new_page(browser, portal)
    login(other, "alice@example.com")
    nav = other.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Jobs")).to_be_visible()
    expect(nav.get_by_role("link", name="Screening")).to_have_count(0)
    expect(nav.get_by_role("link", name="Policy data")).to_have_count(0)
    assert other.goto("/policy-data").status == 403 and other.goto("/screening").status == 403
