"""Recorded policy decisions: every decision the policy engine makes is kept."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin


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
    # Its audit entry is the one with resource "policy_decision:<id>" (see policy.decision_entry).



class PolicyDataEdit(TimestampMixin, Base):
    """An edit of policy data made through the product (``prompt.max_length`` = 1500, ...).

    The effective data is the bundle's data files with these edits applied in ``id`` order; each
    edit therefore yields a new bundle revision, recorded here and in the audit trail.
    """

    __tablename__ = "policy_data_edits"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200))
    value: Mapped[dict[str, Any]] = mapped_column()
    actor: Mapped[str] = mapped_column(sa.String(320), default="")
    note: Mapped[str] = mapped_column(sa.Text, default="")
    revision: Mapped[str] = mapped_column(sa.String(64))
