"""The REST API against the real database: authentication, authorisation through the access policy,
team isolation (404, not 403), audit and policy routes, model downloads, and bad input."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer, expire_token, make_token, team_id
from fastapi.testclient import TestClient
from job_helpers import queued_job

from latentops.governance import identities, integration
from latentops.platform.api.app import create_app
from latentops.platform.database import get_engine, session_scope
from latentops.platform.tables import (
    AuditEntry,
    AuditPending,
    Job,
    JobEvent,
    JobState,
    ModelRecord,
    PolicyDecision,
    User,
)


@pytest.fixture
def api(settings_env) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(settings_env))



def _job(database_url: str, team: str) -> int:
    with session_scope(database_url) as session:
        job = queued_job(session, kind="diagnostics", params={}, actor="system", team_id=team_id(database_url, team))
        return job.id


def _count(database_url: str, model: type) -> int:
    with session_scope(database_url) as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def test_token_authenticates_and_bad_tokens_get_a_clear_401(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    me = api.get("/api/v1/auth/me", headers=bearer(people["alice"]))
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"
    assert me.json()["memberships"] == [{"team": "design", "role": "submitter"}] and me.json()["via"] == "token"

    anonymous = api.get("/api/v1/jobs")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "authentication_failed"
    assert api.get("/api/v1/jobs", headers={"Authorization": "Basic abc"}).json()["detail"].startswith("authorization:")
    assert api.get("/api/v1/jobs", headers=bearer("lat_nope")).json()["detail"] == "token: unknown token"

    expired = make_token(settings_env.database_url, "alice@example.com")
    expire_token(settings_env.database_url, expired)
    body = api.get("/api/v1/jobs", headers=bearer(expired)).json()
    assert body == {"error": "authentication_failed", "detail": "token: this token has expired", "reasons": []}

    created = api.post("/api/v1/tokens", json={"name": "laptop", "scopes": ["read"]}, headers=bearer(people["alice"]))
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    assert api.get("/api/v1/jobs", headers=bearer(secret)).status_code == 200
    assert api.delete(f"/api/v1/tokens/{token_id}", headers=bearer(people["bob"])).status_code == 404  # not bob's
    assert api.delete(f"/api/v1/tokens/{token_id}", headers=bearer(people["alice"])).json()["revoked"] is True
    revoked = api.get("/api/v1/jobs", headers=bearer(secret))
    assert revoked.status_code == 401 and revoked.json()["detail"] == "token: this token was revoked"


def test_team_isolation_hides_other_teams_jobs_as_not_found(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    design_job, marketing_job = _job(url, "design"), _job(url, "marketing")

    listed = api.get("/api/v1/jobs", headers=bearer(people["alice"])).json()
    assert [j["id"] for j in listed["items"]] == [design_job] and listed["items"][0]["team"] == "design"
    assert listed["items"][0]["queue_position"] == 0  # first on the gpu queue
    assert api.get(f"/api/v1/jobs/{design_job}", headers=bearer(people["alice"])).status_code == 200

    hidden = api.get(f"/api/v1/jobs/{marketing_job}", headers=bearer(people["alice"]))
    missing = api.get("/api/v1/jobs/999999", headers=bearer(people["alice"]))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"error": "not_found", "detail": f"job: no job with id {marketing_job}", "reasons": []}
    for path in ("logs", "progress"):
        assert api.get(f"/api/v1/jobs/{marketing_job}/{path}", headers=bearer(people["alice"])).status_code == 404
    assert api.post(f"/api/v1/jobs/{marketing_job}/cancel", headers=bearer(people["alice"])).status_code == 404

    # Roles that see every team (policy data) list both.
    officer = api.get("/api/v1/jobs", headers=bearer(people["carol"])).json()
    assert {j["id"] for j in officer["items"]} == {design_job, marketing_job}

    cancelled = api.post(f"/api/v1/jobs/{design_job}/cancel", headers=bearer(people["alice"]))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    logs = api.get(f"/api/v1/jobs/{design_job}/logs", headers=bearer(people["alice"])).json()
    assert [e["message"] for e in logs] == ["queued", "cancelled before it started"]
    stream = api.get(f"/api/v1/jobs/{design_job}/progress", headers=bearer(people["alice"]))
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert "event: progress" in stream.text and "event: done" in stream.text and '"state": "cancelled"' in stream.text


def test_roles_and_scopes_are_decided_by_the_access_policy_and_denials_recorded(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    denied = api.get("/api/v1/audit/entries", headers=bearer(people["alice"]))
    assert denied.status_code == 403 and denied.json()["error"] == "policy_denied"
    assert denied.json()["reasons"][0].startswith("access.role: none of your roles may audit.read")

    read_only = make_token(settings_env.database_url, "alice@example.com", scopes=["read"])
    refused = api.post("/api/v1/jobs", json={"kind": "diagnostics"}, headers=bearer(read_only))
    assert refused.status_code == 403
    assert refused.json()["reasons"] == ["access.scope: this API token's scopes do not allow jobs.submit"]
    with session_scope(settings_env.database_url) as session:
        rows = session.scalars(sa.select(PolicyDecision).where(PolicyDecision.path == "access")).all()
        assert [(r.allow, r.rule_ids) for r in rows] == [(False, ["access.role"]), (False, ["access.scope"])]
    assert api.get("/api/v1/users", headers=bearer(people["alice"])).status_code == 403
    assert api.get("/api/v1/users", headers=bearer(people["dave"])).status_code == 200
    assert api.get("/api/v1/quarantine", headers=bearer(people["dave"])).status_code == 403  # quarantine: officers
    assert api.get("/api/v1/quarantine", headers=bearer(people["carol"])).json() == []


def test_compliance_officer_queries_verifies_exports_and_proves(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    officer = bearer(people["carol"])
    page = api.get("/api/v1/audit/entries", params={"action": "user.*", "limit": 2}, headers=officer).json()
    assert [e["action"] for e in page["entries"]] == ["user.create", "user.create"] and page["next_after"] is not None
    rest = api.get("/api/v1/audit/entries", params={"action": "user.*", "after": page["next_after"]}, headers=officer).json()
    assert [e["resource"] for e in page["entries"] + rest["entries"]] == [f"user:{i}" for i in range(1, 5)]
    bad = api.get("/api/v1/audit/entries", params={"since": "yesterday"}, headers=officer)
    assert bad.status_code == 422 and "since" in bad.json()["detail"]

    report = api.post("/api/v1/audit/verify", headers=officer).json()
    assert report["ok"] is True and report["damage"] == [] and report["entries"] > 8

    exported = api.post("/api/v1/audit/export", params={"format": "csv", "action": "user.create"}, headers=officer)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    assert sorted(archive.namelist()) == ["audit.csv", "audit.csv.proofs.json"]
    assert archive.read("audit.csv").decode().count("user.create") == 4
    proof = api.get("/api/v1/audit/proofs/inclusion", params={"seq": 0}, headers=officer).json()
    assert proof["leaf_index"] == 0 and proof["checkpoint"]["tree_size"] >= 1
    with session_scope(settings_env.database_url) as session:
        carol = identities.stored_actor(session, "carol@example.com")
        actions = set(session.scalars(sa.select(AuditEntry.action).where(AuditEntry.actor == carol)))
    assert {"audit.verify", "audit.export"} <= actions


def test_prompt_check_reports_severity_per_category_and_refuses_bad_input(api: TestClient, people) -> None:  # type: ignore[no-untyped-def]
    headers = bearer(people["alice"])
    url = "/api/v1/policies/prompt/check"
    refused = api.post(url, json={"prompt": "a man standing on the bridge railing, ready to end it all"}, headers=headers).json()
    assert refused["allow"] is False and "prompt.self_harm" in refused["rule_ids"]
    assert refused["categories"]["self_harm"]["severity"] == 6 and "closest to" in refused["categories"]["self_harm"]["evidence"]
    assert set(refused["categories"]) == {"sexual", "sexual_minors", "gore", "self_harm", "hate"}
    for body, field in [({"prompt": ""}, "prompt"), ({"prompt": "\u200b\u0007 \t"}, "prompt"), ({"prompt": "x" * 100_000}, "prompt"),
                        ({"prompt": "a cat", "team": "t" * 101}, "team"), ({}, "prompt")]:
        response = api.post(url, json=body, headers=headers)
        assert response.status_code == 422, body
        assert field in response.text
    invalid_utf8 = api.post(url, content=b'{"prompt": "caf\xe9 \xff"}', headers={**headers, "content-type": "application/json"})
    assert invalid_utf8.status_code == 400 and "body: not a JSON document in UTF-8" in invalid_utf8.text, invalid_utf8.text
    mixed = api.post(url, json={"prompt": "Мiсkеу Моusе \u202e on a boat"}, headers=headers).json()
    assert mixed["allow"] is False and "prompt.protected_name" in mixed["rule_ids"]


def test_prompt_check_and_policy_routes(api: TestClient, people) -> None:  # type: ignore[no-untyped-def]
    blocked = api.post("/api/v1/policies/prompt/check", json={"prompt": "Mickey Mouse on a skateboard"},
                       headers=bearer(people["alice"])).json()
    assert blocked["allow"] is False and blocked["recorded"] is False
    assert any("Mickey Mouse" in reason for reason in blocked["reasons"])
    fine = api.post("/api/v1/policies/prompt/check", json={"prompt": "a red apple on a table"},
                    headers=bearer(people["alice"])).json()
    assert fine["allow"] is True
    status = api.get("/api/v1/policies", headers=bearer(people["alice"])).json()
    assert "access" in status["paths"] and len(status["revision"]) == 64
    source = api.get("/api/v1/policies/access", headers=bearer(people["alice"])).json()
    assert "access/access.rego" in source["modules"] and "jobs.submit" in source["data"]["actions"]
    assert api.get("/api/v1/policies/nope", headers=bearer(people["alice"])).status_code == 404
    evaluated = api.post("/api/v1/policies/models/evaluate", headers=bearer(people["dave"]), json={"input": {
        "action": "download", "model": {"name": "m", "sensitivity": "internal", "owner_team": None}, "grants": []}}).json()
    assert evaluated["allow"] is False and evaluated["decision_id"] is not None


def test_model_visibility_grants_and_audited_download(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    from latentops.pipelines import tiny

    url = settings_env.database_url
    tiny.create("sd1", settings_env.home / "imports" / "tiny-sd1")
    imported = api.post("/api/v1/models", json={"name": "tiny-sd1", "source": "tiny-sd1", "sensitivity": "internal"},
                        headers=bearer(people["dave"]))
    assert imported.status_code == 201, imported.text
    assert api.post("/api/v1/models", json={"name": "again", "source": "tiny-sd1"},
                    headers=bearer(people["alice"])).status_code == 403  # importing is for admins
    name = "tiny-sd1"
    with session_scope(url) as session:
        record = session.scalar(sa.select(ModelRecord))
        assert record is not None
        record.owner_team_id = team_id(url, "marketing")

    assert api.get("/api/v1/models", headers=bearer(people["alice"])).json() == []  # marketing's model
    hidden = api.get(f"/api/v1/models/{name}", headers=bearer(people["alice"]))
    assert hidden.status_code == 404 and hidden.json()["detail"] == f"model: no model named {name!r}"
    assert [m["name"] for m in api.get("/api/v1/models", headers=bearer(people["bob"])).json()] == [name]

    no_grant = api.get(f"/api/v1/models/{name}/download", headers=bearer(people["bob"]))
    assert no_grant.status_code == 403 and no_grant.json()["reasons"][0].startswith("models.no_grant")
    refused_grant = api.post(f"/api/v1/models/{name}/grants", json={"action": "download", "team": "design"},
                             headers=bearer(people["bob"]))
    assert refused_grant.status_code == 403
    granted = api.post(f"/api/v1/models/{name}/grants", json={"action": "download", "team": "design"},
                       headers=bearer(people["dave"]))
    assert granted.status_code == 201
    assert [m["name"] for m in api.get("/api/v1/models", headers=bearer(people["alice"])).json()] == [name]

    download = api.get(f"/api/v1/models/{name}/download", headers=bearer(people["alice"]))
    assert download.status_code == 200 and download.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(download.content)) as archive:
        members = archive.getnames()
    assert members and all(m.startswith(f"{name}-v1/") for m in members)
    with session_scope(url) as session:
        entry = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "model.download")).one()
        alice = identities.stored_actor(session, "alice@example.com")
    assert entry.actor == alice and json.loads(entry.details)["name"] == name


def test_bad_input_is_a_clear_4xx_and_stores_nothing(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    admin = bearer(people["dave"])
    users_before, jobs_before = _count(url, User), _count(url, Job)

    malformed = api.post("/api/v1/users", content=b'{"email": "x@y.z", ', headers={**admin, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["error"] == "invalid_input"
    wrong_type = api.post("/api/v1/users", content=b"email=x@y.z", headers={**admin, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 422 and wrong_type.json()["error"] == "invalid_input"
    bad_role = api.post("/api/v1/users", json={"email": "e@x.io", "role": "king", "team": "t", "password": PASSWORD},
                        headers=admin)
    assert bad_role.status_code == 422 and bad_role.json()["detail"].startswith("role: unknown role 'king'")
    huge = api.post("/api/v1/users", content=b"{" + b" " * (settings_env.max_upload_bytes + 1) + b"}",
                    headers={**admin, "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(settings_env.max_upload_bytes // 65536 + 2):
            yield b" " * 65536

    chunked = api.post("/api/v1/jobs", content=chunks(), headers={**admin, "Content-Type": "application/json"})
    assert chunked.status_code == 413
    traversal = api.post("/api/v1/models", json={"name": "evil", "source": "../../etc"}, headers=admin)
    assert traversal.status_code == 422 and "leaves the import folder" in traversal.json()["detail"]
    absolute = api.post("/api/v1/models", json={"name": "evil", "source": "/etc/passwd"}, headers=admin)
    assert absolute.status_code == 422
    unknown_kind = api.post("/api/v1/jobs", json={"kind": "mine-bitcoin"}, headers=bearer(people["alice"]))
    assert unknown_kind.status_code in (422, 503)  # 503 only when no broker is configured for this test
    assert api.get("/api/v1/jobs", params={"state": "sleepy"}, headers=admin).status_code == 422
    assert api.get("/api/v1/jobs/notanumber", headers=admin).status_code == 422
    assert (_count(url, User), _count(url, Job), _count(url, ModelRecord)) == (users_before, jobs_before, 0)


def test_responses_carry_security_headers(api: TestClient) -> None:
    response = api.get("/login")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
    assert api.get("/api/v1/jobs").headers["cache-control"] == "no-store"
    assert api.get("/static/htmx.min.js").status_code == 200


@pytest.mark.redis
def test_submit_runs_for_the_callers_team(queue_settings, people) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(queue_settings))
    submitted = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {}}, headers=bearer(people["alice"]))
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["team"] == "design" and job["state"] == "queued" and job["owner_id"] is not None
    assert job["queue_position"] == 0
    second = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {}}, headers=bearer(people["alice"])).json()
    assert second["queue_position"] == 1  # nothing drains the queue here: behind the first
    assert api.get(f"/api/v1/jobs/{second['id']}", headers=bearer(people["alice"])).json() == second
    other_team = api.post("/api/v1/jobs", json={"kind": "diagnostics", "team": "marketing"}, headers=bearer(people["alice"]))
    assert other_team.status_code == 404 and other_team.json()["detail"] == "team: no team named 'marketing'"
    officer = api.post("/api/v1/jobs", json={"kind": "diagnostics"}, headers=bearer(people["carol"]))
    assert officer.status_code == 403 and officer.json()["reasons"][0].startswith("access.role")
    with session_scope(queue_settings.database_url) as session:
        assert session.scalar(sa.select(sa.func.count(Job.id))) == 2
        integration.catch_up(session)
        submits = session.scalars(sa.select(AuditEntry.resource).where(AuditEntry.action == "job.submit")).all()
        assert sorted(submits) == [f"job:{job['id']}", f"job:{second['id']}"]
        decisions = session.scalars(sa.select(PolicyDecision.allow).where(PolicyDecision.path == "jobs")).all()
        assert decisions == [True, True]  # each admission is recorded with its job


def test_submit_with_the_broker_down_is_refused_and_stores_no_job(broker_down, people) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(broker_down))
    refused = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {}}, headers=bearer(people["alice"]))
    assert refused.status_code == 503 and refused.json()["detail"].startswith("broker unreachable at redis://127.0.0.1:1/0")
    with session_scope(broker_down.database_url) as session:
        assert session.scalar(sa.select(sa.func.count(Job.id))) == 0
        assert session.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.path == "jobs")) == 0


def test_a_broker_lost_after_its_check_fails_the_committed_job_with_the_same_503(broker_down, people, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The broker answered a moment ago, so the submit does not ask again, but it is gone when the
    committed job is handed over: the job is failed on the record and the client gets the 503."""
    from latentops.platform.services.jobs.submit import _broker_seen

    monkeypatch.setitem(_broker_seen, broker_down.broker_url, time.monotonic())
    api = TestClient(create_app(broker_down))
    refused = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {}}, headers=bearer(people["alice"]))
    assert refused.status_code == 503
    body = refused.json()
    assert body["error"] == "service_unavailable" and body["reasons"] == []
    assert body["detail"].startswith("broker unreachable at redis://127.0.0.1:1/0")
    with session_scope(broker_down.database_url) as session:
        job = session.scalars(sa.select(Job)).one()
        assert job.state == JobState.FAILED and job.error == body["detail"] and job.finished_at is not None
        integration.catch_up(session)
        actions = session.scalars(sa.select(AuditEntry.action).where(AuditEntry.resource == f"job:{job.id}")
                                  .order_by(AuditEntry.seq)).all()
        assert actions == ["job.submit", "job.failed"]
    assert broker_down.broker_url not in _broker_seen  # the next submit asks the broker again


