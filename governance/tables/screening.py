"""Screening results, the copyright reference index and licence grants for protected works."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin


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
    kind: Mapped[str] = mapped_column(sa.String(32), default="output")  # output | training_upload
    source: Mapped[str] = mapped_column(sa.String(400), default="")  # file name or asset reference


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



class CopyrightLicence(TimestampMixin, Base):
    """A team may use the works of ``owner`` (or one reference): the policy lets its matches pass."""

    __tablename__ = "copyright_licences"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    owner: Mapped[str] = mapped_column(sa.String(200))
    reference_id: Mapped[int | None] = mapped_column(sa.ForeignKey("copyright_references.id"))
    granted_by: Mapped[str] = mapped_column(sa.String(320), default="")
    note: Mapped[str] = mapped_column(sa.Text, default="")
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
