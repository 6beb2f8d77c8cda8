"""Submitting a job: the broker check, the jobs policy's admission, the row, the broker hand-off.

:func:`submit` writes the job, its first event and its audit entry in the caller's transaction and
registers the hand-off to the broker to run once that commits (``database.after_commit``): a
worker never hears of a job that is not durable. The sweeper and the executor hand ids to the
broker again through :func:`dispatch`.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, ServiceUnavailable
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform import metrics as ops_metrics
from latentops.platform.database import after_commit, session_scope
from latentops.platform.services.jobs.kinds import JOB_KINDS, load_function
from latentops.platform.tables import Job, JobEvent, JobState, Team, User, utcnow

# A broker that answered this recently is not asked again before a submit: the ping only spares
# the user a job row that fails at once, and a broker lost inside the window still fails the job
# loudly at dispatch. Pinging on every submit cost a new broker connection per request.
BROKER_PING_TTL_S = 2.0
_broker_seen: dict[str, float] = {}


def dispatch(settings: Settings, job: Job, *, countdown: float | None = None, mark: bool = True) -> None:
    """Hand the job id to the broker. Call only after the job's transaction committed.

    ``mark`` records the time in ``dispatched_at``, from which the sweeper counts before it sends a
    still-queued job again. A new job needs no mark (the sweeper counts from ``created_at`` until
    there is one), nor does one the sweeper has just claimed by setting it.
    """
    from latentops.platform.queue.app import celery_app

    try:
        celery_app().send_task(
            "latentops.run_job", args=[job.id], queue=job.queue, priority=broker_priority(settings, job.priority),
            countdown=countdown,
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as error:  # noqa: BLE001 - kombu raises several unrelated connection errors
        raise ServiceUnavailable(f"broker unreachable at {settings.broker_url}: {error}") from None
    if mark:
        with session_scope(settings.database_url) as session:
            session.execute(sa.update(Job).where(Job.id == job.id).values(dispatched_at=utcnow()))


def broker_priority(settings: Settings, priority: int) -> int:
    """Our priority (higher runs first, 0-9) in the broker's terms: Redis serves 0 first, AMQP 9."""
    clipped = max(0, min(9, priority))
    return clipped if settings.broker_url.startswith("amqp") else 9 - clipped


def ping_broker(settings: Settings, *, timeout: float = 3.0) -> None:
    """Raise ``ServiceUnavailable`` if the broker does not answer (an answer spares the next
    :func:`submit` within ``BROKER_PING_TTL_S`` its own ping)."""
    from latentops.platform.queue.app import celery_app

    try:
        with celery_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - kombu raises several unrelated connection errors
        raise ServiceUnavailable(f"broker unreachable at {settings.broker_url}: {error}") from None
    _broker_seen[settings.broker_url] = time.monotonic()


WAITING_STATES = (JobState.QUEUED, JobState.RETRYING)


def usage(session: Session, team_id: int | None) -> dict[str, float]:
    """A team's use of the queue, as the jobs policy sees it: jobs waiting and GPU-hours so far."""
    if team_id is None:
        return {"queued_jobs": 0, "gpu_hours": 0.0}
    waiting = session.scalar(sa.select(sa.func.count(Job.id)).where(Job.team_id == team_id, Job.state.in_(WAITING_STATES)))
    # A fine-tune in N processes holds N GPUs (or N CPU processes) for its wall time. The count is
    # read in the database: the job's whole parameters need not travel for one number.
    processes = sa.func.coalesce(Job.params[("config", "processes")].as_integer(), 1)
    spans = session.execute(sa.select(Job.started_at, Job.finished_at, processes).where(
        Job.team_id == team_id, Job.queue == "gpu", Job.started_at.is_not(None))).all()
    now = utcnow()
    seconds = sum(((_utc(end) if end else now) - _utc(start)).total_seconds() * count for start, end, count in spans)
    return {"queued_jobs": int(waiting or 0), "gpu_hours": round(seconds / 3600.0, 4)}


