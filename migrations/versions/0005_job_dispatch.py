"""Jobs: when the id was last dispatched to the broker, and why a queued job is held back.

``jobs.dispatched_at`` lets the sweeper re-dispatch jobs whose broker message may be lost;
``jobs.hold_reason`` tells the submitter why a queued job waits (for example a team at its
concurrent-job limit).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("hold_reason", sa.String(length=400), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("hold_reason")
        batch.drop_column("dispatched_at")
