"""Screening results and the copyright reference index."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from latentops.platform.models.base import Base, TimestampMixin
from sqlalchemy.orm import Mapped, mapped_column


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

