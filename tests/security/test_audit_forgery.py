"""Forged and backdated audit rows: a row inserted into ``audit_pending`` with SQL is refused,
alarmed and named by ``audit verify``; so is a backdated one; missing append-only guards are named;
checkpoints are made automatically and ``verify`` reports the entries beyond the last one."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa

from latentops.core.settings import Settings, get_settings
from latentops.governance import audit, audit_mac, checkpoints, identities, integration, verification
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditCheckpoint, AuditEntry, AuditPending


def _insert_pending(url: str, *, at: dt.datetime, mac: str | None, actor: str = "mallory@example.com") -> int:
    """A row written straight into audit_pending with the application role's INSERT right."""
    values = {"at": at, "actor": actor, "action": "model.grant", "resource": "model:7", "outcome": "success",
              "details": "{}"}
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        row_id = connection.execute(sa.insert(AuditPending).values(**values, mac=mac).returning(AuditPending.id)).scalar_one()
    engine.dispose()
    return int(row_id)


def _entries(url: str) -> list[tuple[int, str, str]]:
    """(seq, actor, action) of every entry; people are stored as pseudonyms, shown here as who they are
    (a row inserted with SQL carries whatever its forger wrote)."""
    with session_scope(url) as db:
        rows = db.execute(sa.select(AuditEntry.seq, AuditEntry.actor, AuditEntry.action).order_by(AuditEntry.seq)).all()
        who = identities.reveal(db, [row.actor for row in rows])
        return [(row.seq, who.get(row.actor) or row.actor, row.action) for row in rows]


def _verify(url: str) -> verification.Report:
    settings = get_settings()
    with session_scope(url) as db:
        return verification.verify(db, keyring=checkpoints.signing_keyring(checkpoints.default_key_path(settings)),
                                   sink=checkpoints.open_sink(settings.audit_sink))


def _refused(reason: str) -> float:
    return audit_mac.REFUSED.labels(reason)._value.get()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _fresh_process_memory() -> None:
    audit_mac.forget_refused()


def test_a_row_inserted_with_sql_is_refused_alarmed_and_named_by_verify(settings_env: Settings,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="alice@example.com", action="team.create", resource="team:1")
    before = _refused("forged")
    forged = _insert_pending(url, at=audit.utcnow(), mac=None)
    wrong = _insert_pending(url, at=audit.utcnow(), mac=f"{'00' * 16}:{'11' * 32}")
    with caplog.at_level(logging.ERROR, logger="latentops.governance.audit_mac"), session_scope(url) as db:
        after = audit.record(db, actor="alice@example.com", action="team.create", resource="team:2")
    assert after.seq == 1  # the application's entry is integrated past the refused rows
    assert [actor for _seq, actor, _action in _entries(url)] == ["alice@example.com", "alice@example.com"]
    assert _refused("forged") == before + 2
    alarms = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"pending entry {forged} (forged)" in line for line in alarms), alarms
    with session_scope(url) as db:
        assert db.execute(sa.select(sa.func.count()).select_from(AuditPending)).scalar_one() == 2

    report = _verify(url)
    assert not report.ok
    lines = [damage.line() for damage in report.damage]
    assert any(f"pending entry {forged} (forged)" in line and "mallory@example.com" in line for line in lines), lines
    assert any(f"pending entry {wrong} (forged)" in line for line in lines), lines


def test_a_copy_of_a_real_row_is_refused_as_replayed(settings_env: Settings) -> None:
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="alice@example.com", action="team.create", resource="team:1")
    with session_scope(url) as db:
        real = db.execute(sa.select(AuditEntry)).scalar_one()
        copy = {"at": real.at, "actor": real.actor, "action": real.action, "resource": real.resource,
                "outcome": real.outcome, "details": real.details, "mac": real.mac}
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        copied = connection.execute(sa.insert(AuditPending).values(**copy).returning(AuditPending.id)).scalar_one()
    engine.dispose()
    with session_scope(url) as db:
        integration.catch_up(db)
    assert len(_entries(url)) == 1
    assert any(f"pending entry {copied} (replayed)" in damage.line() for damage in _verify(url).damage)


