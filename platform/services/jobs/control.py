"""Reading and controlling jobs: one job, a list, its events, cancel, retry, queue positions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform.database import after_commit
from latentops.platform.services.jobs.submit import dispatch, ping_broker
from latentops.platform.tables import Job, JobEvent, JobState, utcnow


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job: no job with id {job_id}")
    return job


def list_jobs(session: Session, *, state: str | None = None, offset: int = 0, limit: int = 50,
              team_ids: Collection[int] | None = None) -> list[Job]:
    """Newest first; ``team_ids`` limits the list to those teams' jobs (None: every job)."""
    query = sa.select(Job).order_by(Job.id.desc()).offset(offset).limit(limit)
    if state is not None:
        try:
            query = query.where(Job.state == JobState(state))
        except ValueError:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(s.value for s in JobState)}") from None
    if team_ids is not None:
        query = query.where(Job.team_id.in_(list(team_ids)))
    return list(session.scalars(query))


def events(session: Session, job_id: int) -> list[JobEvent]:
    return list(session.scalars(sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def cancel(session: Session, *, job_id: int, actor: audit.Actor | str) -> Job:
    """Request cancellation: a queued job ends at once, a running one at its next step."""
    job = get(session, job_id)
    if job.state.finished:
        raise Conflict(f"job {job_id} already finished ({job.state.value}); nothing to cancel")
    job.cancel_requested = True
    audit.record(session, actor=actor, action="job.cancel", resource=f"job:{job_id}", details={"state": job.state.value})
    if job.state == JobState.QUEUED:
        job.state, job.finished_at = JobState.CANCELLED, utcnow()
        session.add(JobEvent(job_id=job_id, kind="state", message="cancelled before it started"))
    return job


def retry(session: Session, settings: Settings, *, job_id: int, actor: audit.Actor | str) -> Job:
    """Queue a failed or cancelled job again, in the caller's transaction; a queued, running or
    succeeded job is refused. Once the transaction commits the job goes to the broker; if the broker
    is unreachable then, ``ServiceUnavailable`` is raised and the sweeper sends the queued job later."""
    ping_broker(settings)
    job = get(session, job_id)
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise Conflict(f"job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried")
    job.state, job.error, job.cancel_requested, job.finished_at = JobState.QUEUED, None, False, None
    job.max_attempts = job.attempts + max(job.max_attempts - job.attempts, 1)
    session.add(JobEvent(job_id=job_id, kind="state", message="queued again by retry"))
    audit.record(session, actor=actor, action="job.retry", resource=f"job:{job_id}", details={"attempts": job.attempts})
    after_commit(session, lambda: dispatch(settings, job))
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs on the same queue run before this one (0: next), or None if not queued.

    One job's count is a single filtered count; a page of jobs goes through :func:`queue_positions`.
    """
    if job.state != JobState.QUEUED:
        return None
    ahead = sa.or_(Job.priority > job.priority, sa.and_(Job.priority == job.priority, Job.id < job.id))
    count = session.scalar(
        sa.select(sa.func.count(Job.id)).where(Job.queue == job.queue, Job.state == JobState.QUEUED, ahead)
    )
    return int(count or 0)


def queue_positions(session: Session, jobs: Collection[Job]) -> dict[int, int | None]:
    """``queue_position`` of many jobs (a page of a job list) in one query, keyed by job id.

    The queued jobs of the page's queues are numbered once in run order (priority, then age) by a
    window function; counting the jobs ahead of each job separately costs a pass per job.
    """
    positions: dict[int, int | None] = {job.id: None for job in jobs}
    queued = [job for job in jobs if job.state == JobState.QUEUED]
    if queued:
        run_order = sa.func.row_number().over(partition_by=Job.queue, order_by=(Job.priority.desc(), Job.id)) - 1
        ranked = (sa.select(Job.id, run_order.label("position"))
                  .where(Job.state == JobState.QUEUED, Job.queue.in_(sorted({job.queue for job in queued})))
                  .subquery())
        rows = session.execute(sa.select(ranked.c.id, ranked.c.position)
                               .where(ranked.c.id.in_([job.id for job in queued])))
        positions.update({job_id: int(position) for job_id, position in rows})
    return positions


def as_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "queue": job.queue,
        "state": job.state.value,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "owner_id": job.owner_id,
        "team_id": job.team_id,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "hold_reason": job.hold_reason,
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else audit.format_time(value)
