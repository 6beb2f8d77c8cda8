"""Authenticated pending audit rows: ``audit_pending.mac`` and ``audit_entries.mac``.

* ``audit_pending.mac``: ``<nonce>:<HMAC-SHA256>`` made by the application with a key kept outside
  the database (``governance/audit_mac.py``). The application's role may INSERT into
  ``audit_pending``; the integrator now refuses a row without a valid MAC, so a row inserted with
  SQL is no longer integrated as if the application had written it.
* ``audit_entries.mac``: the MAC, kept when the row is integrated (not hashed; unique, so a copied
  row cannot be integrated twice). ``latentops audit verify`` checks it on every entry written
  after this migration, so a row appended to the chain directly, past the integrator, shows too.
  Entries written before it keep NULL.

Rows pending at upgrade time: the upgrade refuses to run while ``audit_pending`` holds any, because
they carry no MAC and would be refused as forged. Stopping the services integrates them (or
``latentops audit integrate`` with the release being replaced); then upgrade.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    waiting = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_pending")).scalar_one()
    if waiting:
        raise RuntimeError(f"audit_pending holds {waiting} entries not yet integrated; they carry no MAC and would be "
                           "refused as forged. Stop the services (they integrate on shutdown) or run `latentops audit "
                           "integrate` with the release being replaced, then upgrade")
    op.add_column("audit_pending", sa.Column("mac", sa.String(length=100), nullable=True))
    op.add_column("audit_entries", sa.Column("mac", sa.String(length=100), nullable=True))
    op.create_index(op.f("ix_audit_entries_mac"), "audit_entries", ["mac"], unique=True)


def downgrade() -> None:
    waiting = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_pending")).scalar_one()
    if waiting:
        raise RuntimeError(f"audit_pending holds {waiting} entries not yet integrated: run `latentops audit integrate` "
                           "before downgrading below 0014")
    op.drop_index(op.f("ix_audit_entries_mac"), table_name="audit_entries")
    # Plain ALTER TABLE (SQLite 3.35+ too): a batch copy of the table would drop its append-only triggers.
    op.execute("ALTER TABLE audit_entries DROP COLUMN mac")
    op.execute("ALTER TABLE audit_pending DROP COLUMN mac")
