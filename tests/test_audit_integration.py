"""Pending audit entries and their integration into the chain: durable with their change, given
gapless seqs in batches, never lost or altered on the way, never left behind; and signing-key
rotation with a keyring that keeps old checkpoints verifiable, in the database and offline."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from latentops.core.errors import IntegrityViolation, NotFound
from latentops.core.settings import Settings, get_settings
from latentops.governance import (
    audit,
    audit_mac,
    checkpoints,
    compliance,
    integration,
    placement,
    verification,
)
from latentops.platform.database import dispose_all, get_engine, session_scope
from latentops.platform.tables import AuditEntry, AuditPending

VERIFIER = Path(__file__).resolve().parents[1] / "governance" / "verifier" / "latentops_audit_verify.py"


def _pending(url: str) -> int:
    with session_scope(url) as db:
        return int(db.execute(sa.select(sa.func.count()).select_from(AuditPending)).scalar_one())


def _write_pending_as_a_crashed_writer(url: str, count: int) -> None:
    """Committed pending rows that nobody integrated: a writer that died right after its commit."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for index in range(count):
            values = {"at": audit.utcnow(), "actor": "worker:gone", "action": "job.finish", "resource": f"job:{index}",
                      "outcome": "success", "details": "{}"}
            connection.execute(sa.insert(AuditPending).values(**values, mac=audit_mac.seal(values)))
    engine.dispose()


# --- integration -------------------------------------------------------------------------------


def test_committed_entry_gets_its_seq_and_leaves_nothing_pending(database_url: str) -> None:
    with session_scope(database_url) as db:
        first = audit.record(db, actor="a", action="team.create", resource="team:1", details={"n": 1})
        assert first.id > 0 and not first.integrated
    with session_scope(database_url) as db:
        second = audit.record(db, actor="a", action="team.create", resource="team:2")
    assert (first.seq, second.seq, second.prev_hash) == (0, 1, first.hash)
    assert _pending(database_url) == 0
    with session_scope(database_url) as db:
        stored = db.execute(sa.select(AuditEntry.seq, AuditEntry.pending_id).order_by(AuditEntry.seq)).all()
    assert stored == [(0, first.id), (1, second.id)]


def test_a_rolled_back_integration_gives_the_same_seqs_again(database_url: str) -> None:
    _write_pending_as_a_crashed_writer(database_url, 2)
    with pytest.raises(RuntimeError), session_scope(database_url) as db:
        mine = audit.record(db, actor="a", action="x.y", resource="r:1")
        assert mine.seq == 2  # read inside the transaction: sequenced now, after the two pending
        raise RuntimeError("the change failed")
    with pytest.raises(NotFound, match="rolled back"):
        _ = mine.seq
    # The rolled-back move left the others' entries pending, and the lock holder, once it let go,
    # integrated them again: seqs 0 and 1, and 2 is free for the next entry.
    assert _pending(database_url) == 0
    with session_scope(database_url) as db:
        again = audit.record(db, actor="a", action="x.y", resource="r:2")
    assert again.seq == 2
    with session_scope(database_url) as db:
        assert audit.verify_chain(db) == (3, None)


def test_a_savepoint_rollback_drops_its_entry_only(database_url: str) -> None:
    with session_scope(database_url) as db:
        kept = audit.record(db, actor="a", action="x.y", resource="r:kept")
        savepoint = db.begin_nested()
        dropped = audit.record(db, actor="a", action="x.y", resource="r:dropped")
        savepoint.rollback()
    assert kept.seq == 0
    with pytest.raises(NotFound, match="rolled back"):
        _ = dropped.seq
    with session_scope(database_url) as db:
        assert db.execute(sa.select(AuditEntry.resource)).scalars().all() == ["r:kept"]


