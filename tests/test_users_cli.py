"""Users and tokens through the real CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from latentops.core.errors import AuthenticationFailed
from latentops.governance import audit
from latentops.platform.database import session_scope
from latentops.platform.services import tokens
from latentops.platform.tables import ApiToken, AuditEntry, Membership, Role, User


def _counts(url: str) -> tuple[int, int]:
    with session_scope(url) as db:
        return db.scalar(sa.select(sa.func.count(User.id))) or 0, db.scalar(sa.select(sa.func.count(AuditEntry.seq))) or 0


def test_create_user_reads_password_from_stdin_and_is_audited(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("users", "create", "--email", "Ada@Example.com", "--role", "data_scientist", "--team", "Vision",
               "--password-stdin", "--json", input="a long enough passphrase\n")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["email"] == "ada@example.com"
    with session_scope(database_url) as db:
        user = db.scalar(sa.select(User).where(User.email == "ada@example.com"))
        assert user is not None and user.password_hash and user.password_hash.startswith("$argon2")
        membership = db.scalar(sa.select(Membership).where(Membership.user_id == user.id))
        assert membership is not None and membership.role == Role.DATA_SCIENTIST
        actions = [e.action for e in db.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))]
        assert actions == ["team.create", "user.create"]
        assert audit.verify_chain(db) == (2, None)


def test_duplicate_email_is_refused_and_nothing_is_written(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("users", "create", "--email", "a@x.io", "--role", "admin", "--team", "ops").returncode == 0
    before = _counts(database_url)
    done = cli("users", "create", "--email", "A@X.io", "--role", "submitter", "--team", "other", "--new-team")
    assert done.returncode == 1
    assert done.stderr.strip() == "Conflict: email: a user with email 'a@x.io' already exists"
    assert "Traceback" not in done.stderr
    assert _counts(database_url) == before


def test_unknown_role_lists_the_valid_roles(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("users", "create", "--email", "b@x.io", "--role", "boss", "--team", "ops")
    assert done.returncode == 1
    assert "valid roles are submitter, data_scientist, compliance_officer, admin" in done.stderr
    assert _counts(database_url) == (0, 0)


def test_short_password_and_bad_email_are_refused(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("users", "create", "--email", "c@x.io", "--role", "admin", "--team", "ops", "--password-stdin", input="short\n")
    assert done.returncode == 1 and "password: must be at least 12 characters" in done.stderr
    done = cli("users", "create", "--email", "not-an-email", "--role", "admin", "--team", "ops")
    assert done.returncode == 1 and "email: 'not-an-email' is not an email address" in done.stderr
    assert _counts(database_url) == (0, 0)


def test_token_is_shown_once_stored_hashed_and_revocable(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("users", "create", "--email", "t@x.io", "--role", "submitter", "--team", "ops").returncode == 0
    done = cli("tokens", "create", "--email", "t@x.io", "--name", "laptop", "--scope", "jobs", "--json")
    assert done.returncode == 0, done.stderr
    issued = json.loads(done.stdout)
    secret = issued["token"]
    with session_scope(database_url) as db:
        row = db.get(ApiToken, issued["id"])
        assert row is not None and secret not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
        user, _ = tokens.authenticate(db, secret)
        assert user.email == "t@x.io"
    assert cli("tokens", "revoke", str(issued["id"])).returncode == 0
    with session_scope(database_url) as db:
        with pytest.raises(AuthenticationFailed, match="revoked"):
            tokens.authenticate(db, secret)
        actions = [e.action for e in db.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))]
        assert actions[-2:] == ["token.create", "token.revoke"]


def test_unreachable_database_prints_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("users", "list", env={"LATENTOPS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ServiceUnavailable: database unreachable at postgresql://nobody@127.0.0.1:1/none")


def test_invalid_setting_prints_one_line_naming_the_variable(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("users", "list", env={"LATENTOPS_POLICY_ENGINE": "magic"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "ConfigurationError: LATENTOPS_POLICY_ENGINE: Input should be 'embedded' or 'opa' (got 'magic')"
    ]


def test_worker_with_unreachable_broker_prints_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("worker", env={"LATENTOPS_BROKER_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ServiceUnavailable: broker unreachable at redis://127.0.0.1:1/0")


def test_an_unknown_team_is_refused_naming_the_teams_unless_new_team_is_asked_for(cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("users", "create", "--email", "first@x.io", "--role", "admin", "--team", "ops").returncode == 0  # founds ops
    before = _counts(database_url)
    typo = cli("users", "create", "--email", "b@x.io", "--role", "submitter", "--team", "opps")
    assert typo.returncode == 1 and "team: no team named 'opps'" in typo.stderr and "ops" in typo.stderr, typo.stderr
    assert _counts(database_url) == before  # nothing written
    created = cli("users", "create", "--email", "b@x.io", "--role", "submitter", "--team", "design", "--new-team", "--json")
    assert created.returncode == 0 and json.loads(created.stdout)["team"] == "design"
