"""Policy: data edits made through the product.

* ``policy_data_edits``: one row per edit of policy data (a dotted ``key`` such as
  ``prompt.max_length`` and its new JSON ``value``, wrapped as ``{"value": ...}``), with who made
  it and the bundle ``revision`` it produced. The effective policy data is the bundle's data files
  with these edits applied in ``id`` order. (``policy_decisions`` exists since 0001.)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_data_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_data_edits")),
    )


def downgrade() -> None:
    op.drop_table("policy_data_edits")