def test_entries_left_pending_by_a_dead_writer_are_integrated_before_anyone_reads(settings_env: Settings, cli) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    _write_pending_as_a_crashed_writer(url, 3)
    with session_scope(url) as db:
        page = compliance.query(db, filters=compliance.Filters(actor="worker:gone"))
    assert [entry["seq"] for entry in page.entries] == [0, 1, 2]

    _write_pending_as_a_crashed_writer(url, 2)
    result = cli("audit", "integrate")
    assert result.returncode == 0 and "integrated 2 pending entries" in result.stdout, result.stderr

    _write_pending_as_a_crashed_writer(url, 1)
    result = cli("audit", "verify", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["entries"], report["pending"]) == (6, 0)
    assert _pending(url) == 0


def test_pending_entries_wait_while_the_chain_is_damaged_and_verify_counts_them(settings_env: Settings) -> None:
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="a", action="x.y", resource="r:1")
    with session_scope(url) as db:
        checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(checkpoints.default_key_path(settings_env)),
                           sink=checkpoints.open_sink(checkpoints.default_sink_location(settings_env)))
    from test_audit_verify import tamper  # the superuser's way around the triggers

    tamper(url, "DELETE FROM audit_entries WHERE seq = 0")
    audit.forget_verified_heads()
    _write_pending_as_a_crashed_writer(url, 2)
    with pytest.raises(IntegrityViolation, match="truncated at seq 0"), session_scope(url) as db:
        integration.integrate_all(db)
    with session_scope(url) as db:
        report = verification.verify(db, keyring=checkpoints.signing_keyring(checkpoints.default_key_path(settings_env)))
    assert not report.ok and report.pending == 2 and report.damage[0].kind == "truncated"
    assert any("pending entries not integrated" in warning for warning in report.warnings)


# --- an API process's integrator thread ---------------------------------------------------------


def _wait_until(condition, timeout_s: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_integrator_takes_commits_over_and_places_a_window_of_them_in_one_batch(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    integrator = integration.Integrator(get_engine(database_url), delay_s=3.0).start()
    try:
        with caplog.at_level(logging.DEBUG, logger=placement.__name__):
            records = []
            for index in range(5):
                with session_scope(database_url) as db:
                    records.append(audit.record(db, actor="a", action="x.y", resource=f"r:{index}"))
            # Each commit returned with its entry durable and handed over, not integrated by itself.
            assert _pending(database_url) == 5 and not any(record.integrated for record in records)
            assert _wait_until(lambda: all(record.integrated for record in records))
        assert [record.seq for record in records] == [0, 1, 2, 3, 4]
        batches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("integrated ")]
        assert batches == ["integrated 5 audit entries up to seq 4"]
    finally:
        integrator.stop()
    assert _pending(database_url) == 0
    with session_scope(database_url) as db:
        assert audit.verify_chain(db) == (5, None)


def test_stopping_an_integrator_integrates_what_it_holds_and_commits_integrate_in_place_again(database_url: str) -> None:
    integrator = integration.Integrator(get_engine(database_url), delay_s=600.0).start()
    assert integration.integrator_for(get_engine(database_url)) is integrator
    with pytest.raises(RuntimeError, match="already runs"):
        integration.Integrator(get_engine(database_url)).start()
    held = []
    for index in range(3):
        with session_scope(database_url) as db:
            held.append(audit.record(db, actor="a", action="x.y", resource=f"r:{index}"))
    assert _pending(database_url) == 3
    integrator.stop()
    assert integration.integrator_for(get_engine(database_url)) is None
    assert _pending(database_url) == 0 and [record.seq for record in held] == [0, 1, 2]
    with session_scope(database_url) as db:
        after = audit.record(db, actor="a", action="x.y", resource="r:after")
    assert after.integrated and after.seq == 3  # placed by its own commit: nobody to hand it to


def test_an_integrator_picks_up_what_writers_elsewhere_left_pending(database_url: str) -> None:
    integrator = integration.Integrator(get_engine(database_url), interval_s=0.2).start()
    try:
        _write_pending_as_a_crashed_writer(database_url, 2)
        assert _wait_until(lambda: _pending(database_url) == 0)
    finally:
        integrator.stop()
    with session_scope(database_url) as db:
        assert audit.verify_chain(db) == (2, None)


# --- the pending table's protection ------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE audit_pending SET actor = 'mallory'",
    "DELETE FROM audit_pending",
])
def test_a_pending_entry_can_be_neither_changed_nor_dropped(database_url: str, statement: str) -> None:
    _write_pending_as_a_crashed_writer(database_url, 1)
    with pytest.raises(sa.exc.DBAPIError, match="audit_pending"), session_scope(database_url) as db:
        db.execute(sa.text(statement))
    assert _pending(database_url) == 1


