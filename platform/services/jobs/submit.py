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
from latentops.governance.policy_shapes import parse_period
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
        raise _unreachable(settings, error) from None
    if mark:
        with session_scope(settings.database_url) as session:
            session.execute(sa.update(Job).where(Job.id == job.id).values(dispatched_at=utcnow()))


def _unreachable(settings: Settings, error: Exception) -> ServiceUnavailable:
    hint = ("; this machine's broker runs while `latentops up` does (it also starts a worker)"
            if settings.uses_local_broker else "")
    return ServiceUnavailable(f"broker unreachable at {settings.broker_url}: {error}{hint}")


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
        raise _unreachable(settings, error) from None
    _broker_seen[settings.broker_url] = time.monotonic()


WAITING_STATES = (JobState.QUEUED, JobState.RETRYING)


def team_quota(quotas: dict[str, Any], team: str) -> dict[str, Any]:
    """A team's quotas: the default ones with the team's overrides (policy data ``jobs.quotas``)."""
    return {**quotas.get("default", {}), **quotas.get("teams", {}).get(team, {})}


def period_start(period: str | None, now: dt.datetime) -> dt.datetime | None:
    """Where a GPU-hour quota period began: ``calendar_month`` at 00:00 UTC on the 1st,
    ``rolling_days:N`` N days before ``now``; None (no period) counts since the first job."""
    if not period:
        return None
    parsed = parse_period(period)
    if parsed is None:
        raise InvalidInput(f"period: {period!r} must be \"calendar_month\" or \"rolling_days:N\"")
    kind, days = parsed
    if kind == "calendar_month":
        return now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return now - dt.timedelta(days=days)


def _team_period(session: Session, team_id: int) -> str:
    from latentops.governance import policy

    name = session.scalar(sa.select(Team.name).where(Team.id == team_id))
    policy.get_service().refresh(session)
    return str(team_quota(policy.policy_data("jobs.quotas"), name or "").get("period") or "")


def usage(session: Session, team_id: int | None, *, period: str | None = None) -> dict[str, Any]:
    """A team's use of the queue, as the jobs policy sees it: jobs waiting, and GPU-hours in the
    team's quota period (policy data ``jobs.quotas``, ``period``; ``period`` given here overrides it).

    GPU time counts only inside the period: a job that started before it counts from its start.
    """
    if team_id is None:
        return {"queued_jobs": 0, "gpu_hours": 0.0, "period": period or ""}
    if period is None:
        period = _team_period(session, team_id)
    now = utcnow()
    since = period_start(period, now)
    waiting = session.scalar(sa.select(sa.func.count(Job.id)).where(Job.team_id == team_id, Job.state.in_(WAITING_STATES)))
    # A fine-tune in N processes holds N GPUs (or N CPU processes) for its wall time. The count is
    # read in the database: the job's whole parameters need not travel for one number.
    processes = sa.func.coalesce(Job.params[("config", "processes")].as_integer(), 1)
    query = sa.select(Job.started_at, Job.finished_at, processes).where(
        Job.team_id == team_id, Job.queue == "gpu", Job.started_at.is_not(None))
    if since is not None:
        query = query.where(sa.or_(Job.finished_at.is_(None), Job.finished_at > since))
    seconds = 0.0
    for start, end, count in session.execute(query):
        begun = _utc(start) if since is None else max(_utc(start), since)
        seconds += max(0.0, ((_utc(end) if end else now) - begun).total_seconds()) * count
    return {"queued_jobs": int(waiting or 0), "gpu_hours": round(seconds / 3600.0, 4), "period": period}


def quota_report(session: Session, *, teams: list[str] | None = None) -> dict[str, Any]:
    """Per team: its quotas, the GPU-hour period (and when it began) and its use now."""
    from latentops.governance import policy

    policy.get_service().refresh(session)
    quotas = policy.policy_data("jobs.quotas")
    query = sa.select(Team.id, Team.name).order_by(Team.name)
    if teams is not None:
        query = query.where(Team.name.in_(teams))
    now = utcnow()
    rows = []
    for team_id, name in session.execute(query):
        quota = team_quota(quotas, name)
        period = str(quota.get("period") or "")
        since = period_start(period, now)
        used = usage(session, team_id, period=period)
        rows.append({"team": name, "period": period or "all_time", "since": since.isoformat() if since else None,
                     "quota": {key: quota.get(key) for key in ("max_gpu_hours", "max_queued_jobs", "max_concurrent_jobs")},
                     "usage": {"gpu_hours": used["gpu_hours"], "queued_jobs": used["queued_jobs"]},
                     "override": name in quotas.get("teams", {})})
    return {"default": quotas.get("default", {}), "teams": rows, "at": now.isoformat()}


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
