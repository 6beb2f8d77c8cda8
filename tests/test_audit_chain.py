"""The audit chain in the database: append-only through the application's connection, gapless under
concurrent writers, bad input refused, and canonical hashing as RFC 8785 defines it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import rfc8785
import sqlalchemy as sa

from latentops.core.errors import InvalidInput
from latentops.governance import audit, checkpoints, identities, verification
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditCheckpoint, AuditEntry, AuditPending

REPO = Path(__file__).resolve().parents[1]


def _append(url: str, count: int, **overrides: object) -> None:
    for index in range(count):
        with session_scope(url) as db:
            fields: dict = {"actor": "alice@example.com", "action": "job.submit", "resource": f"job:{index}",
                            "details": {"index": index}}
            fields.update(overrides)
            audit.record(db, **fields)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_entries SET outcome = 'failure' WHERE seq = 1",
    "UPDATE audit_entries SET seq = seq + 100",
    "DELETE FROM audit_entries WHERE seq = 2",
    "DELETE FROM audit_entries",
    "UPDATE audit_checkpoints SET tree_size = 1",
    "DELETE FROM audit_checkpoints",
])
def test_mutation_of_audit_tables_fails_through_the_application_connection(database_url: str, tmp_path: Path,
                                                                           statement: str) -> None:
    _append(database_url, 3)
    with session_scope(database_url) as db:
        checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(tmp_path / "k.pem"),
                           sink=checkpoints.FileSink(tmp_path / "sink.jsonl"))

    with pytest.raises(sa.exc.DBAPIError, match="append-only"), session_scope(database_url) as db:
        db.execute(sa.text(statement))

    with session_scope(database_url) as db:
        rows = db.execute(sa.select(AuditEntry.seq, AuditEntry.outcome).order_by(AuditEntry.seq)).all()
        assert rows == [(0, "success"), (1, "success"), (2, "success")]
        assert db.execute(sa.select(sa.func.count()).select_from(AuditCheckpoint)).scalar_one() == 1


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["audit_entries", "audit_checkpoints", "audit_tree_nodes"])
def test_truncate_fails_on_postgresql(postgres_url: str, table: str) -> None:
    _append(postgres_url, 2)
    with pytest.raises(sa.exc.DBAPIError, match="append-only: TRUNCATE rejected"), session_scope(postgres_url) as db:
        # CASCADE: also what would take the tables that refer to it (cosignatures of checkpoints).
        db.execute(sa.text(f"TRUNCATE {table} CASCADE"))
    with session_scope(postgres_url) as db:
        assert db.execute(sa.select(sa.func.count()).select_from(AuditEntry)).scalar_one() == 2


@pytest.mark.postgres
def test_application_role_may_insert_and_select_audit_entries_but_not_change_them(postgres_url: str) -> None:
    """The migration grants latentops_app INSERT/SELECT only: a login role in it appends but cannot rewrite."""
    login = f"latentops_api_{uuid.uuid4().hex[:8]}"
    owner = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {login} LOGIN IN ROLE latentops_app"))
    app_url = sa.engine.make_url(postgres_url).set(username=login).render_as_string(hide_password=False)
    try:
        _append(app_url, 2)  # the application's own writes work through the role
        for statement in ("UPDATE audit_entries SET outcome = 'x'", "DELETE FROM audit_entries",
                          "TRUNCATE audit_entries", "UPDATE audit_checkpoints SET tree_size = 0",
                          "UPDATE audit_tree_nodes SET hash = ''", "DELETE FROM audit_tree_nodes"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), session_scope(app_url) as db:
                db.execute(sa.text(statement))
        with session_scope(app_url) as db:
            assert [e.seq for e in db.execute(sa.select(AuditEntry)).scalars()] == [0, 1]
    finally:
        from latentops.platform.database import dispose_all

        dispose_all()
        with owner.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {login}"))
        owner.dispose()


@pytest.mark.parametrize(("fields", "message"), [
    ({"action": "x" * 65}, "action: at most 64 characters"),
    ({"actor": ""}, "actor: must be a non-empty string"),
    ({"details": {"when": object()}}, "details: not representable"),
    ({"details": {"sealed": "x"}}, "details: the key 'sealed' is reserved"),
    ({"personal": {"email": "a@b.c"}}, "subject: required"),
])
def test_bad_input_is_refused_and_nothing_is_stored(database_url: str, fields: dict, message: str) -> None:
    _append(database_url, 1)
    with pytest.raises(InvalidInput, match=message), session_scope(database_url) as db:
        audit.record(db, **{"actor": "a", "action": "job.submit", "resource": "job:1", **fields})
    with session_scope(database_url) as db:
        assert db.execute(sa.select(sa.func.count()).select_from(AuditEntry)).scalar_one() == 1


def test_entry_and_its_change_roll_back_together(database_url: str) -> None:
    with pytest.raises(RuntimeError), session_scope(database_url) as db:
        audit.record(db, actor="a", action="team.create", resource="team:1")
        raise RuntimeError("the change failed after its entry was written")
    _append(database_url, 2)  # the writer's cached head must not remember the rolled-back entry
    with session_scope(database_url) as db:
        assert audit.verify_chain(db) == (2, None)


def test_several_entries_in_one_transaction_chain_in_order(database_url: str) -> None:
    with session_scope(database_url) as db:
        first = audit.record(db, actor="a", action="user.create", resource="user:1")
        second = audit.record(db, actor="a", action="membership.add", resource="user:1")
        assert (first.seq, second.seq, second.prev_hash) == (0, 1, first.hash)
    with session_scope(database_url) as db:
        assert audit.verify_chain(db) == (2, None)


@pytest.mark.parametrize("text", ["plain", "quote \" backslash \\ slash /", "tab\tnew\nline\r\x00\x1f\x7f",
                                  "é ü ß 漢字 😀 \u2028\u2029", "", "{\"json\": [1, 2.5, true]}"])
def test_entry_hash_is_sha256_over_prev_hash_and_rfc8785(text: str) -> None:
    payload = {"seq": 12, "at": "2026-01-01T00:00:00.000000Z", "actor": text or "a", "action": "x.y",
               "resource": text, "outcome": "success", "details": json.dumps({"t": text}), "prev_hash": "ab" * 32}
    import hashlib

    expected = hashlib.sha256(bytes.fromhex(payload["prev_hash"]) + rfc8785.dumps(payload)).hexdigest()
    assert audit.entry_hash(payload) == expected


WRITER = textwrap.dedent("""
    import sys, time
    from latentops.governance import audit, integration
    from latentops.platform.database import session_scope
    url, name, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.005)
    records = []
    for index in range(count):
        with session_scope(url) as db:
            records.append(audit.record(db, actor=name, action="job.submit", resource=f"job:{index}", details={"i": index}))
    integration.wait(records)  # each append is durable at its commit; its seq is assigned in a batch
    seqs = [record.seq for record in records]
    assert seqs == sorted(seqs), "one writer's entries keep their order in the chain"
    print(" ".join(map(str, seqs)))
