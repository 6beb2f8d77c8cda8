"""Audit export signs a checkpoint and writes an entry: it is a POST, refused to a cookie session
without its CSRF token, and a GET on the old route is 405 with no side effect."""

from __future__ import annotations

import zipfile
from io import BytesIO

import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, make_user
from fastapi.testclient import TestClient

from latentops.core.settings import Settings
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditCheckpoint, AuditEntry, AuditPending


def _trail(url: str) -> tuple[int, int, int]:
    with session_scope(url) as db:
        return tuple(int(db.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())  # type: ignore[return-value]
                     for table in (AuditEntry, AuditPending, AuditCheckpoint))


def test_export_is_a_post_and_a_get_changes_nothing(settings_env: Settings) -> None:
    api = TestClient(create_app(settings_env))
    officer = bearer(make_user(settings_env.database_url, "olga@example.com", "compliance_officer", "compliance"))
    before = _trail(settings_env.database_url)
    got = api.get("/api/v1/audit/export", params={"format": "jsonl"}, headers=officer)
    assert got.status_code == 405
    assert _trail(settings_env.database_url) == before  # no checkpoint signed, no entry written

    made = api.post("/api/v1/audit/export", params={"format": "jsonl"}, headers=officer)
    assert made.status_code == 200, made.text
    assert set(zipfile.ZipFile(BytesIO(made.content)).namelist()) == {"audit.jsonl", "audit.jsonl.proofs.json"}
    entries, _pending, checkpoints = _trail(settings_env.database_url)
    assert checkpoints == before[2] + 1 and entries > before[0]


def test_a_cookie_post_without_the_csrf_token_is_refused(settings_env: Settings) -> None:
    api = TestClient(create_app(settings_env))
    make_user(settings_env.database_url, "olga@example.com", "compliance_officer", "compliance")
    signed_in = api.post("/api/v1/auth/login", json={"email": "olga@example.com", "password": PASSWORD})
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["csrf_token"]
    before = _trail(settings_env.database_url)

    refused = api.post("/api/v1/audit/export", params={"format": "csv"})  # the session cookie only
    assert refused.status_code == 403 and "csrf" in refused.json()["detail"]
    forged = api.post("/api/v1/audit/export", params={"format": "csv"}, data={"csrf_token": "not-the-token"})
    assert forged.status_code == 403
    assert _trail(settings_env.database_url) == before

    # The portal's form: the session's token in a hidden field.
    made = api.post("/api/v1/audit/export", params={"format": "csv"}, data={"csrf_token": token})
    assert made.status_code == 200, made.text
    page = api.get("/audit")
    assert page.status_code == 200
    assert 'method="post" action="/api/v1/audit/export?format=csv' in page.text and token in page.text
