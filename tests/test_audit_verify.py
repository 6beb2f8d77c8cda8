"""``latentops audit verify`` finds every kind of damage, names the first bad seq and exits non-zero;
the writer refuses to extend a chain whose head no longer matches the last checkpoint.

Damage is done the way an attacker with database superuser rights would: around the append-only
triggers (PostgreSQL ``session_replication_role = replica``; SQLite: drop, edit, recreate).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from latentops.core.errors import IntegrityViolation
from latentops.core.settings import Settings
from latentops.governance import audit, checkpoints, verification
from latentops.platform.database import session_scope


def tamper(url: str, *statements: str) -> None:
    """Run SQL with the append-only triggers out of the way, as a database superuser could."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connection = sqlite3.connect(parsed.database)
        triggers = connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _sql in triggers:
            connection.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            connection.execute(statement)
        for _name, sql in triggers:
            connection.execute(sql)
        connection.commit()
        connection.close()
        return
    with psycopg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                         dbname=parsed.database) as connection:
        connection.execute("SET session_replication_role = replica")
        for statement in statements:
            connection.execute(statement)


def append(url: str, count: int) -> None:
    for index in range(count):
        with session_scope(url) as db:
            audit.record(db, actor=f"user{index % 3}@example.com", action="job.submit", resource=f"job:{index}",
                         details={"index": index})


def checkpoint(settings: Settings) -> None:
    with session_scope(settings.database_url) as db:
        checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(checkpoints.default_key_path(settings)),
                           sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)))


@pytest.fixture
def trail(settings_env: Settings) -> Settings:
    """Ten entries with checkpoints at 4 and 8."""
    append(settings_env.database_url, 4)
    checkpoint(settings_env)
    append(settings_env.database_url, 4)
    checkpoint(settings_env)
    append(settings_env.database_url, 2)
    return settings_env


def _rehash_from(url: str, seq: int, change: str) -> list[str]:
    """SQL that rewrites entry ``seq`` and re-hashes the chain after it: the attack checkpoints catch."""
    with session_scope(url) as db:
        rows = [dict(audit.entry_payload(r), hash=r.hash) for r in db.execute(sa.select(*audit.ENTRY_COLUMNS)
                                                                                .order_by(audit.AuditEntry.seq))]
    statements, prev = [], rows[seq]["prev_hash"]
    for row in rows[seq:]:
        payload = {k: v for k, v in row.items() if k != "hash"}
        if row["seq"] == seq:
            payload["outcome"] = change
        payload["prev_hash"] = prev
        prev = audit.entry_hash(payload)
        statements.append(f"UPDATE audit_entries SET outcome = '{payload['outcome']}', prev_hash = '{payload['prev_hash']}', "
                          f"hash = '{prev}' WHERE seq = {row['seq']}")
    return statements