""")


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_processes_append_sixteen_thousand_gapless_verifying_entries(postgres_url: str, tmp_path: Path) -> None:
    writers, each = 8, 2000
    start = time.time() + 4  # every writer imports first, then all start together
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, postgres_url, f"writer-{n}", str(each), str(start)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n in range(writers)]
    returned: list[int] = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        returned += [int(seq) for seq in stdout.split()]

    with session_scope(postgres_url) as db:
        # Nothing left pending: whoever held the chain lock integrated what writers committed meanwhile.
        assert db.execute(sa.select(sa.func.count()).select_from(AuditPending)).scalar_one() == 0
        seqs = db.execute(sa.select(AuditEntry.seq).order_by(AuditEntry.seq)).scalars().all()
        per_writer = dict(db.execute(sa.select(AuditEntry.actor, sa.func.count()).group_by(AuditEntry.actor)).all())
        names = identities.reveal(db, per_writer)  # actors are stored as pseudonyms
        per_writer = {names[actor]: count for actor, count in per_writer.items()}
        report = verification.verify(db, public_key=None)
    assert seqs == list(range(writers * each))
    assert sorted(returned) == seqs  # every writer learnt its own entries' seqs, none shared
    assert per_writer == {f"writer-{n}": each for n in range(writers)}
    assert report.ok and report.entries == writers * each, report.damage
