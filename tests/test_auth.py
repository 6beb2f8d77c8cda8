"""Signing in: password sessions with CSRF, lockout after repeated failures, throttling per address,
and OpenID Connect single sign-on against a provider running on loopback."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, make_user
from fastapi.testclient import TestClient
from oidc_provider import OidcProvider, RunningProvider

from latentops.core.settings import get_settings
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, User, WebSession


@pytest.fixture
def api(settings_env) -> TestClient:  # type: ignore[no-untyped-def]
    make_user(settings_env.database_url, "alice@example.com", "submitter", "design")
    return TestClient(create_app(settings_env))


def _actions(database_url: str, prefix: str) -> list[tuple[str, str]]:
    with session_scope(database_url) as session:
        rows = session.execute(sa.select(AuditEntry.action, AuditEntry.outcome).where(AuditEntry.action.like(prefix + "%"))
                               .order_by(AuditEntry.seq)).all()
    return [(a, o) for a, o in rows]


def test_password_session_needs_csrf_for_changes_and_ends_at_logout(api: TestClient, settings_env) -> None:  # type: ignore[no-untyped-def]
    signed_in = api.post("/api/v1/auth/login", json={"email": "Alice@Example.com", "password": PASSWORD})
    assert signed_in.status_code == 200
    cookie = signed_in.headers["set-cookie"]
    assert "latentops_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    csrf = signed_in.json()["csrf_token"]
    assert api.get("/api/v1/auth/me").json()["via"] == "session"

    forged = api.post("/api/v1/tokens", json={"name": "x"})
    assert forged.status_code == 403 and forged.json()["error"] == "forbidden"
    assert forged.json()["detail"].startswith("csrf: this form post is missing its CSRF token")
    wrong = api.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    made = api.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201

    assert api.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    api.cookies.set("latentops_session", cookie.split("latentops_session=")[1].split(";")[0])
    ended = api.get("/api/v1/auth/me")
    assert ended.status_code == 401 and "session ended" in ended.json()["detail"]
    assert _actions(settings_env.database_url, "auth.")[-2:] == [("auth.login", "success"), ("auth.logout", "success")]


def test_repeated_failures_lock_the_account_and_are_audited(api: TestClient, settings_env) -> None:  # type: ignore[no-untyped-def]
    for attempt in range(settings_env.login_max_failures):
        failed = api.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": f"wrong-{attempt}"})
        assert failed.status_code == 401 and failed.json()["detail"] == "email or password is wrong"
    locked = api.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    # Locked, yet the same answer as a wrong password: the answer does not reveal the lockout.
    assert locked.status_code == 401 and locked.json() == failed.json()
    with session_scope(settings_env.database_url) as session:
        user = session.scalar(sa.select(User).where(User.email == "alice@example.com"))
        assert user is not None and user.failed_logins == 5 and user.locked_until is not None
        assert session.scalar(sa.select(sa.func.count(WebSession.id))) == 0
    actions = _actions(settings_env.database_url, "auth.")
    assert actions.count(("auth.login", "failure")) == 5
    assert ("auth.lockout", "locked") in actions and actions[-1] == ("auth.login", "locked")
    unknown = api.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever"})
    assert unknown.status_code == 401 and unknown.json()["detail"] == "email or password is wrong"

    admin = make_user(settings_env.database_url, "dave@example.com", "admin", "ops")
    user_id = next(u["id"] for u in api.get("/api/v1/users", headers=bearer(admin)).json() if u["email"] == "alice@example.com")
    assert api.post(f"/api/v1/users/{user_id}/enable", headers=bearer(admin)).json()["email"] == "alice@example.com"
    assert api.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD}).status_code == 200


def test_login_attempts_are_throttled_per_address(settings_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LATENTOPS_LOGIN_RATE_PER_MINUTE", "3")
    get_settings.cache_clear()
    api = TestClient(create_app(get_settings()))
    for _ in range(3):
        assert api.post("/api/v1/auth/login", json={"email": "x@example.com", "password": "nope"}).status_code == 401
    throttled = api.post("/api/v1/auth/login", json={"email": "x@example.com", "password": "nope"})
    assert throttled.status_code == 429 and throttled.json()["error"] == "quota_exceeded"
    assert "too many attempts" in throttled.json()["detail"]
    assert _actions(settings_env.database_url, "auth.throttle") == [("auth.throttle", "refused")]


def test_portal_sign_in_form_refuses_a_post_without_its_csrf_token(api: TestClient, settings_env) -> None:  # type: ignore[no-untyped-def]
    forged = api.post("/login", data={"email": "alice@example.com", "password": PASSWORD}, follow_redirects=False)
    assert forged.status_code == 403 and "expired or was not sent by this page" in forged.text
    page = api.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    done = api.post("/login", data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": token, "next": "//evil.example"},
                    follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"  # no open redirect
    home = api.get("/")
    assert home.status_code == 200 and "Jobs" in home.text and "Admin" not in home.text
    assert api.post("/logout", follow_redirects=False).status_code == 403  # no CSRF token: not signed out
    with session_scope(settings_env.database_url) as session:
        assert session.scalar(sa.select(sa.func.count(WebSession.id)).where(WebSession.revoked_at.is_(None))) == 1


@pytest.fixture
def provider() -> OidcProvider:  # type: ignore[misc]
    with RunningProvider(OidcProvider()) as running:
        yield running


def _sso_app(settings_env, provider: OidcProvider, monkeypatch: pytest.MonkeyPatch) -> TestClient:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LATENTOPS_OIDC_ISSUER", provider.issuer)
    monkeypatch.setenv("LATENTOPS_OIDC_CLIENT_ID", provider.client_id)
    monkeypatch.setenv("LATENTOPS_OIDC_CLIENT_SECRET", provider.client_secret)
    monkeypatch.setenv("LATENTOPS_OIDC_GROUP_MAP", json.dumps({
        "design-team": {"team": "design", "role": "submitter"}, "auditors": {"team": "compliance", "role": "compliance_officer"}}))
    get_settings.cache_clear()
    return TestClient(create_app(get_settings()), base_url="http://testserver")


def _sso_round_trip(api: TestClient) -> httpx.Response:
    start = api.get("/api/v1/auth/oidc/login", params={"next": "/jobs"}, follow_redirects=False)
    assert start.status_code == 302
    at_provider = httpx.get(start.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302, at_provider.text
    back = urlparse(at_provider.headers["location"])
    assert back.path == "/api/v1/auth/oidc/callback"
    return api.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_single_sign_on_provisions_the_user_with_teams_from_groups(settings_env, provider: OidcProvider,  # type: ignore[no-untyped-def]
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    api = _sso_app(settings_env, provider, monkeypatch)
    provider.user = {"sub": "u-123", "email": "erin@corp.example", "email_verified": True, "name": "Erin",
                     "groups": ["design-team", "auditors", "unrelated"]}
    done = _sso_round_trip(api)
    assert done.status_code == 302 and done.headers["location"] == "/jobs"
    me = api.get("/api/v1/auth/me").json()
    assert me["email"] == "erin@corp.example" and me["sso"] is True
    assert me["memberships"] == [{"team": "compliance", "role": "compliance_officer"}, {"team": "design", "role": "submitter"}]

    # Groups follow the provider at the next sign-in; the user is not created twice.
    provider.user = {**provider.user, "groups": ["design-team"]}
    api.cookies.clear()
    assert _sso_round_trip(api).status_code == 302
    assert api.get("/api/v1/auth/me").json()["memberships"] == [{"team": "design", "role": "submitter"}]
    with session_scope(settings_env.database_url) as session:
        assert session.scalar(sa.select(sa.func.count(User.id)).where(User.email == "erin@corp.example")) == 1
        user = session.scalar(sa.select(User).where(User.email == "erin@corp.example"))
        assert user is not None and user.external_id == f"{provider.issuer}|u-123" and user.password_hash is None
    actions = [a for a, _ in _actions(settings_env.database_url, "")]
    assert "user.provision" in actions and actions.count("membership.sync") == 2


def test_single_sign_on_refuses_unmapped_groups_forged_tokens_and_replayed_state(settings_env, provider: OidcProvider,  # type: ignore[no-untyped-def]
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    api = _sso_app(settings_env, provider, monkeypatch)
    provider.user = {"sub": "u-9", "email": "mallory@corp.example", "email_verified": True, "groups": ["visitors"]}
    refused = _sso_round_trip(api)
    assert refused.status_code == 401 and "none of your identity provider groups" in refused.json()["detail"]
    assert ("auth.sso_login", "failure") in _actions(settings_env.database_url, "auth.sso")

    provider.user, provider.forge = {**provider.user, "groups": ["design-team"]}, True
    forged = _sso_round_trip(api)
    assert forged.status_code == 401 and forged.json()["detail"].startswith("sso: the ID token does not verify")
    provider.forge = False

    start = api.get("/api/v1/auth/oidc/login", follow_redirects=False)
    at_provider = httpx.get(start.headers["location"], follow_redirects=False)
    back = urlparse(at_provider.headers["location"])
    tampered = api.get(f"{back.path}?{back.query.replace('state=', 'state=x')}", follow_redirects=False)
    assert tampered.status_code == 401 and "state does not match" in tampered.json()["detail"]
    # A local account is not taken over by an unverified email claim.
    make_user(settings_env.database_url, "alice@example.com", "admin", "ops")
    provider.user = {"sub": "u-10", "email": "alice@example.com", "email_verified": False, "groups": ["design-team"]}
    takeover = _sso_round_trip(api)
    assert takeover.status_code == 401 and "did not verify the email" in takeover.json()["detail"]
    with session_scope(settings_env.database_url) as session:
        assert session.scalar(sa.select(sa.func.count(WebSession.id))) == 0
