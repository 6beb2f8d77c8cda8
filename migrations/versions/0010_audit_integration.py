"""Audit integration: entries are written pending with their change, then sequenced in batches.

* ``audit_pending``: an entry as ``audit.record`` writes it inside the caller's transaction (time,
  actor, action, resource, outcome, canonical details), without a chain position. Concurrent
  writers therefore take no chain lock and PostgreSQL group-commits them.
* ``audit_entries.pending_id``: the integrator moves pending rows into the chain in batches (seq,
  prev_hash, hash assigned under the chain lock) and keeps the pending id on the entry, so a
  caller's reference resolves to its seq.
* Protection of ``audit_pending`` (both backends, enforced by triggers even for the table owner):
  UPDATE and TRUNCATE are rejected; DELETE is allowed only for a row whose entry already exists in
  ``audit_entries`` with the same pending id and identical content. A delete is therefore always
  the second half of a move into the append-only chain, never the loss of an entry.
* PostgreSQL grants: ``latentops_app`` gets SELECT, INSERT and DELETE on ``audit_pending`` (DELETE
  is needed by the integrator's move and is limited by the trigger above) and the id sequence.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "latentops_app"
CONTENT = ("at", "actor", "action", "resource", "outcome", "details")
MOVED = " AND ".join(f"e.{column} = OLD.{column}" for column in CONTENT)


def upgrade() -> None:
    op.add_column("audit_entries", sa.Column("pending_id", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_audit_entries_pending_id"), "audit_entries", ["pending_id"], unique=True)
    op.create_table(
        "audit_pending",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=400), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_pending")),
        sqlite_autoincrement=True,
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_guard()
        _postgres_grants()
    else:
        _sqlite_guard()


def _postgres_guard() -> None:
    op.execute(
        f"""
        CREATE FUNCTION latentops_audit_pending_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF EXISTS (SELECT 1 FROM audit_entries e WHERE e.pending_id = OLD.id AND {MOVED}) THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'audit_pending: entry % may be deleted only once integrated into audit_entries', OLD.id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RAISE EXCEPTION 'audit_pending is append-only: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER audit_pending_guard BEFORE UPDATE OR DELETE ON audit_pending "
        "FOR EACH ROW EXECUTE FUNCTION latentops_audit_pending_guard()"
    )
    # latentops_append_only() comes from migration 0002.
    op.execute(
        "CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON audit_pending "
        "FOR EACH STATEMENT EXECUTE FUNCTION latentops_append_only()"
    )


def _postgres_grants() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                REVOKE ALL ON audit_pending FROM {APP_ROLE};
                REVOKE ALL ON audit_pending FROM PUBLIC;
                GRANT SELECT, INSERT, DELETE ON audit_pending TO {APP_ROLE};
                GRANT USAGE, SELECT ON SEQUENCE audit_pending_id_seq TO {APP_ROLE};
            END IF;
        END $$;
        """
    )


def _sqlite_guard() -> None:
    op.execute(
        "CREATE TRIGGER audit_pending_no_update BEFORE UPDATE ON audit_pending "
        "BEGIN SELECT RAISE(ABORT, 'audit_pending is append-only: UPDATE rejected'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_pending_no_delete BEFORE DELETE ON audit_pending "
        f"WHEN NOT EXISTS (SELECT 1 FROM audit_entries e WHERE e.pending_id = OLD.id AND {MOVED}) "
        "BEGIN SELECT RAISE(ABORT, 'audit_pending: an entry may be deleted only once integrated into audit_entries'); END"
    )


def downgrade() -> None:
    waiting = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_pending")).scalar_one()
    if waiting:
        raise RuntimeError(f"audit_pending holds {waiting} entries not yet integrated: run `latentops audit integrate` "
                           "before downgrading below 0010")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_pending_no_truncate ON audit_pending")
        op.execute("DROP TRIGGER IF EXISTS audit_pending_guard ON audit_pending")
        op.execute("DROP FUNCTION IF EXISTS latentops_audit_pending_guard()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_pending_no_delete")
        op.execute("DROP TRIGGER IF EXISTS audit_pending_no_update")
    op.drop_table("audit_pending")
    op.drop_index(op.f("ix_audit_entries_pending_id"), table_name="audit_entries")
    op.drop_column("audit_entries", "pending_id")
