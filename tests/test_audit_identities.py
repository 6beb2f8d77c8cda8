"""Erasable identities in the audit trail: pseudonyms at rest, query by actor, audited reveals, erasure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import PASSWORD, bearer
from fastapi.testclient import TestClient

from latentops.core.errors import NotFound
from latentops.governance import audit, checkpoints, compliance, erasure, identities, verification
from latentops.governance.tables import PolicyDecision
from latentops.governance.tables.identity import AuditIdentity
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import users as users_service
from latentops.platform.tables import AuditEntry, AuditSubjectKey

PSEUDONYM = re.compile(r"pseudonym:[0-9a-f]{24}")


def _all_text(url: str) -> str:
    """Every column of every row of audit_entries (and the pending table), as one string."""
    with session_scope(url) as db:
        rows = db.execute(sa.text("SELECT * FROM audit_entries")).all()
        rows += db.execute(sa.text("SELECT * FROM audit_pending")).all()
    return "\n".join(str(value) for row in rows for value in row)


def _write(url: str) -> None:
    with session_scope(url) as db:
        audit.record(db, actor="Alice@Example.com", action="job.submit", resource="job:1")
        audit.record(db, actor="worker:gpu-1", action="job.start", resource="job:1")
        audit.record(db, actor="alice@example.com", action="model.grant", resource="model:sdxl",
                     details={"grantee": "user:bob@example.com", "note": ["ask carol@example.com"]})
        audit.record(db, actor="bob@example.com", action="generation.request", resource="job:2",
                     personal={"prompts": ["a portrait of Bob"]}, subject="user:2")


def _verify(url: str, tmp_path: Path) -> verification.Report:
    key = checkpoints.load_or_create_signing_key(tmp_path / "key.pem")
    sink = checkpoints.FileSink(tmp_path / "sink.jsonl")
    with session_scope(url) as db:
        checkpoints.create(db, signing_key=key, sink=sink)
    with session_scope(url) as db:
        return verification.verify(db, public_key=key.public_key(), sink=sink)


def test_rows_hold_pseudonyms_only_and_query_by_actor_finds_them(database_url: str, tmp_path: Path) -> None:
    _write(database_url)
    stored = _all_text(database_url)
    assert "example.com" not in stored.lower() and "Bob" not in stored  # no identity or prompt in clear
    with session_scope(database_url) as db:
        rows = db.execute(sa.select(AuditEntry.actor, AuditEntry.details).order_by(AuditEntry.seq)).all()
        alice, worker, alice_again, bob = (row.actor for row in rows)
        assert PSEUDONYM.fullmatch(alice) and alice == alice_again and worker == "worker:gpu-1" and bob != alice
        # Addresses inside details became the same pseudonyms the actors got.
        grant = json.loads(rows[2].details)
        assert grant["grantee"] == f"user:{bob}" and PSEUDONYM.fullmatch(grant["note"][0].split()[-1])
        found = compliance.query(db, filters=compliance.Filters(actor="alice@EXAMPLE.com")).entries
        assert [e["seq"] for e in found] == [0, 2]
        assert [e["seq"] for e in compliance.query(db, filters=compliance.Filters(actor=alice)).entries] == [0, 2]
        assert compliance.query(db, filters=compliance.Filters(actor="nobody@example.com")).entries == []
        assert [e["seq"] for e in compliance.query(db, filters=compliance.Filters(actor="worker:*")).entries] == [1]
        # Not reversible from the chain: the pseudonym is random, the lookup a keyed hash.
        row = db.execute(sa.select(AuditIdentity).where(AuditIdentity.pseudonym == alice)).scalar_one()
        assert row.lookup != identities.lookup_of("alice@example.com", key=b"k" * 32) and "alice" not in (row.sealed or "")
    assert _verify(database_url, tmp_path).ok


def test_erasure_unlinks_the_identity_shreds_prompts_and_the_chain_verifies(database_url: str, tmp_path: Path) -> None:
    with session_scope(database_url) as db:
        user = users_service.create_user(db, email="erin@example.com", role="submitter", team="design",
                                         password=PASSWORD, actor="system")
        subject = f"user:{user.id}"
    with session_scope(database_url) as db:
        audit.record(db, actor="erin@example.com", action="generation.request", resource="job:7",
                     details={"requested_by": "erin@example.com"}, personal={"prompts": ["erin's garden"]}, subject=subject)
        audit.record(db, actor="frank@example.com", action="job.submit", resource="job:8",
                     personal={"prompts": ["frank's boat"]}, subject="user:999")
    with session_scope(database_url) as db:  # decision records name their actor outside the chain
        for who in ("erin@example.com", "frank@example.com"):
            db.add(PolicyDecision(path="prompt", input_hash="0" * 64, input_masked={}, allow=True, reasons=[],
                                  rule_ids=[], revision="r" * 64, engine="regopy", actor=who))
    with session_scope(database_url) as db:
        before = db.execute(sa.select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq)).all()
        pseudonym = identities.stored_actor(db, "erin@example.com")
        assert pseudonym is not None and PSEUDONYM.fullmatch(pseudonym)
        page = compliance.query(db, filters=compliance.Filters(actor="erin@example.com"), reveal=True)
        erasure.reveal_identities(db, page.entries, actor="dpo@example.com", personal=True)
        assert [e["identity"] for e in page.entries] == ["erin@example.com"]
        assert page.entries[0]["details_revealed"]["requested_by"] == "erin@example.com"
        assert page.entries[0]["details_revealed"]["personal"]["data"] == {"prompts": ["erin's garden"]}

    with session_scope(database_url) as db:
        done = erasure.erase(db, subject=subject, actor="dpo@example.com", reason="request 7 from erin@example.com")
    assert done.keys >= 1 and done.payload_keys == 1 and done.pseudonyms == [pseudonym] and done.decisions == 1
    with session_scope(database_url) as db:
        actors = sorted(db.execute(sa.select(PolicyDecision.actor)).scalars())
    assert actors == sorted(["frank@example.com", pseudonym])  # hers pseudonymised, his untouched

    with session_scope(database_url) as db:
        after = db.execute(sa.select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq)).all()
        assert after[:len(before)] == before  # nothing in the chain changed
        assert identities.reveal(db, [pseudonym]) == {pseudonym: None}
        assert compliance.query(db, filters=compliance.Filters(actor="erin@example.com")).entries == []
        erin = compliance.query(db, filters=compliance.Filters(actor=pseudonym), reveal=True).entries
        assert erin[0]["details_revealed"]["personal"] == {"subject": subject, "erased": True}
        frank = compliance.query(db, filters=compliance.Filters(actor="frank@example.com"), reveal=True).entries
        assert frank[0]["details_revealed"]["personal"]["data"] == {"prompts": ["frank's boat"]}  # others untouched
        row = db.execute(sa.select(AuditIdentity).where(AuditIdentity.pseudonym == pseudonym)).scalar_one()
        assert (row.lookup, row.subject, row.sealed) == (None, None, None) and row.erased_at is not None
        last = db.execute(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        assert last.action == "audit.subject.erase" and last.resource == f"subject:{subject}"
        assert json.loads(last.details)["reason"] == "request 7 from (address removed)"
    assert "erin" not in _all_text(database_url)
    report = _verify(database_url, tmp_path)
    assert report.ok, report.damage

    with session_scope(database_url) as db:  # she comes back: a new pseudonym, nothing links the two
        audit.record(db, actor="erin@example.com", action="job.submit", resource="job:9")
    with session_scope(database_url) as db:
        again = identities.stored_actor(db, "erin@example.com")
        assert again != pseudonym and PSEUDONYM.fullmatch(str(again))


def test_erasing_an_unknown_subject_changes_nothing(database_url: str) -> None:
    _write(database_url)

    def counts() -> tuple[int, ...]:
        with session_scope(database_url) as db:
            return tuple(db.scalar(sa.select(sa.func.count()).select_from(t)) or 0
                         for t in (AuditEntry, AuditSubjectKey, AuditIdentity))

    before = counts()
    for unknown in ("nobody@example.com", "user:4242", "pseudonym:" + "0" * 24):
        with session_scope(database_url) as db, pytest.raises(NotFound, match=re.escape(repr(unknown))):
            erasure.erase(db, subject=unknown, actor="dpo@example.com")
    assert counts() == before


def test_cli_erase_refuses_an_unknown_subject_in_one_line_and_erases_by_address(settings_env, cli) -> None:  # type: ignore[no-untyped-def]
    _write(settings_env.database_url)
    refused = cli("audit", "erase", "nobody@example.com")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "NotFound: subject: the audit trail holds no personal data or identity of 'nobody@example.com'"]
    done = cli("audit", "erase", "bob@example.com", "--reason", "ticket 9")
    assert done.returncode == 0, done.stderr
    assert "1 identity" in done.stdout and "bob" not in done.stdout.split("recorded as")[-1]
    shown = cli("audit", "query", "--reveal", "--json")
    assert shown.returncode == 0, shown.stderr
    page = json.loads(shown.stdout)
    assert [e["identity"] for e in page["entries"][:4]] == ["Alice@Example.com", "worker:gpu-1", "Alice@Example.com", None]
    assert page["entries"][2]["details_revealed"]["note"] == ["ask carol@example.com"]
    with session_scope(settings_env.database_url) as db:
        reveal = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "audit.reveal")).scalar_one()
        assert reveal.actor.startswith("pseudonym:") and json.loads(reveal.details)["seqs"] == list(range(5))


@pytest.fixture
def api(settings_env) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(settings_env))


def test_reveal_over_rest_is_for_compliance_roles_and_audited(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    officer, admin, submitter = bearer(people["carol"]), bearer(people["dave"]), bearer(people["alice"])
    plain = api.get("/api/v1/audit/entries", params={"action": "user.create"}, headers=officer).json()
    assert plain["entries"] and all(e["actor"] == "system" or PSEUDONYM.fullmatch(e["actor"]) for e in plain["entries"])
    assert "identities" not in plain and "example.com" not in json.dumps(plain)

    denied = api.post("/api/v1/audit/entries/reveal", params={"action": "user.create"}, headers=submitter)
    assert denied.status_code == 403 and "audit.reveal" in denied.json()["reasons"][0]
    assert api.get("/api/v1/audit/entries/reveal", headers=officer).status_code == 405  # a read never reveals

    shown = api.post("/api/v1/audit/entries/reveal", params={"action": "auth.*"}, headers=officer)
    assert shown.status_code == 200, shown.text
    assert api.post("/api/v1/audit/entries/reveal", params={"limit": 1}, headers=admin).status_code == 200
    # Query by address works over REST too, and the reveal names who is behind the pseudonym.
    carol = api.post("/api/v1/audit/entries/reveal", params={"actor": "carol@example.com"}, headers=officer).json()
    assert carol["entries"] and {e["identity"] for e in carol["entries"]} == {"carol@example.com"}
    assert carol["identities"] == {carol["entries"][0]["actor"]: "carol@example.com"}

    with session_scope(settings_env.database_url) as db:
        reveals = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "audit.reveal").order_by(AuditEntry.seq)
                             ).scalars().all()
        assert len(reveals) == 3 and reveals[0].actor == carol["entries"][0]["actor"]
        assert json.loads(reveals[2].details)["revealed"] == [carol["entries"][0]["actor"]]
        denials = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "policy.decision",
                                                         AuditEntry.outcome == "deny")).scalars().all()
        assert denials  # the refused reveal is recorded like every access denial
    assert "example.com" not in _all_text(settings_env.database_url)


def _login(client: TestClient, email: str) -> str:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None
    signed_in = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token.group(1)},
                            follow_redirects=False)
    assert signed_in.status_code in (302, 303), signed_in.text
    page = client.get("/audit")
    assert page.status_code == 200, page.text
    return page.text


def test_portal_shows_pseudonyms_and_reveals_for_officers_with_an_audited_post(people, settings_env) -> None:  # type: ignore[no-untyped-def]
    officer = TestClient(create_app(settings_env))
    page = _login(officer, "carol@example.com")
    table = page.split('aria-label="Audit entries"')[1]
    assert "Reveal identities on this page" in page and "@example.com" not in table and PSEUDONYM.search(table)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    refused = officer.post("/audit/reveal?action=user.create", data={})
    assert refused.status_code == 403  # no CSRF token: nothing revealed
    shown = officer.post("/audit/reveal?actor=carol@example.com&limit=25&order=oldest", data={"csrf_token": csrf.group(1)})
    assert shown.status_code == 200 and "recorded in the audit trail" in shown.text
    assert "carol@example.com" in shown.text.split('aria-label="Audit entries"')[1]

    admin_only = TestClient(create_app(settings_env))
    assert "Reveal identities" in _login(admin_only, "dave@example.com")
    with session_scope(settings_env.database_url) as db:
        reveals = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "audit.reveal")).scalars().all()
    assert len(reveals) == 1 and json.loads(reveals[0].details)["seqs"]
