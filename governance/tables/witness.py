"""Witnesses of the audit log and the cosignatures they return (C2SP tlog-witness).

``audit_cosignatures`` keeps every cosignature a configured witness returned for a checkpoint: its
signature line exactly as the witness sent it (``— name base64(keyhash || timestamp || sig)``), so
the checkpoint's note can be rebuilt with it for exports and auditors. A row is written only after
the cosignature verified with the witness key the deployment is configured with.

``audit_witness_status`` is one row per witness (its vkey name and key hash): the outcome of the
latest submission, for ``audit verify``, the health report and the metrics. It is bookkeeping, not
evidence, and is updated in place.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, utcnow


class AuditCosignature(Base):
    __tablename__ = "audit_cosignatures"
    __table_args__ = (sa.UniqueConstraint("checkpoint_id", "witness", "key_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(sa.ForeignKey("audit_checkpoints.id"), index=True)
    witness: Mapped[str] = mapped_column(sa.String(200))  # the witness's key name
    key_hash: Mapped[str] = mapped_column(sa.String(8))  # hex, cosignature/v1 key hash
    tree_size: Mapped[int] = mapped_column(sa.BigInteger)
    timestamp: Mapped[int] = mapped_column(sa.BigInteger)  # the cosignature's own POSIX time
    line: Mapped[str] = mapped_column(sa.String(400))  # the signature line, without its newline
    received_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class AuditWitnessStatus(Base):
    __tablename__ = "audit_witness_status"

    witness: Mapped[str] = mapped_column(sa.String(220), primary_key=True)  # name+keyhash
    url: Mapped[str] = mapped_column(sa.String(500))
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_success_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    cosigned_size: Mapped[int | None] = mapped_column(sa.BigInteger)  # the largest tree it cosigned for us
    last_status: Mapped[int | None] = mapped_column(sa.Integer)  # HTTP status, 0 when unreachable
    last_error: Mapped[str | None] = mapped_column(sa.Text)
