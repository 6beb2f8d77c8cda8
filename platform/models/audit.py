"""The audit trail's tables: hash-chained entries and signed checkpoints.

``audit_entries`` is append-only: database triggers (see the migrations) reject UPDATE, DELETE
and TRUNCATE, and each entry's hash covers its predecessor's.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from latentops.platform.models.base import Base, utcnow
from sqlalchemy.orm import Mapped, mapped_column


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    # Gapless, from 0, assigned by the audit writer under the database's write lock.
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(320), index=True)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    resource: Mapped[str] = mapped_column(sa.String(400), index=True)
    outcome: Mapped[str] = mapped_column(sa.String(16), index=True)
    details: Mapped[str] = mapped_column(sa.Text)  # canonical JSON (RFC 8785)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class AuditCheckpoint(Base):
    """A signed statement of the tree: size, root hash, time."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    tree_size: Mapped[int] = mapped_column(sa.BigInteger)
    root_hash: Mapped[str] = mapped_column(sa.String(64))
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    key_id: Mapped[str] = mapped_column(sa.String(64))
    signature: Mapped[str] = mapped_column(sa.String(200))

