"""The admin's pages in a real browser (Debian's chromium through Playwright): teams are created on
purpose and picked from a list, users are created, given roles, removed from a team and
deactivated (each after a confirmation, each audited), grants are made once and revoked after a
confirmation step, and fine-tuned LoRA adapters are listed with their base model.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, make_user, team_id
from fastapi.testclient import TestClient
from portal_helpers import login, new_page, shot

from latentops.governance import identities
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, LoraAdapter

pytestmark = pytest.mark.slow

ADMIN = "dave@example.com"


def _actions(database_url: str, prefix: str, expected: list[str]) -> list[str]:
    """The audit trail's actions starting with ``prefix``, once they are ``expected`` (entries join
    the chain just after their transaction commits) or when 10 s have passed."""
    deadline = time.monotonic() + 10
    while True:
        with session_scope(database_url) as session:
            found = list(session.scalars(sa.select(AuditEntry.action).where(AuditEntry.action.like(prefix + "%"))
                                         .order_by(AuditEntry.seq)))
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _user_row(page, email: str):  # type: ignore[no-untyped-def]
    return page.get_by_role("table", name="Users").locator(f"tr[data-user='{email}']")


def test_admin_creates_a_team_a_user_changes_roles_removes_a_membership_and_deactivates(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str) -> None:
    make_user(sqlite_url, ADMIN, "admin", "ops")
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal)
    login(page, ADMIN)
    page.goto("/admin")

    # Teams are picked from the existing ones; a new one is its own, explicit action.
    create = page.get_by_role("form", name="Create user")
    assign = page.get_by_role("form", name="Set a role")
    team_picker = create.get_by_label("Team")
    assert team_picker.evaluate("e => e.tagName") == "SELECT"
    assert [o for o in team_picker.locator("option").all_inner_texts() if o != "Choose a team"] == ["design", "ops"]
    page.get_by_label("New team name").fill("vision")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url("**/admin?message=*")
    assert "created team vision" in page.get_by_role("status").inner_text()
    page.get_by_label("New team name").fill("vision")
    page.get_by_role("button", name="Create team").click()
    assert "a team named 'vision' already exists" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("New team name").input_value() == "vision"  # what was typed is kept

    # A weak password is refused on the form; the email, team and role stay as typed.
    create.get_by_label("Email").fill("erin@example.com")
    create.get_by_label("Team").select_option("vision")
    create.get_by_label("Role").select_option("data_scientist")
    create.get_by_label("Password (at least 12").fill("passwordpassword")
    create.get_by_role("button", name="Create user").click()
    assert "password: must not be a shorter sequence repeated" in create.get_by_role("alert").inner_text()
    assert create.get_by_label("Email").input_value() == "erin@example.com"
    assert create.get_by_label("Team").input_value() == "vision"
    assert create.get_by_label("Role").input_value() == "data_scientist"
    create.get_by_label("Password (at least 12").fill(PASSWORD)
    create.get_by_role("button", name="Create user").click()
    page.wait_for_url("**/admin?message=*")
    assert "created erin@example.com" in page.get_by_role("status").inner_text()
    assert "vision: data scientist" in _user_row(page, "erin@example.com").inner_text()
    shot(page, "admin-user-created")

    # A role in a second team, then a changed role there.
    for role in ("submitter", "compliance_officer"):
        assign.get_by_label("User").select_option(label="erin@example.com")
        assign.get_by_label("Team").select_option("design")
        assign.get_by_label("Role").select_option(role)
        assign.get_by_role("button", name="Save role").click()
        page.wait_for_url("**/admin?message=*")
        assert f"erin@example.com is {role} in design" in page.get_by_role("status").inner_text()
    row = _user_row(page, "erin@example.com")
    assert "design: compliance officer" in row.inner_text() and "vision: data scientist" in row.inner_text()

    # Removing a membership asks first; cancelling changes nothing.
    row.get_by_role("link", name="Remove erin@example.com from design").click()
    page.wait_for_url("**/memberships/design/remove")
    assert "Remove erin@example.com from team design?" in page.inner_text("main")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url("**/admin")
    assert "design: compliance officer" in _user_row(page, "erin@example.com").inner_text()
    _user_row(page, "erin@example.com").get_by_role("link", name="Remove erin@example.com from design").click()
    page.get_by_role("button", name="Remove from team").click()
    page.wait_for_url("**/admin?message=*")
    assert "removed erin@example.com from team design" in page.get_by_role("status").inner_text()
    row = _user_row(page, "erin@example.com")
    assert "design" not in row.inner_text() and "vision: data scientist" in row.inner_text()
    # The last team is not removed: the account is deactivated instead.
    assert row.get_by_role("link", name="Remove erin@example.com from vision").count() == 0

    row.get_by_role("link", name="Deactivate erin@example.com").click()
    page.wait_for_url("**/deactivate")
    assert "Deactivate erin@example.com?" in page.inner_text("main")
    page.get_by_role("button", name="Deactivate").click()
    page.wait_for_url("**/admin?message=*")
    assert "deactivated erin@example.com" in page.get_by_role("status").inner_text()
    row = _user_row(page, "erin@example.com")
    assert row.locator("td").nth(3).inner_text() == "no"
    assert _user_row(page, ADMIN).get_by_role("link", name=f"Deactivate {ADMIN}").count() == 0  # not oneself
    shot(page, "admin-user-deactivated")
    created = ["team.create"] * 3  # design and ops with their first users, then vision
    assert _actions(sqlite_url, "team.create", created) == created
    changed = ["membership.set", "membership.set", "membership.remove"]
    assert _actions(sqlite_url, "membership.", changed) == changed
    assert _actions(sqlite_url, "user.disable", ["user.disable"]) == ["user.disable"]

    # The deactivated user cannot sign in.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.get_by_label("Email").fill("erin@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").count() == 1


def test_rest_refuses_an_unknown_team_naming_the_existing_ones(settings_env) -> None:  # type: ignore[no-untyped-def]
    from latentops.platform.api.app import create_app

    admin = bearer(make_user(settings_env.database_url, ADMIN, "admin", "ops"))
    make_user(settings_env.database_url, "alice@example.com", "submitter", "design")
    api = TestClient(create_app(settings_env))
    typo = api.post("/api/v1/users", headers=admin, json={"email": "erin@example.com", "role": "submitter",
                                                          "team": "desgin", "password": PASSWORD})
    assert typo.status_code == 422
    assert typo.json()["detail"] == "team: no team named 'desgin'; existing teams: design, ops"
    erin = api.post("/api/v1/users", headers=admin, json={"email": "erin@example.com", "role": "submitter",
                                                          "team": "design", "password": PASSWORD})
    assert erin.status_code == 201, erin.text
    user_id = erin.json()["id"]
    moved = api.put(f"/api/v1/users/{user_id}/memberships", headers=admin, json={"team": "vision", "role": "submitter"})
    assert moved.status_code == 422 and "no team named 'vision'" in moved.json()["detail"]
    made = api.post("/api/v1/teams", headers=admin, json={"name": "Vision"})
    assert made.status_code == 201 and made.json()["name"] == "vision"
    assert api.post("/api/v1/teams", headers=admin, json={"name": "vision"}).status_code == 409
    assert api.put(f"/api/v1/users/{user_id}/memberships", headers=admin,
                   json={"team": "vision", "role": "submitter"}).status_code == 200
    assert api.delete(f"/api/v1/users/{user_id}/memberships/design", headers=admin).json()["memberships"] == [
        {"team": "vision", "role": "submitter"}]
    assert api.post(f"/api/v1/users/{user_id}/disable", headers=admin).json()["active"] is False
    with session_scope(settings_env.database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)
                              .where(AuditEntry.action == "team.create",
                                     AuditEntry.actor == identities.stored_actor(session, ADMIN))) == 1


def test_admin_grants_once_revokes_after_confirming_and_sees_adapters(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str, home: Path) -> None:
    from latentops.pipelines import tiny
    from latentops.platform.services import models as models_service

    make_user(sqlite_url, ADMIN, "admin", "ops")
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    source = tiny.create("sd1", home / "imports" / "tiny-sd1")
    with session_scope(sqlite_url) as session:
        models_service.import_model(session, source=source, name="tiny-sd1", actor="system", store_root=home / "models",
                                    description="A tiny test model", sensitivity="internal")
        version = models_service.versions_of(session, model=models_service.get_model(session, name="tiny-sd1"))[-1]
        session.add(LoraAdapter(name="mug-style", version=1, base_version_id=version.id,
                                team_id=team_id(sqlite_url, "design"), job_id=None, content_hash="a" * 64,
                                path=str(home / "adapters" / "mug-style-1"), aliases=["candidate"]))
    page = new_page(browser, portal)
    login(page, ADMIN)
    page.goto("/models")
    adapters = page.get_by_role("table", name="LoRA adapters").locator("tbody tr")
    assert adapters.count() == 1
    listed = adapters.first.inner_text()
    assert "mug-style v1" in listed and "tiny-sd1 v1" in listed and "design" in listed and "candidate" in listed

    for _ in range(2):
        page.get_by_label("Team").select_option("design")
        page.get_by_label("Access").select_option("download")
        page.get_by_role("button", name="Grant").click()
        page.wait_for_url("**/models?message=*")
    assert "team design already has download on tiny-sd1; nothing changed" in page.get_by_role("status").inner_text()
    assert _actions(sqlite_url, "model.grant", ["model.grant"]) == ["model.grant"]
    grants = page.get_by_role("table", name="Grants on tiny-sd1").locator("tbody tr")
    assert grants.count() == 1

    # Revoking asks first; cancelling keeps the grant.
    page.get_by_role("link", name="Revoke download from design").click()
    page.wait_for_url("**/models/tiny-sd1/revoke?*")
    assert "Revoke download on tiny-sd1 from team design?" in page.inner_text("main")
    shot(page, "models-revoke-confirm")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url("**/models")
    assert grants.count() == 1 and "design" in grants.first.inner_text()
    page.get_by_role("link", name="Revoke download from design").click()
    page.get_by_role("button", name="Revoke").click()
    page.wait_for_url("**/models?message=*")
    assert "revoked download on tiny-sd1 from team design" in page.get_by_role("status").inner_text()
    assert "No grants." in page.get_by_role("table", name="Grants on tiny-sd1").inner_text()
    assert _actions(sqlite_url, "model.revoke", ["model.revoke"]) == ["model.revoke"]
    shot(page, "models-revoked")
