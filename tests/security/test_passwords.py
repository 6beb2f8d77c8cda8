"""Passwords follow NIST SP 800-63B: long enough, no composition rules, and refused when easy to
guess (only whitespace, one character repeated, a word repeated, on the common-password list,
built around the email's name). The API, the CLI and the portal refuse them with 422 naming
``password`` and the rule, never echoing the password, and create nothing."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, make_user
from fastapi.testclient import TestClient

from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import users as users_service
from latentops.platform.tables import User

WEAK = {
    "twelve spaces": (" " * 12, "must not be only whitespace"),
    "a word twice": ("passwordpassword", "must not be a shorter sequence repeated"),
    "common with digits": ("password1234", "is on the list of commonly used passwords"),
    "common, capitalised": ("Sunshine2024!", "is on the list of commonly used passwords"),
    "one character repeated": ("x" * 16, "must not be one character repeated"),
    "the email's name": ("newcomer-2024-autumn", "must not contain the email's name"),
    "too short": ("kq8#vz2", "must be at least 12 characters"),
}
GOOD = "violet tram under a paper moon"


def _users(database_url: str) -> set[str]:
    with session_scope(database_url) as session:
        return set(session.scalars(sa.select(User.email)))


@pytest.fixture
def admin(settings_env) -> tuple[TestClient, dict[str, str]]:  # type: ignore[no-untyped-def]
    token = make_user(settings_env.database_url, "dave@example.com", "admin", "ops")
    with session_scope(settings_env.database_url) as session:  # new users join an existing team
        users_service.create_team(session, name="design", actor="system")
    return TestClient(create_app(settings_env)), bearer(token)


@pytest.mark.parametrize("case", list(WEAK))
def test_api_refuses_a_weak_password_naming_the_rule(admin, settings_env, case: str) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    password, rule = WEAK[case]
    before = _users(settings_env.database_url)
    answer = api.post("/api/v1/users", headers=headers, json={"email": "newcomer@example.com", "role": "submitter",
                                                              "team": "design", "password": password})
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"error": "invalid_input", "detail": f"password: {rule}",
                             "reasons": [{"field": "password", "reason": rule}]}
    assert _users(settings_env.database_url) == before


def test_api_accepts_a_passphrase_and_it_signs_in(admin, settings_env) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    made = api.post("/api/v1/users", headers=headers, json={"email": "newcomer@example.com", "role": "submitter",
                                                            "team": "design", "password": GOOD})
    assert made.status_code == 201, made.text
    assert api.post("/api/v1/auth/login", json={"email": "newcomer@example.com", "password": GOOD}).status_code == 200


def test_cli_refuses_weak_passwords_and_accepts_a_passphrase(cli, settings_env) -> None:  # type: ignore[no-untyped-def]
    for case in ("twelve spaces", "a word twice", "common with digits", "one character repeated"):
        password, rule = WEAK[case]
        done = cli("users", "create", "--email", "newcomer@example.com", "--role", "submitter", "--team", "design",
                   "--password-stdin", input=password + "\n")
        assert done.returncode == 1, case
        assert done.stderr.splitlines()[0] == f"InvalidInput: password: {rule}", case
        assert done.stdout == ""  # the one line above is all: the password is not echoed
    assert _users(settings_env.database_url) == set()
    done = cli("users", "create", "--email", "newcomer@example.com", "--role", "submitter", "--team", "design",
               "--password-stdin", "--json", input=GOOD + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["email"] == "newcomer@example.com"


def test_portal_admin_form_refuses_a_weak_password(admin, settings_env) -> None:  # type: ignore[no-untyped-def]
    api, _headers = admin
    signed_in = api.post("/api/v1/auth/login", json={"email": "dave@example.com", "password": PASSWORD})
    csrf = signed_in.json()["csrf_token"]
    before = _users(settings_env.database_url)
    refused = api.post("/admin/users", data={"email": "newcomer@example.com", "team": "design", "role": "submitter",
                                             "password": "passwordpassword", "csrf_token": csrf},
                       follow_redirects=False)
    assert refused.status_code == 422
    assert "must not be a shorter sequence repeated" in refused.text and "passwordpassword" not in refused.text
    assert _users(settings_env.database_url) == before
    made = api.post("/admin/users", data={"email": "newcomer@example.com", "team": "design", "role": "submitter",
                                          "password": GOOD, "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303
