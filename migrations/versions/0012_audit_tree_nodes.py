"""Stored Merkle nodes of the audit tree, so that proofs read O(log n) rows.

* ``audit_tree_nodes (level, idx, hash)``: the hash of the perfect subtree of ``2**level`` leaves
  starting at leaf ``idx * 2**level``, for level 8 (256 leaves) and up. The checkpoint writer adds
  the nodes its tree completes (``governance/merkle_store.py``); the first checkpoint after this
  migration fills in the nodes of the existing entries. Until then, proofs fall back on the leaves.
* Append-only like the chain (triggers on both backends: UPDATE and DELETE, and on PostgreSQL
  TRUNCATE, are rejected). The nodes are derived data: a proof is always checked against the
  signed checkpoint root before it is served, and ``audit verify`` recomputes every node.
* PostgreSQL grants: ``latentops_app`` gets SELECT and INSERT.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

APP_ROLE = "latentops_app"


def upgrade() -> None:
    op.create_table(
        "audit_tree_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_audit_tree_nodes")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # latentops_append_only() comes from migration 0002.
        op.execute("CREATE TRIGGER audit_tree_nodes_no_update_delete BEFORE UPDATE OR DELETE ON audit_tree_nodes "
                   "FOR EACH ROW EXECUTE FUNCTION latentops_append_only()")
        op.execute("CREATE TRIGGER audit_tree_nodes_no_truncate BEFORE TRUNCATE ON audit_tree_nodes "
                   "FOR EACH STATEMENT EXECUTE FUNCTION latentops_append_only()")
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    REVOKE ALL ON audit_tree_nodes FROM {APP_ROLE};
                    REVOKE ALL ON audit_tree_nodes FROM PUBLIC;
                    GRANT SELECT, INSERT ON audit_tree_nodes TO {APP_ROLE};
                END IF;
            END $$;
            """
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_tree_nodes_no_{operation.lower()} BEFORE {operation} ON audit_tree_nodes "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_tree_nodes is append-only: {operation} rejected'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_truncate ON audit_tree_nodes")
        op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_update_delete ON audit_tree_nodes")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_delete")
    op.drop_table("audit_tree_nodes")