def admit(session: Session, *, actor: audit.Actor | str, team: Team, priority: int | None,
          subject: dict[str, Any] | None = None) -> int:
    """Ask the jobs policy whether ``actor`` may queue a job for ``team``; returns its priority.

    The policy decides the priority (the role's default when none is asked for, never above the
    role's maximum: admins' jobs go first) and the team's queue quota; a deny raises ``PolicyDenied``.
    ``subject`` is the actor's policy subject when the caller already holds it (an API request's
    principal); otherwise it is read for the decision.
    """
    from latentops.governance import policy

    document = {"action": "queue", "team": team.name, "priority": priority, "usage": usage(session, team.id)}
    if subject is not None:
        document["subject"] = subject
    decision = policy.require("jobs", document, session=session, actor=actor)
    return int(decision.obligations.get("priority", 0))


def submit(session: Session, settings: Settings, *, kind: str, params: dict[str, Any], actor: audit.Actor | str,
           owner: User | None = None, team: Team | None = None, priority: int | None = None,
           subject: dict[str, Any] | None = None, admitted: bool = False) -> Job:
    """Write a queued job in the caller's transaction; once that commits, the job goes to the broker.

    The broker is checked first, so that a job is not written only to fail at once. A job for a
    team is admitted by the jobs policy, which also sets its priority, unless ``admitted``: the
    kind's own policy decision (a fine-tune's, a dataset's) already did, and ``priority`` is the one
    it set. A job without a team (the console's own) gets ``priority`` or 0. ``subject``: see
    :func:`admit`. The row, its first event and its audit entry are written with whatever else
    the caller's transaction holds (an API request's: the reads that authenticated it).

    After the commit the job is handed to the broker; if the broker is unreachable then, the job is
    marked failed in a transaction of its own and ``ServiceUnavailable`` raised to the caller.
    """
    _check_broker(settings)
    if team is not None and not admitted:
        priority = admit(session, actor=actor, team=team, priority=priority, subject=subject)
    job = _write(session, kind=kind, params=params, actor=actor, owner=owner, team_id=team.id if team else None,
                 priority=priority or 0)
    after_commit(session, lambda: _send(settings, job, actor=actor))
    return job


def _check_broker(settings: Settings) -> None:
    """:func:`ping_broker`, unless the broker answered within ``BROKER_PING_TTL_S``."""
    if time.monotonic() - _broker_seen.get(settings.broker_url, -BROKER_PING_TTL_S) >= BROKER_PING_TTL_S:
        ping_broker(settings)


def _write(session: Session, *, kind: str, params: dict[str, Any], actor: audit.Actor | str, owner: User | None,
           team_id: int | None, priority: int) -> Job:
    """The queued job, its first event and its audit entry, in the caller's transaction."""
    if kind not in JOB_KINDS:
        raise InvalidInput(f"kind: unknown job kind {kind!r}; known: {', '.join(sorted(JOB_KINDS))}")
    validator = JOB_KINDS[kind].validator
    if validator:
        load_function(validator)(params)  # raises InvalidInput naming the field
    job = Job(kind=kind, queue=JOB_KINDS[kind].queue, params=params, owner_id=owner.id if owner else None,
              team_id=team_id, priority=priority)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, kind="state", message="queued"))
    audit.record(session, actor=actor, action="job.submit", resource=f"job:{job.id}", details={"kind": kind, "queue": job.queue})
    return job


def _send(settings: Settings, job: Job, *, actor: audit.Actor | str) -> None:
    """Hand a committed new job to the broker; if the broker is unreachable the job is marked
    failed (in a transaction of its own) and ``ServiceUnavailable`` raised."""
    try:
        dispatch(settings, job, mark=False)
    except ServiceUnavailable as error:
        _broker_seen.pop(settings.broker_url, None)
        with session_scope(settings.database_url) as session:
            _finish_unleased(session, job.id, JobState.FAILED, error=error.detail, actor=actor)
        raise
    ops_metrics.job_submitted(kind=job.kind, queue=job.queue)


# --- shared with the executor and the sweeper ----------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _finish_unleased(session: Session, job_id: int, state: JobState, *, error: str | None, actor: audit.Actor | str) -> None:
    session.execute(sa.update(Job).where(Job.id == job_id).values(state=state, error=error, finished_at=utcnow()))
    session.add(JobEvent(job_id=job_id, kind="state", message=state.value + (f": {error}" if error else "")))
    audit.record(session, actor=actor, action=f"job.{state.value}", resource=f"job:{job_id}", outcome=_outcome(state),
                 details={"error": error} if error else {})


def _outcome(state: JobState) -> str:
    return {JobState.SUCCEEDED: "success", JobState.CANCELLED: "cancelled"}.get(state, "failure")