def test_a_pending_entry_cannot_be_moved_with_other_content(database_url: str) -> None:
    """Deleting a pending row needs an entry carrying its id *and* its content: a forged move fails."""
    _write_pending_as_a_crashed_writer(database_url, 1)
    with session_scope(database_url) as db:
        row = db.execute(sa.select(AuditPending)).scalar_one()
        payload = {"seq": 0, "at": audit.format_time(row.at), "actor": "someone-else", "action": row.action,
                   "resource": row.resource, "outcome": row.outcome, "details": row.details, "prev_hash": audit.GENESIS_HASH}
        pending_id, at = row.id, row.at
    with pytest.raises(sa.exc.DBAPIError, match="integrated"), session_scope(database_url) as db:
        db.execute(sa.insert(AuditEntry).values(**{**payload, "at": at}, hash=audit.entry_hash(payload), pending_id=pending_id))
        db.execute(sa.delete(AuditPending).where(AuditPending.id == pending_id))
    assert _pending(database_url) == 1


@pytest.mark.postgres
def test_truncate_of_pending_entries_fails_on_postgresql(postgres_url: str) -> None:
    _write_pending_as_a_crashed_writer(postgres_url, 1)
    with pytest.raises(sa.exc.DBAPIError, match="append-only: TRUNCATE rejected"), session_scope(postgres_url) as db:
        db.execute(sa.text("TRUNCATE audit_pending"))
    assert _pending(postgres_url) == 1


@pytest.mark.postgres
def test_application_role_writes_and_integrates_but_cannot_change_pending_entries(postgres_url: str) -> None:
    login = f"latentops_api_{uuid.uuid4().hex[:8]}"
    owner = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {login} LOGIN IN ROLE latentops_app"))
    app_url = sa.engine.make_url(postgres_url).set(username=login).render_as_string(hide_password=False)
    try:
        with session_scope(app_url) as db:
            entry = audit.record(db, actor="a", action="x.y", resource="r:1")
        assert entry.seq == 0 and _pending(app_url) == 0  # the move (insert entry, delete pending) is allowed
        _write_pending_as_a_crashed_writer(app_url, 1)
        for statement in ("UPDATE audit_pending SET actor = 'x'", "TRUNCATE audit_pending"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), session_scope(app_url) as db:
                db.execute(sa.text(statement))
        with pytest.raises(sa.exc.DBAPIError, match="integrated"), session_scope(app_url) as db:
            db.execute(sa.text("DELETE FROM audit_pending"))
    finally:
        dispose_all()
        with owner.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {login}"))
        owner.dispose()


# --- settings and key rotation -----------------------------------------------------------------


