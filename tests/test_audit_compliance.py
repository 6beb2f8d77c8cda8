"""Compliance queries with pagination, and crypto-shredding of personal data that keeps the chain verifying."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from latentops.core.errors import InvalidInput
from latentops.governance import audit, checkpoints, compliance, erasure, verification
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, AuditSubjectKey


def _fill(url: str) -> None:
    for index in range(25):
        with session_scope(url) as db:
            audit.record(db, actor=["alice@example.com", "bob@example.com", "worker:gpu-1"][index % 3],
                         action=["job.submit", "job.start", "policy.decide", "token.create"][index % 4],
                         resource=f"job:{index}", outcome="denied" if index % 5 == 0 else "success")


def _seqs(page: compliance.Page) -> list[int]:
    return [entry["seq"] for entry in page.entries]


def test_query_filters_by_actor_action_resource_outcome_and_time(database_url: str) -> None:
    _fill(database_url)
    with session_scope(database_url) as db:
        everything = compliance.query(db, limit=100).entries
        assert _seqs(compliance.query(db, filters=compliance.Filters(actor="bob@example.com"))) == list(range(1, 25, 3))
        assert _seqs(compliance.query(db, filters=compliance.Filters(action="job.*"))) == [
            s for s in range(25) if s % 4 in (0, 1)]
        assert _seqs(compliance.query(db, filters=compliance.Filters(outcome="denied", action="job.submit"))) == [0, 20]
        assert _seqs(compliance.query(db, filters=compliance.Filters(resource="job:1*"))) == [1] + list(range(10, 20))
        middle = compliance.parse_time(everything[10]["at"], "since")
        later = compliance.parse_time(everything[15]["at"], "until")
        assert _seqs(compliance.query(db, filters=compliance.Filters(since=middle, until=later))) == list(range(10, 15))
        assert compliance.query(db, filters=compliance.Filters(action="job_*")).entries == []  # _ is literal


def test_pages_cover_every_match_once_in_order(database_url: str) -> None:
    _fill(database_url)
    seen, after = [], None
    with session_scope(database_url) as db:
        while True:
            page = compliance.query(db, filters=compliance.Filters(outcome="success"), after=after, limit=7)
            seen += _seqs(page)
            if page.next_after is None:
                break
            after = page.next_after
    assert seen == [s for s in range(25) if s % 5]


@pytest.mark.parametrize(("call", "message"), [
    (lambda db: compliance.query(db, limit=0), "limit: must be between 1 and 1000"),
    (lambda db: compliance.query(db, filters=compliance.Filters(
        since=dt.datetime(2030, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))), "since: "),
    (lambda db: compliance.parse_time("yesterday", "since"), "since: not an ISO 8601 time"),
])
def test_bad_queries_name_the_field(database_url: str, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(database_url) as db, pytest.raises(InvalidInput, match=message):
        call(db)


def test_query_command_prints_json_pages(settings_env, cli) -> None:  # type: ignore[no-untyped-def]
    _fill(settings_env.database_url)
    result = cli("audit", "query", "--actor", "alice@example.com", "--limit", "3", "--json")
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    assert [e["seq"] for e in page["entries"]] == [0, 3, 6] and page["next_after"] == 6


def test_erasure_shreds_personal_data_and_the_chain_still_verifies(database_url: str, tmp_path: Path) -> None:
    key = checkpoints.load_or_create_signing_key(tmp_path / "key.pem")
    sink = checkpoints.FileSink(tmp_path / "sink.jsonl")
    with session_scope(database_url) as db:
        audit.record(db, actor="carol@example.com", action="generate.request", resource="job:1",
                     details={"steps": 20}, personal={"prompt": "a portrait of Carol Example", "email": "carol@example.com"},
                     subject="user:7")
        audit.record(db, actor="dave@example.com", action="generate.request", resource="job:2",
                     personal={"prompt": "a red bicycle"}, subject="user:8")
    with session_scope(database_url) as db:
        checkpoints.create(db, signing_key=key, sink=sink)
    with session_scope(database_url) as db:
        stored = db.execute(sa.select(AuditEntry.details, AuditEntry.hash).order_by(AuditEntry.seq)).all()
        assert "Carol" not in stored[0].details and "carol@" not in stored[0].details  # only ciphertext at rest
        revealed = erasure.reveal(db, stored[0].details)
        assert revealed == {"steps": 20, "personal": {"subject": "user:7", "data": {
            "email": "carol@example.com", "prompt": "a portrait of Carol Example"}}}

    with session_scope(database_url) as db:
        assert erasure.erase_subject(db, subject="user:7", actor="dpo@example.com", reason="request 42") == 1

    with session_scope(database_url) as db:
        after = db.execute(sa.select(AuditEntry.details, AuditEntry.hash).order_by(AuditEntry.seq)).all()
        assert after[:2] == stored  # the entries did not change: their hashes cover the ciphertext
        assert erasure.reveal(db, after[0].details)["personal"] == {"subject": "user:7", "erased": True}
        assert erasure.reveal(db, after[1].details)["personal"]["data"] == {"prompt": "a red bicycle"}
        assert db.execute(sa.select(AuditSubjectKey.key).where(AuditSubjectKey.subject == "user:7")).scalar_one() is None
        last = db.execute(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        assert (last.action, last.resource, json.loads(last.details)) == (
            "audit.subject.erase", "subject:user:7", {"subject": "user:7", "keys_erased": 1, "payload_keys_erased": 1,
                                                      "identities_erased": [], "decisions_pseudonymised": 0,
                                                      "reason": "request 42"})
        report = verification.verify(db, public_key=key.public_key(), sink=sink)
    assert report.ok and report.entries == 3, report.damage

    with session_scope(database_url) as db:  # the subject returns: new data gets a new key
        audit.record(db, actor="carol@example.com", action="generate.request", resource="job:3",
                     personal={"prompt": "a lighthouse"}, subject="user:7")
    with session_scope(database_url) as db:
        page = compliance.query(db, filters=compliance.Filters(action="generate.request"), reveal=True)
        assert [e["details_revealed"]["personal"].get("data") for e in page.entries] == [
            None, {"prompt": "a red bicycle"}, {"prompt": "a lighthouse"}]
