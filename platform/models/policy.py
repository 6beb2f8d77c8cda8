"""Recorded policy decisions: every decision the policy engine makes is kept."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from latentops.platform.models.base import Base, TimestampMixin
from sqlalchemy.orm import Mapped, mapped_column


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

