"""Signing in does not leak and cannot be walked around: ``X-Forwarded-For`` counts only from a
trusted proxy (so a client cannot pick a fresh address per attempt to evade the throttle), an
unknown email, a wrong password and a locked, disabled or single sign-on account get one answer
after the same work, and every 429 says when to come back (``Retry-After``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, free_port, make_user
from conftest import REPO
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from latentops.core.settings import get_settings
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, AuditPending, User

LOGIN = "/api/v1/auth/login"
WRONG = {"error": "authentication_failed", "detail": "email or password is wrong", "reasons": []}


def _app(monkeypatch: pytest.MonkeyPatch, *, peer: str, **env: str) -> TestClient:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return TestClient(create_app(get_settings()), client=(peer, 40_000))


def _attempt(api: TestClient, forwarded: str | None = None, email: str = "x@example.com") -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return api.post(LOGIN, json={"email": email, "password": "not the password"}, headers=headers)


def test_forwarded_for_from_an_untrusted_peer_does_not_evade_the_throttle(settings_env,  # type: ignore[no-untyped-def]
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    api = _app(monkeypatch, peer="198.51.100.7", LATENTOPS_LOGIN_RATE_PER_MINUTE="3")
    for n in range(3):
        assert _attempt(api, f"203.0.113.{n}").status_code == 401
    throttled = _attempt(api, "203.0.113.99")
    assert throttled.status_code == 429 and throttled.json()["error"] == "quota_exceeded"
    assert "198.51.100.7" in throttled.json()["detail"]  # the peer is counted, not the header's address
    # The attempts were made just now: the oldest leaves the 60 s window in about a minute.
    retry = throttled.headers["retry-after"]
    assert 50 <= int(retry) <= 61 and f"try again in {retry} s" in throttled.json()["detail"]


def test_forwarded_for_is_honoured_only_from_a_trusted_proxy(settings_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    api = _app(monkeypatch, peer="10.1.2.3", LATENTOPS_LOGIN_RATE_PER_MINUTE="3",
               LATENTOPS_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.10")
    for _ in range(3):
        assert _attempt(api, "203.0.113.1").status_code == 401
    # The right-most address that is not a trusted proxy is the client; what a client prepends is ignored.
    assert _attempt(api, "198.51.100.50, 203.0.113.1").status_code == 429
    assert _attempt(api, "203.0.113.1, 192.0.2.10").status_code == 429
    assert _attempt(api, "203.0.113.2").status_code == 401  # another client behind the same proxy
    assert _attempt(api, "not-an-address").status_code == 401  # garbage: the proxy itself is counted
    with session_scope(settings_env.database_url) as session:
        clients = [d["client"] for d in _login_details(session)]
    assert clients.count("203.0.113.1") == 3 and "203.0.113.2" in clients and "10.1.2.3" in clients


def _login_details(session: Session) -> list[dict[str, object]]:
    """The details of every audited sign-in attempt, integrated into the chain or still pending."""
    found: list[dict[str, object]] = []
    for model in (AuditEntry, AuditPending):
        for text in session.scalars(sa.select(model.details).where(model.action == "auth.login")):
            found.append(json.loads(text))
    return found


def test_latentops_serve_ignores_forwarded_for_from_loopback(settings_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real server: uvicorn must not rewrite the client from X-Forwarded-For either."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "LATENTOPS_LOGIN_RATE_PER_MINUTE": "3"}
    process = subprocess.Popen([sys.executable, "-m", "latentops.platform.cli.main", "serve", "--port", str(port)],
                               env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        codes = [httpx.post(base + LOGIN, json={"email": "x@example.com", "password": "nope"},
                            headers={"X-Forwarded-For": f"203.0.113.{n}"}, timeout=30).status_code for n in range(4)]
        assert codes == [401, 401, 401, 429]
    finally:
        process.terminate()
        process.wait(15)


@pytest.fixture
def accounts(settings_env) -> TestClient:  # type: ignore[no-untyped-def]
    """alice (password), sam (locked), dora (disabled), erin (single sign-on, no password)."""
    for email in ("alice@example.com", "sam@example.com", "dora@example.com"):
        make_user(settings_env.database_url, email, "submitter", "design")
    admin = make_user(settings_env.database_url, "dave@example.com", "admin", "ops")
    api = TestClient(create_app(settings_env))
    for _ in range(settings_env.login_max_failures):
        api.post(LOGIN, json={"email": "sam@example.com", "password": "wrong wrong wrong"})
    dora = next(u["id"] for u in api.get("/api/v1/users", headers=bearer(admin)).json() if u["email"].startswith("dora"))
    assert api.post(f"/api/v1/users/{dora}/disable", headers=bearer(admin)).status_code == 200
    with session_scope(settings_env.database_url) as session:
        from latentops.platform.services import users as users_service

        users_service.create_user(session, email="erin@example.com", role="submitter", team="design", password=None,
                                  actor="system")
        sam = session.scalar(sa.select(User).where(User.email == "sam@example.com"))
        assert sam is not None and sam.locked_until is not None
    return api


CASES = {
    "unknown": ("nobody@example.com", PASSWORD),
    "wrong password": ("alice@example.com", "wrong wrong wrong"),
    "locked, right password": ("sam@example.com", PASSWORD),
    "locked, wrong password": ("sam@example.com", "wrong wrong wrong"),
    "disabled, right password": ("dora@example.com", PASSWORD),
    "single sign-on account": ("erin@example.com", PASSWORD),
}


def test_locked_unknown_and_wrong_get_one_answer(accounts: TestClient) -> None:
    answers = {case: accounts.post(LOGIN, json={"email": email, "password": password})
               for case, (email, password) in CASES.items()}
    for case, answer in answers.items():
        assert (answer.status_code, answer.json()) == (401, WRONG), case
        assert "set-cookie" not in answer.headers, case

    page = accounts.get("/login").text
    texts = set()
    for email, password in CASES.values():  # the portal's form: one page, whatever the case
        token = _form_token(page)
        form = accounts.post("/login", data={"email": email, "password": password, "csrf_token": token},
                             follow_redirects=False)
        assert form.status_code == 401
        page = form.text
        texts.add(page.replace(_form_token(page), "TOKEN").replace(email, "EMAIL"))
    assert len(texts) == 1 and "email or password is wrong" in texts.pop()


def _form_token(page: str) -> str:
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def test_every_failure_takes_one_password_verification(accounts: TestClient) -> None:
    """Timing does not tell the cases apart: each does one argon2 verification (a lower bound, robust to load)."""
    def fastest(email: str, password: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            accounts.post(LOGIN, json={"email": email, "password": password})
            times.append(time.perf_counter() - start)
        return min(times)

    baseline = fastest(*CASES["wrong password"])
    for case in ("unknown", "locked, wrong password", "single sign-on account"):
        assert fastest(*CASES[case]) > 0.5 * baseline, case


def test_throttled_portal_sign_in_says_when_to_retry(settings_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    api = _app(monkeypatch, peer="198.51.100.8", LATENTOPS_LOGIN_RATE_PER_MINUTE="2")
    page = api.get("/login").text
    codes = []
    for _ in range(3):
        codes.append(api.post("/login", data={"email": "x@example.com", "password": "nope",
                                              "csrf_token": _form_token(page)}, follow_redirects=False))
        page = codes[-1].text
    assert [c.status_code for c in codes] == [401, 401, 429]
    retry = codes[-1].headers["retry-after"]
    assert 50 <= int(retry) <= 61 and f"try again in {retry} s" in codes[-1].text
    assert "too many attempts" in codes[-1].text