def test_signing_key_and_sink_come_from_the_settings(settings_env: Settings, cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key, sink = tmp_path / "keys" / "audit.pem", tmp_path / "worm" / "statements.jsonl"
    mac_key = tmp_path / "keys" / "pending-mac-key"
    env = {"LATENTOPS_AUDIT_SIGNING_KEY": str(key), "LATENTOPS_AUDIT_SINK": str(sink), "LATENTOPS_AUDIT_MAC_KEY": str(mac_key)}
    monkeypatch.setenv("LATENTOPS_AUDIT_SIGNING_KEY", str(key))
    monkeypatch.setenv("LATENTOPS_AUDIT_MAC_KEY", str(mac_key))
    get_settings.cache_clear()
    assert Settings().audit_signing_key == key and Settings().audit_sink == str(settings_env.home / "audit" / "checkpoints.jsonl")
    with session_scope(settings_env.database_url) as db:
        audit.record(db, actor="a", action="x.y", resource="r:1")
    result = cli("audit", "checkpoint", env=env)
    assert result.returncode == 0, result.stderr
    assert key.exists() and checkpoints.keyring_path(key).exists() and len(sink.read_text().splitlines()) == 1
    assert mac_key.exists()
    assert not (settings_env.home / "audit").exists()  # nothing derived from the home folder
    assert cli("audit", "verify", env=env).returncode == 0


def test_rotated_key_keeps_old_checkpoints_verifiable(settings_env: Settings, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    key_path = checkpoints.default_key_path(settings_env)
    for index in range(3):
        with session_scope(url) as db:
            audit.record(db, actor="a", action="x.y", resource=f"r:{index}")
    assert cli("audit", "checkpoint").returncode == 0
    old_public = tmp_path / "old.pub"
    assert cli("audit", "public-key", "--current", "--out", str(old_public)).returncode == 0

    result = cli("audit", "rotate-key", "--reason", "scheduled")
    assert result.returncode == 0, result.stderr
    assert checkpoints.load_public_key(old_public) != checkpoints.load_signing_key(key_path).public_key()
    with session_scope(url) as db:
        rotation = db.execute(sa.select(AuditEntry).where(AuditEntry.action == "audit.key.rotate")).scalar_one()
        signers = db.execute(sa.text("SELECT key_id, tree_size FROM audit_checkpoints ORDER BY id")).all()
    details = json.loads(rotation.details)
    assert details["reason"] == "scheduled" and details["old_key_id"] == signers[0][0] != details["new_key_id"]
    # Old key: the first checkpoint and the sealing one; new key: the one covering the rotation entry.
    assert [signer for signer, _ in signers] == [details["old_key_id"]] * 2 + [details["new_key_id"]]
    assert signers[-1][1] == rotation.seq + 1

    with session_scope(url) as db:
        audit.record(db, actor="a", action="x.y", resource="r:after")
    assert cli("audit", "checkpoint").returncode == 0  # the new key extends the old key's checkpoints
    result = cli("audit", "verify")
    assert result.returncode == 0 and "4 checkpoints (4 in the sink) verified" in " ".join(result.stdout.split()), result.stderr

    new_only = tmp_path / "new.pub"
    assert cli("audit", "public-key", "--current", "--out", str(new_only)).returncode == 0
    result = cli("audit", "verify", "--public-key", str(new_only))
    assert result.returncode != 0 and "forged_checkpoint" in result.stderr and "not in the keyring" in result.stderr
    assert cli("audit", "verify", "--public-key", str(new_only), "--public-key", str(old_public)).returncode == 0

    # Offline: the export spans both keys; the auditor's keyring file verifies all of it.
    keyring_file = tmp_path / "keyring.pub"
    assert cli("audit", "public-key", "--out", str(keyring_file)).returncode == 0
    assert cli("audit", "export", "--out", str(tmp_path / "audit.jsonl")).returncode == 0
    verify = [sys.executable, "-I", "-S", str(VERIFIER), str(tmp_path / "audit.jsonl"),
              "--checkpoints", settings_env.audit_sink]
    env = {"PATH": os.environ.get("PATH", "")}
    ok = subprocess.run([*verify, "--public-key", str(keyring_file)], capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stderr
    partial = subprocess.run([*verify, "--public-key", str(new_only)], capture_output=True, text=True, env=env, check=False)
    assert partial.returncode == 1 and "key given is wrong" in partial.stderr
