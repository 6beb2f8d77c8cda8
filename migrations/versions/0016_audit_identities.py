"""Erasable actor identities in the audit trail, and retention of personal payloads.

* ``audit_identities``: one row per actor that is not a system actor: the random pseudonym that
  stands for it in ``audit_entries``, the keyed-hash ``lookup`` that finds it from the identity,
  and the identity sealed under the subject's key (``governance/identities.py``). Erasure sets
  ``lookup``, ``subject`` and ``sealed`` to NULL.
* ``audit_payload_keys``: a data key per sealed personal payload, wrapped by the subject's key
  (``governance/payload_keys.py``); retention and erasure set ``wrapped`` to NULL.

Both are mutable like ``audit_subject_keys``: ``latentops_app`` gets SELECT, INSERT and UPDATE,
no DELETE. Entries written before this migration keep their actors in clear (the chain cannot be
rewritten; docs/audit.md says what an operator can do).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

APP_ROLE = "latentops_app"
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_identities",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("lookup", sa.String(length=64), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("sealed", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_identities")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_audit_identities_pseudonym")),
        sa.UniqueConstraint("lookup", name=op.f("uq_audit_identities_lookup")),
    )
    op.create_index(op.f("ix_audit_identities_subject"), "audit_identities", ["subject"])
    op.create_table(
        "audit_payload_keys",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=400), nullable=False),
        sa.Column("subject_key_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shred_reason", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_payload_keys")),
    )
    op.create_index(op.f("ix_audit_payload_keys_subject"), "audit_payload_keys", ["subject"])
    op.create_index(op.f("ix_audit_payload_keys_subject_key_id"), "audit_payload_keys", ["subject_key_id"])
    op.create_index("ix_audit_payload_keys_action_created_at", "audit_payload_keys", ["action", "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    REVOKE ALL ON audit_identities, audit_payload_keys FROM {APP_ROLE};
                    GRANT SELECT, INSERT, UPDATE ON audit_identities, audit_payload_keys TO {APP_ROLE};
                    GRANT USAGE, SELECT ON SEQUENCE audit_identities_id_seq, audit_payload_keys_id_seq TO {APP_ROLE};
                END IF;
            END $$;
            """
        )


def downgrade() -> None:
    op.drop_index("ix_audit_payload_keys_action_created_at", table_name="audit_payload_keys")
    op.drop_index(op.f("ix_audit_payload_keys_subject_key_id"), table_name="audit_payload_keys")
    op.drop_index(op.f("ix_audit_payload_keys_subject"), table_name="audit_payload_keys")
    op.drop_table("audit_payload_keys")
    op.drop_index(op.f("ix_audit_identities_subject"), table_name="audit_identities")
    op.drop_table("audit_identities")
