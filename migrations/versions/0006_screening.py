"""Screening: what was screened, and licence grants for protected works.

``screening_results.kind`` says whether the image was a generated output or a training upload
and ``screening_results.source`` names the file or asset, so compliance can tell results apart.
``copyright_licences`` records that a team may use the works of a rights holder (``owner``) or
one reference image; the copyright policy lets matches covered by an active grant pass. Grants
are revoked by setting ``revoked_at``, never deleted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("screening_results") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=32), nullable=False, server_default="output"))
        batch.add_column(sa.Column("source", sa.String(length=400), nullable=False, server_default=""))
    op.create_table(
        "copyright_licences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("reference_id", sa.Integer(), nullable=True),
        sa.Column("granted_by", sa.String(length=320), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_copyright_licences_team_id_teams")),
        sa.ForeignKeyConstraint(["reference_id"], ["copyright_references.id"],
                                name=op.f("fk_copyright_licences_reference_id_copyright_references")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_copyright_licences")),
    )
    with op.batch_alter_table("copyright_licences") as batch:
        batch.create_index(batch.f("ix_copyright_licences_team_id"), ["team_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("copyright_licences") as batch:
        batch.drop_index(batch.f("ix_copyright_licences_team_id"))
    op.drop_table("copyright_licences")
    with op.batch_alter_table("screening_results") as batch:
        batch.drop_column("source")
        batch.drop_column("kind")