def test_a_backdated_row_beyond_the_skew_is_refused(settings_env: Settings) -> None:
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="alice@example.com", action="team.create", resource="team:1")
    # Even with the application's key (a valid MAC), an hour back is beyond the allowed skew.
    at = audit.utcnow() - dt.timedelta(hours=1)
    fields = {"at": at, "actor": "alice@example.com", "action": "model.grant", "resource": "model:7",
              "outcome": "success", "details": "{}"}
    backdated = _insert_pending(url, at=at, mac=audit_mac.seal(fields), actor="alice@example.com")
    # Within the skew: integrated.
    near = audit.utcnow() - dt.timedelta(seconds=settings_env.audit_max_skew_s / 2)
    fields_near = {**fields, "at": near}
    _insert_pending(url, at=near, mac=audit_mac.seal(fields_near), actor="alice@example.com")
    with session_scope(url) as db:
        integration.catch_up(db)
    assert [action for _seq, _actor, action in _entries(url)] == ["team.create", "model.grant"]
    lines = [damage.line() for damage in _verify(url).damage]
    assert any(f"pending entry {backdated} (backdated)" in line for line in lines), lines


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite serialises writers: no overlap
def test_an_entry_of_a_long_transaction_is_integrated_after_later_ones(settings_env: Settings) -> None:
    """Time order is write order: a transaction that records an entry and commits long after
    entries written meanwhile (a generation job renders between its decision and its commit) is
    integrated, and verify stays clean; only the chain order differs from the write order."""
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="alice@example.com", action="team.create", resource="team:1")
    with session_scope(url) as long_running:
        early = audit.record(long_running, actor="bob@example.com", action="policy.decision", resource="prompt:1")
        # Meanwhile another process writes and commits an entry stamped well past the skew.
        later = audit.utcnow() + dt.timedelta(seconds=settings_env.audit_max_skew_s * 3)
        fields = {"at": later, "actor": "carol@example.com", "action": "model.grant", "resource": "model:7",
                  "outcome": "success", "details": "{}"}
        _insert_pending(url, at=later, mac=audit_mac.seal(fields), actor="carol@example.com")
        with session_scope(url) as other:
            integration.catch_up(other)
        assert [action for _seq, _actor, action in _entries(url)] == ["team.create", "model.grant"]
    assert early.seq == 2  # after the entry written later, not refused as backdated
    assert [actor for _seq, actor, _action in _entries(url)] == [
        "alice@example.com", "carol@example.com", "bob@example.com"]
    report = _verify(url)
    assert report.ok, [damage.line() for damage in report.damage]


def test_verify_names_a_dropped_append_only_trigger(settings_env: Settings) -> None:
    url = settings_env.database_url
    with session_scope(url) as db:
        audit.record(db, actor="alice@example.com", action="team.create", resource="team:1")
    assert _verify(url).ok
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(sa.text("DROP TRIGGER audit_entries_no_delete"))
            name = "audit_entries_no_delete"
        else:
            connection.execute(sa.text("DROP TRIGGER audit_entries_no_truncate ON audit_entries"))
            name = "audit_entries_no_truncate"
    engine.dispose()
    report = _verify(url)
    assert not report.ok
    assert [d.kind for d in report.damage] == ["guard_missing"]
    assert f"trigger {name} on audit_entries is missing" in report.damage[0].detail


def test_checkpoints_are_made_automatically_and_verify_counts_the_entries_beyond(
        settings_env: Settings, monkeypatch: pytest.MonkeyPatch, cli) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LATENTOPS_AUDIT_CHECKPOINT_ENTRIES", "5")
    get_settings.cache_clear()
    url = settings_env.database_url
    for index in range(5):
        with session_scope(url) as db:
            audit.record(db, actor="alice@example.com", action="team.create", resource=f"team:{index}")
    with session_scope(url) as db:
        sizes = list(db.execute(sa.select(AuditCheckpoint.tree_size)).scalars())
    assert sizes == [5]  # signed by the integrator after the fifth entry, nobody asked
    assert len(checkpoints.open_sink(settings_env.audit_sink).read()) == 1
    for index in range(2):
        with session_scope(url) as db:
            audit.record(db, actor="alice@example.com", action="team.create", resource=f"team:x{index}")
    report = _verify(url)
    assert report.ok and report.entries == 7 and report.beyond_checkpoint == 2
    result = cli("audit", "verify", env={"LATENTOPS_AUDIT_CHECKPOINT_ENTRIES": "5"})
    assert result.returncode == 0, result.stderr
    assert "2 entries beyond the last checkpoint" in result.stdout
