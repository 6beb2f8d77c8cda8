"""What the platform produced: images (assets) and synthetic datasets."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin


class Asset(TimestampMixin, Base):
    """One generated image with everything needed to account for it."""

    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))
    lora_adapter_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lora_adapters.id"))
    purpose: Mapped[str] = mapped_column(sa.String(32), default="generation")
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    prompt_ref: Mapped[str] = mapped_column(sa.String(64))  # hash of the prompt; the text is kept encrypted
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    content_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    path: Mapped[str] = mapped_column(sa.String(1000))
    width: Mapped[int] = mapped_column(default=0)
    height: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default="released")  # released | quarantined | rejected
    policy_decision_id: Mapped[int | None] = mapped_column(sa.ForeignKey("policy_decisions.id"))
    screening_result_id: Mapped[int | None] = mapped_column(sa.ForeignKey("screening_results.id"))
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    audit_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    reviewed_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    review_reason: Mapped[str | None] = mapped_column(sa.Text)


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    format: Mapped[str] = mapped_column(sa.String(32), default="imagefolder")
    path: Mapped[str] = mapped_column(sa.String(1000), default="")
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
