"""Audit trail: checkpoint heads, per-subject keys, append-only checkpoints, application-role grants.

* ``audit_checkpoints`` gains ``head_hash`` (the hash of entry ``tree_size - 1``, part of the signed
  statement) and ``frontier`` (the tree's compact range, so the next checkpoint only hashes new
  entries).
* ``audit_subject_keys``: one AES-256-GCM key per data subject for personal data inside audit
  details. Erasure sets ``key`` to NULL (crypto-shredding); it is the only audit table with UPDATE.
* ``audit_checkpoints`` becomes append-only like ``audit_entries`` (triggers on both backends).
* PostgreSQL: the role ``latentops_app`` (NOLOGIN, created when the migrating user may) gets
  INSERT and SELECT only on ``audit_entries`` and ``audit_checkpoints``, SELECT/INSERT/UPDATE on
  ``audit_subject_keys`` and ordinary DML on every other table (also on tables later migrations
  create, through default privileges). Operators make the application log in as a member of it:
  ``CREATE ROLE latentops_api LOGIN PASSWORD '...' IN ROLE latentops_app;`` and keep the owner
  (the role that runs migrations) for migrations only. See docs/audit.md.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "latentops_app"
APPEND_ONLY_TABLES = ("audit_entries", "audit_checkpoints")


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("head_hash", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("frontier", sa.Text(), server_default="[]", nullable=False))

    op.create_table(
        "audit_subject_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=400), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_subject_keys")),
    )
    with op.batch_alter_table("audit_subject_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_subject_keys_subject"), ["subject"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        _postgres_checkpoints_append_only()
        _postgres_grants()
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_checkpoints_no_{operation.lower()} BEFORE {operation} ON audit_checkpoints "
                f"BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only: {operation} rejected'); END"
            )


def _postgres_checkpoints_append_only() -> None:
    op.execute(
        """
        CREATE FUNCTION latentops_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON audit_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION latentops_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION latentops_append_only()"
    )


def _postgres_grants() -> None:
    # Roles are cluster-wide: create it once, tolerate a concurrent creator, and carry on without
    # it (with a notice) when the migrating user may not create roles.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                BEGIN
                    CREATE ROLE {APP_ROLE} NOLOGIN;
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;
                    WHEN insufficient_privilege THEN
                        RAISE NOTICE 'role {APP_ROLE} not created (no CREATEROLE); grants skipped';
                END;
            END IF;
        END $$;
        """
    )
    tables = ", ".join(APPEND_ONLY_TABLES)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                GRANT USAGE ON SCHEMA public TO {APP_ROLE};
                GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE};
                GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
                ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE};
                ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE};
                REVOKE ALL ON {tables}, audit_subject_keys, alembic_version FROM {APP_ROLE};
                REVOKE ALL ON {tables} FROM PUBLIC;
                GRANT SELECT, INSERT ON {tables} TO {APP_ROLE};
                GRANT SELECT, INSERT, UPDATE ON audit_subject_keys TO {APP_ROLE};
                GRANT SELECT ON alembic_version TO {APP_ROLE};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE};
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE};
                    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE};
                    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE};
                    REVOKE ALL ON SCHEMA public FROM {APP_ROLE};
                END IF;
            END $$;
            """
        )
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update_delete ON audit_checkpoints")
        op.execute("DROP FUNCTION IF EXISTS latentops_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete")

    with op.batch_alter_table("audit_subject_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_subject_keys_subject"))
    op.drop_table("audit_subject_keys")
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("frontier")
        batch_op.drop_column("head_hash")
