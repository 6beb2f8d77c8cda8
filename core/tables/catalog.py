"""What can be generated with: base models, their content-addressed versions, LoRA adapters,
and the grants that say who may use, download or manage which weights."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin


class ModelRecord(TimestampMixin, Base):
    """A named base model (``digits-demo``); its weights live in versions."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    family: Mapped[str] = mapped_column(sa.String(16))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    owner_team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    # ABAC attribute read by the models policy (public, internal, restricted, ...).
    sensitivity: Mapped[str] = mapped_column(sa.String(32), default="internal")
    licence: Mapped[str] = mapped_column(sa.String(200), default="")
    removed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class ModelVersion(TimestampMixin, Base):
    """Immutable weights identified by the SHA-256 over their tensors."""

    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("base_models.id"), index=True)
    version: Mapped[int] = mapped_column()
    content_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    path: Mapped[str] = mapped_column(sa.String(1000))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    aliases: Mapped[list[Any]] = mapped_column(default=list)


class LoraAdapter(TimestampMixin, Base):
    __tablename__ = "lora_adapters"
    __table_args__ = (sa.UniqueConstraint("name", "version", name="uq_lora_adapters_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    version: Mapped[int] = mapped_column(default=1)
    base_version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    path: Mapped[str] = mapped_column(sa.String(1000))
    aliases: Mapped[list[Any]] = mapped_column(default=list)
    mlflow_model_uri: Mapped[str | None] = mapped_column(sa.String(500))
    removed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class AccessGrant(TimestampMixin, Base):
    """``action`` (use, download, manage) on a model or adapter, granted to a team or a user."""

    __tablename__ = "access_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(sa.String(16))  # model | lora
    resource_id: Mapped[int] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(sa.String(16))
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    granted_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