def test_intact_trail_verifies_with_counts(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "audit trail intact: 10 entries, 2 checkpoints (2 in the sink) verified; tree size 10" in " ".join(result.stdout.split())


DAMAGE = {
    "modified": (["UPDATE audit_entries SET details = '{\"index\":99}' WHERE seq = 5"], "modified at seq 5"),
    # The first two hex digits become different ones whatever they were ("ab" alone would change nothing
    # one time in 256).
    "hash replaced": ([("UPDATE audit_entries SET hash = CASE WHEN substr(hash, 1, 2) = 'ab' THEN 'cd' ELSE 'ab' END "
                        "|| substr(hash, 3) WHERE seq = 3")], "modified at seq 3"),
    "deleted": (["DELETE FROM audit_entries WHERE seq = 6"], "deleted at seq 6"),
    "reordered": (["UPDATE audit_entries SET seq = -1 WHERE seq = 2", "UPDATE audit_entries SET seq = 2 WHERE seq = 3",
                   "UPDATE audit_entries SET seq = 3 WHERE seq = -1"], "reordered at seq 2"),
    "tail truncated": (["DELETE FROM audit_entries WHERE seq >= 6"], "truncated at seq 6"),
    "tail and checkpoints truncated": (["DELETE FROM audit_entries WHERE seq >= 6",
                                        "DELETE FROM audit_checkpoints WHERE tree_size > 6"], "truncated at seq 6"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_verify_names_the_kind_and_first_bad_seq(trail: Settings, cli, kind: str) -> None:  # type: ignore[no-untyped-def]
    statements, expected = DAMAGE[kind]
    tamper(trail.database_url, *statements)
    result = cli("audit", "verify")
    assert result.returncode != 0
    assert f"IntegrityViolation: audit trail damaged: {expected}" in " ".join(result.stderr.split()), result.stderr


def test_verify_finds_a_rewrite_that_rehashed_the_chain(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    tamper(trail.database_url, *_rehash_from(trail.database_url, 5, "failure"))
    with session_scope(trail.database_url) as db:
        assert audit.verify_chain(db) == (10, None)  # the chain alone no longer shows it
    result = cli("audit", "verify")
    assert result.returncode != 0
    assert "modified at seq 4: the entries 4..7 do not give the root signed by" in " ".join(result.stderr.split())


def test_verify_reports_a_forged_checkpoint(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    key = checkpoints.load_signing_key(checkpoints.default_key_path(trail))
    forged_signature = base64.b64encode(b"\x00" * 64).decode()
    tamper(trail.database_url, "INSERT INTO audit_checkpoints (tree_size, root_hash, at, key_id, signature, head_hash, "
           f"frontier) VALUES (10, '{'11' * 32}', '2026-01-01 00:00:00', '{checkpoints.key_id(key.public_key())}', "
           f"'{forged_signature}', '{'22' * 32}', '[]')")
    result = cli("audit", "verify")
    assert result.returncode != 0
    assert "forged_checkpoint: database checkpoint 3 (tree size 10): the signature does not verify" in " ".join(result.stderr.split())


def test_verify_with_a_wrong_or_missing_public_key_fails_clearly(trail: Settings, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pem"
    other.write_text(checkpoints.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    result = cli("audit", "verify", "--public-key", str(other))
    assert result.returncode != 0 and "InvalidInput: public key: wrong key" in result.stderr

    result = cli("audit", "verify", "--public-key", str(tmp_path / "absent.pem"))
    assert result.returncode != 0 and "public key file not found" in result.stderr

    checkpoints.default_key_path(trail).unlink()
    checkpoints.keyring_path(checkpoints.default_key_path(trail)).unlink()
    result = cli("audit", "verify")
    assert result.returncode != 0 and "no public key was given" in result.stderr


def test_verify_records_its_own_outcome(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("audit", "verify").returncode == 0
    with session_scope(trail.database_url) as db:
        last = db.execute(sa.select(audit.AuditEntry).order_by(audit.AuditEntry.seq.desc()).limit(1)).scalar_one()
    assert (last.action, last.outcome, json.loads(last.details)["entries"]) == ("audit.verify", "success", 10)


def test_writer_refuses_to_append_after_the_tail_was_truncated(trail: Settings) -> None:
    tamper(trail.database_url, "DELETE FROM audit_entries WHERE seq >= 7")
    for fresh_process in (False, True):
        if fresh_process:
            audit.forget_verified_heads()  # as a newly started worker: anchored on the checkpoint
        with pytest.raises(IntegrityViolation, match=r"truncated at seq 7"), session_scope(trail.database_url) as db:
            audit.record(db, actor="a", action="job.submit", resource="job:x")
    with session_scope(trail.database_url) as db:
        assert audit.verify_chain(db) == (7, None)  # nothing was appended to the damaged chain


def test_writer_refuses_to_append_after_an_entry_since_the_checkpoint_changed(trail: Settings) -> None:
    audit.forget_verified_heads()
    tamper(trail.database_url, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 8")
    with pytest.raises(IntegrityViolation, match=r"modified at seq 8"), session_scope(trail.database_url) as db:
        audit.record(db, actor="a", action="job.submit", resource="job:x")


def test_checkpoint_refuses_to_sign_when_the_sink_knows_more_entries(trail: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    tamper(trail.database_url, "DELETE FROM audit_entries WHERE seq >= 6", "DELETE FROM audit_checkpoints WHERE tree_size = 8")
    audit.forget_verified_heads()
    result = cli("audit", "checkpoint")
    assert result.returncode != 0
    assert "truncated at seq 6" in " ".join(result.stderr.split())


def test_library_report_counts_entries_and_checkpoints_in_database_and_sink(trail: Settings) -> None:
    with session_scope(trail.database_url) as db:
        report = verification.verify(db, public_key=checkpoints.load_signing_key(
            checkpoints.default_key_path(trail)).public_key(), sink=checkpoints.open_sink(checkpoints.default_sink_location(trail)))
    assert report.ok and (report.entries, report.checkpoints, report.sink_checkpoints) == (10, 2, 2)
