"""Policy decisions link to their audit entry by the entry's resource, not by a stored seq.

A decision's audit entry is written with ``resource = 'policy_decision:<id>'`` (indexed). Storing
the entry's seq on the decision row meant sequencing the entry inside the deciding transaction,
which holds the audit chain lock until that transaction ends and so serialised every request that
made a decision. The column goes; ``policy.decision_entry`` finds the entry by its resource.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policy_decisions") as batch:
        batch.drop_column("audit_seq")


def downgrade() -> None:
    with op.batch_alter_table("policy_decisions") as batch:
        batch.add_column(sa.Column("audit_seq", sa.BigInteger(), nullable=True))
    op.execute("UPDATE policy_decisions SET audit_seq = (SELECT e.seq FROM audit_entries e "
               "WHERE e.resource = 'policy_decision:' || policy_decisions.id)")
