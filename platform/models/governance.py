"""What governance records: audit entries and checkpoints, policy decisions, screening results
and the copyright reference index.

``audit_entries`` is append-only: database triggers (see the migrations) reject UPDATE, DELETE
and TRUNCATE, and each entry's hash covers its predecessor's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.platform.models.base import Base, TimestampMixin, utcnow


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


class PolicyDecision(TimestampMixin, Base):
    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.String(100), index=True)
    input_hash: Mapped[str] = mapped_column(sa.String(64))
    input_masked: Mapped[dict[str, Any]] = mapped_column(default=dict)
    allow: Mapped[bool] = mapped_column()
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    rule_ids: Mapped[list[Any]] = mapped_column(default=list)
    revision: Mapped[str] = mapped_column(sa.String(64))
    engine: Mapped[str] = mapped_column(sa.String(16))
    actor: Mapped[str] = mapped_column(sa.String(320), default="")
    audit_seq: Mapped[int | None] = mapped_column(sa.BigInteger)


class ScreeningResult(TimestampMixin, Base):
    __tablename__ = "screening_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    verdict: Mapped[str] = mapped_column(sa.String(16))  # release | quarantine
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    matches: Mapped[list[Any]] = mapped_column(default=list)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    detectors: Mapped[list[Any]] = mapped_column(default=list)
    policy_revision: Mapped[str] = mapped_column(sa.String(64), default="")
    model_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))


class CopyrightReference(TimestampMixin, Base):
    __tablename__ = "copyright_references"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(200), index=True)
    licence: Mapped[str] = mapped_column(sa.String(200))
    title: Mapped[str] = mapped_column(sa.String(400), default="")
    content_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    path: Mapped[str] = mapped_column(sa.String(1000))
    phash: Mapped[str] = mapped_column(sa.String(16), default="")
    phash_mirror: Mapped[str] = mapped_column(sa.String(16), default="")
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