@pytest.mark.redis
def test_retry_queues_a_cancelled_job_again_and_hands_it_to_the_broker(queue_settings, people) -> None:  # type: ignore[no-untyped-def]
    api = TestClient(create_app(queue_settings))
    alice = bearer(people["alice"])
    job = api.post("/api/v1/jobs", json={"kind": "diagnostics", "params": {}}, headers=alice).json()
    assert api.post(f"/api/v1/jobs/{job['id']}/retry", headers=alice).status_code == 409  # still queued
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel", headers=alice).json()["state"] == "cancelled"
    retried = api.post(f"/api/v1/jobs/{job['id']}/retry", headers=alice)
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "queued" and retried.json()["queue_position"] == 0
    with session_scope(queue_settings.database_url) as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.state == JobState.QUEUED
        assert row.dispatched_at is not None  # marked once the broker took it, after the commit
        messages = session.scalars(sa.select(JobEvent.message).where(JobEvent.job_id == job["id"])
                                   .order_by(JobEvent.id)).all()
    assert messages[-1] == "queued again by retry"


def test_finetune_upload_refuses_hostile_files_and_stores_nothing(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    alice = bearer(people["alice"])
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    cases = {
        "../../etc/passwd.png": "is not allowed",
        ".hidden.png": "is not allowed",
        "notes.exe": "is not an image file",
    }
    for name, message in cases.items():
        refused = api.post("/api/v1/finetune", headers=alice, data={"model": "any", "instance_prompt": "a sks mug"},
                           files=[("images", (name, png, "image/png"))])
        assert refused.status_code == 422 and message in refused.json()["detail"], (name, refused.text)
    mismatched = api.post("/api/v1/finetune", headers=alice, data={"model": "any", "captions": ["a", "b"]},
                          files=[("images", ("a.png", png, "image/png"))])
    assert mismatched.status_code == 422 and mismatched.json()["detail"].startswith("captions:")
    bad_params = api.post("/api/v1/finetune", headers=alice, data={"model": "any", "params": "{steps: 5"},
                          files=[("images", ("a.png", png, "image/png"))])
    assert bad_params.status_code == 422 and bad_params.json()["detail"].startswith("params: not valid JSON")
    no_files = api.post("/api/v1/finetune", headers=alice, data={"model": "any"})
    assert no_files.status_code == 422
    uploads = settings_env.home / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert _count(settings_env.database_url, Job) == 0


def test_a_started_server_keeps_its_startup_heap_out_of_the_collector(settings_env) -> None:  # type: ignore[no-untyped-def]
    """The lifespan loads the policy engine's libraries and freezes the heap (no 200 ms full collections)."""
    gc.unfreeze()
    try:
        with TestClient(create_app(settings_env)) as client:  # entering runs the lifespan
            assert gc.get_freeze_count() > 10_000
            assert "regopy" in sys.modules and "torch" in sys.modules
            assert client.get("/login").status_code == 200
    finally:
        gc.unfreeze()


FIRST_REQUESTS = """
import gc, json, sys
from fastapi.testclient import TestClient
from latentops.platform.api.app import create_app

headers = {"Authorization": "Bearer " + sys.argv[1]}
with TestClient(create_app()) as client:  # the lifespan settles the heap
    before = set(sys.modules)
    codes = [client.post("/api/v1/jobs", json={"kind": kind, "params": {}}, headers=headers).status_code
             for kind in ("diagnostics", "finetune")] + [client.get("/api/v1/jobs", headers=headers).status_code]
gc.collect()
routing = sum(type(item).__name__ in ("Dependant", "ModelField") for item in gc.get_objects())  # outside the frozen heap
print(json.dumps({"codes": codes, "imported": sorted(set(sys.modules) - before), "routing": routing}))
"""


@pytest.mark.redis
def test_a_started_servers_frozen_heap_holds_what_submits_import(queue_settings, people) -> None:  # type: ignore[no-untyped-def]
    """Whatever the first requests import or set up after the heap is frozen, every full collection
    walks (30-50 ms pauses under load): the database driver, the broker's client, each job kind's
    parameter check and the router's set-up are made at startup."""
    run = subprocess.run([sys.executable, "-c", FIRST_REQUESTS, people["alice"]], capture_output=True, text=True,
                         timeout=300, env=os.environ, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["codes"] == [201, 422, 200]  # a job sent to the broker; bad parameters refused by the check
    assert report["imported"] == []
    assert report["routing"] == 0  # the routes' set-up (made by the first routed request) is frozen too


def test_a_started_server_integrates_its_requests_audit_entries_in_the_background(settings_env, people) -> None:  # type: ignore[no-untyped-def]
    """Requests hand their entries to the server's integrator thread; stopping the server places them."""
    slow = settings_env.model_copy(update={"audit_batch_ms": 10_000})
    with TestClient(create_app(slow)) as client:
        created = client.post("/api/v1/tokens", json={"name": "ci", "scopes": ["read"]}, headers=bearer(people["alice"]))
        assert created.status_code == 201
        assert _count(settings_env.database_url, AuditPending) == 1  # answered before its entry was placed
        # A reader of the trail catches up first, so nothing it shows is stale.
        listed = client.get("/api/v1/audit/entries", params={"action": "token.create", "actor": "alice@example.com"},
                            headers=bearer(people["carol"]))
        assert listed.status_code == 200 and len(listed.json()["entries"]) == 1
        second = client.post("/api/v1/tokens", json={"name": "ci2", "scopes": ["read"]}, headers=bearer(people["alice"]))
        assert second.status_code == 201 and _count(settings_env.database_url, AuditPending) == 1
        running = integration.integrator_for(get_engine(settings_env.database_url))
        with TestClient(create_app(slow)) as again:  # a second app on the same database shares the thread
            assert again.get("/login").status_code == 200
        assert running is not None and integration.integrator_for(get_engine(settings_env.database_url)) is running
    assert _count(settings_env.database_url, AuditPending) == 0
    with session_scope(settings_env.database_url) as db:
        names = db.execute(sa.select(AuditEntry.details).where(AuditEntry.action == "token.create",
                                                               AuditEntry.actor == identities.stored_actor(
                                                                   db, "alice@example.com"))
                           .order_by(AuditEntry.seq)).scalars().all()
    assert [json.loads(details)["name"] for details in names] == ["ci", "ci2"]
