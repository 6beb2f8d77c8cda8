"""Retention of personal payloads: expired ones are shredded alone, the run is audited, the chain verifies."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from latentops.core.errors import InvalidInput
from latentops.governance import audit, checkpoints, compliance, erasure, identities, retention, verification
from latentops.governance.policy_shapes import check_data
from latentops.governance.tables.identity import AuditPayloadKey
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry


def _write(url: str) -> list[int]:
    """Four payloads of user:5: two generation requests (one 100 days old), a job 100 days old, a fresh one."""
    with session_scope(url) as db:
        for resource, action in (("job:1", "generation.request"), ("job:2", "generation.request"),
                                 ("job:3", "job.submit"), ("job:4", "job.submit")):
            audit.record(db, actor="gina@example.com", action=action, resource=resource,
                         personal={"prompts": [f"prompt of {resource}"]}, subject="user:5")
    with session_scope(url) as db:
        keys = list(db.scalars(sa.select(AuditPayloadKey.id).order_by(AuditPayloadKey.id)))
        # Age two payloads: the data-key table is mutable, the chain is not touched.
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
        db.execute(sa.update(AuditPayloadKey).where(AuditPayloadKey.id.in_([keys[0], keys[2]])).values(created_at=old))
    return keys


def _personal(url: str) -> list[dict]:  # type: ignore[type-arg]
    with session_scope(url) as db:
        page = compliance.query(db, filters=compliance.Filters(resource="job:*"), reveal=True)
        return [e["details_revealed"]["personal"] for e in page.entries]


def test_retention_shreds_only_expired_payloads_records_itself_and_the_chain_verifies(database_url: str,
                                                                                   tmp_path: Path) -> None:
    keys = _write(database_url)
    with session_scope(database_url) as db:
        before = db.execute(sa.select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq)).all()
        planned = retention.run(db, dry_run=True)
    assert (planned.by_action, planned.payload_keys) == ({"generation.request": 1}, [keys[0]])
    assert [p.get("data") is not None for p in _personal(database_url)] == [True] * 4  # a dry run changes nothing

    with session_scope(database_url) as db:
        done = retention.run(db)
    assert done.by_action == {"generation.request": 1} and done.payload_keys == [keys[0]]
    shown = _personal(database_url)
    assert shown[0] == {"subject": "user:5", "erased": True, "expired": True}
    # The subject's other payloads (newer, or of an action kept 365 days) and identity stay.
    assert [p.get("data") for p in shown[1:]] == [{"prompts": ["prompt of job:2"]}, {"prompts": ["prompt of job:3"]},
                                                  {"prompts": ["prompt of job:4"]}]
    with session_scope(database_url) as db:
        pseudonym = identities.stored_actor(db, "gina@example.com")
        assert identities.reveal(db, [str(pseudonym)]) == {pseudonym: "gina@example.com"}
        entries = db.execute(sa.select(AuditEntry).order_by(AuditEntry.seq)).scalars().all()
        assert [(e.seq, e.hash) for e in entries[:len(before)]] == before
        record = entries[-1]
        assert (record.actor, record.action, record.resource) == ("system", "audit.retention", "audit:personal")
        details = json.loads(record.details)
        assert (details["shredded"], details["by_action"], details["payload_keys"]) == (1, {"generation.request": 1}, [keys[0]])
        assert details["retention_days"]["generation.request"] == 90
        again = retention.run(db)  # nothing more is due: no second entry
    assert again.shredded == 0
    with session_scope(database_url) as db:
        assert db.scalar(sa.select(sa.func.count()).where(AuditEntry.action == "audit.retention")) == 1

    with session_scope(database_url) as db:  # a year later the default period takes the job too
        later = retention.run(db, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=300))
    assert later.by_action == {"generation.request": 1, "job.submit": 1}

    key = checkpoints.load_or_create_signing_key(tmp_path / "key.pem")
    sink = checkpoints.FileSink(tmp_path / "sink.jsonl")
    with session_scope(database_url) as db:
        checkpoints.create(db, signing_key=key, sink=sink)
    with session_scope(database_url) as db:
        report = verification.verify(db, public_key=key.public_key(), sink=sink)
    assert report.ok, report.damage

    with session_scope(database_url) as db:  # erasure still takes what retention left
        erasure.erase(db, subject="user:5", actor="dpo@example.com")
    assert all(p.get("erased") for p in _personal(database_url))


def test_retention_command_dry_run_then_run(settings_env, cli) -> None:  # type: ignore[no-untyped-def]
    keys = _write(settings_env.database_url)
    dry = cli("audit", "retention", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["payload_keys"] == [keys[0]] and json.loads(dry.stdout)["dry_run"] is True
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(AuditPayloadKey.wrapped).where(AuditPayloadKey.id == keys[0])) is not None
    done = cli("audit", "retention")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shredded 1 personal payload(s) past their retention period (generation.request 1)"
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(AuditPayloadKey.wrapped).where(AuditPayloadKey.id == keys[0])) is None
        run = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "audit.retention")).scalar_one()
        assert run.actor.startswith("pseudonym:")  # the console account, pseudonymised
    assert cli("audit", "verify").returncode == 0


@pytest.mark.parametrize(("value", "message"), [
    ({"generation.request": 90}, "retention_days: must map actions"),
    ({"default": 0}, "retention_days.default: must be a whole number of days from 1 to 36500, got 0"),
    ({"default": 30, "job.submit": "90"}, "retention_days.job.submit: must be a whole number"),
    ({"default": 30, "x" * 65: 10}, "action names must be 1 to 64 characters"),
])
def test_retention_policy_data_is_shape_checked(value: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
        check_data("audit", {"retention_days": value}, "audit/data.json")
