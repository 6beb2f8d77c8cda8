"""Witness cosignatures of audit checkpoints (C2SP tlog-cosignature).

* ``audit_cosignatures``: each verified cosignature a witness returned for a checkpoint, with its
  signature line as sent, so the checkpoint note can be rebuilt with its cosignatures.
* ``audit_witness_status``: per witness, the outcome of its latest submission (updated in place).

Checkpoints themselves are unchanged: new ones hold a signed-note signature line in
``audit_checkpoints.signature`` instead of bare base64 (both fit its 200 characters).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_cosignatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("witness", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=8), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.String(length=400), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["audit_checkpoints.id"],
                                name=op.f("fk_audit_cosignatures_checkpoint_id_audit_checkpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_cosignatures")),
        sa.UniqueConstraint("checkpoint_id", "witness", "key_hash",
                            name=op.f("uq_audit_cosignatures_checkpoint_id")),
    )
    op.create_index(op.f("ix_audit_cosignatures_checkpoint_id"), "audit_cosignatures", ["checkpoint_id"])
    op.create_table(
        "audit_witness_status",
        sa.Column("witness", sa.String(length=220), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cosigned_size", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("witness", name=op.f("pk_audit_witness_status")),
    )


def downgrade() -> None:
    op.drop_table("audit_witness_status")
    op.drop_index(op.f("ix_audit_cosignatures_checkpoint_id"), table_name="audit_cosignatures")
    op.drop_table("audit_cosignatures")
