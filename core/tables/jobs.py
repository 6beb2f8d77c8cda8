"""Jobs and their event log. The job row is the source of truth; the broker carries only ids."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin, utcnow


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Job(TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The queued jobs of each queue in run order: queue positions and claims read it (migration 0013).
        sa.Index("ix_jobs_queued_run_order", "queue", sa.column("priority").desc(), "id",
                 postgresql_where=sa.text("state = 'queued'"), sqlite_where=sa.text("state = 'queued'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    queue: Mapped[str] = mapped_column(sa.String(16), default="gpu")
    state: Mapped[JobState] = mapped_column(
        sa.Enum(JobState, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=JobState.QUEUED,
        index=True,
    )
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("teams.id"), index=True)
    priority: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    # Lease: which worker holds the job until when. ``lease_token`` only ever grows (a fencing
    # token): a worker whose token is stale may not write progress or the outcome.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_token: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When the id was last handed to the broker: the sweeper re-dispatches jobs whose message
    # may have been lost, and harmless duplicates are absorbed by the lease.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Why a queued job is not running yet (team at its concurrency limit, ...), shown to users.
    hold_reason: Mapped[str | None] = mapped_column(sa.String(400))
    started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """A line in a job's history: state changes, log lines, warnings."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(16))  # state | log | warning
    message: Mapped[str] = mapped_column(sa.Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
