"""Jobs: submit, dispatch, execute under a lease, record the outcome.

The job row is the truth. ``submit`` writes it and its audit entry in one transaction (``enqueue``
writes them in the caller's, an API request's own); only after that commits is the id handed to the
broker (``send``). A worker that receives an id *claims* the job with a
conditional UPDATE that bumps ``lease_token`` (a fencing token): every later write by that worker
names the token it holds, so a worker whose lease was taken over can no longer write progress or
an outcome. A heartbeat thread extends the lease while the handler runs.

Handlers are plain functions ``run(ctx: JobContext) -> dict`` registered by kind in ``JOB_KINDS``
as import strings, so the API never imports torch. A kind's params are built by the server
(``services.job_requests``); its validator checks them when the job is written, and the worker
checks them again, with what ties them to the job, before the handler runs
(``services.job_params.verify``): a job whose stored params were changed fails, naming the field.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, LatentopsError, NotFound, ServiceUnavailable
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform import metrics as ops_metrics  # "metrics" is a progress() argument
from latentops.platform.database import session_scope
from latentops.platform.tables import Job, JobEvent, JobState, Team, User, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    handler: str  # "module:function" run on the worker
    queue: str  # gpu | cpu
    description: str
    validator: str | None = None  # "module:function" checking params at submit time


JOB_KINDS: dict[str, JobKind] = {
    "diagnostics": JobKind(
        "latentops.platform.services.diagnostics:run", "gpu", "checks the worker's accelerator and numerics",
        validator="latentops.platform.services.diagnostics:validate",
    ),
    "finetune": JobKind(
        "latentops.platform.services.finetune:run", "gpu", "LoRA / DreamBooth-LoRA fine-tuning of a base model",
        validator="latentops.platform.services.job_params:validate_finetune",
    ),
    "generate": JobKind("latentops.platform.services.generation:run_job", "gpu", "governed image generation",
                        validator="latentops.platform.services.job_params:validate_generate"),
    "dataset": JobKind("latentops.platform.services.datasets:run_job", "gpu", "synthetic dataset generation",
                       validator="latentops.platform.services.job_params:validate_dataset"),
}
# The validators check params the server built (``services.job_params``); clients send typed
# requests (``services.job_requests``), never params.

PROGRESS_INTERVAL_S = 1.0
# A broker that answered this recently is not asked again before a submit: the ping only spares
# the user a job row that fails at once, and a broker lost inside the window still fails the job
# loudly at dispatch. Pinging on every submit cost a new broker connection per request.
BROKER_PING_TTL_S = 2.0
_broker_seen: dict[str, float] = {}


class JobCancelled(Exception):
    """Raised inside a handler when cancellation was requested; the job ends ``cancelled``."""


class LeaseLost(Exception):
    """This worker's lease was taken over; it must stop without writing anything more."""


# --- submitting -----------------------------------------------------------------------------


def create(
    session: Session,
    *,
    kind: str,
    params: dict[str, Any],
    actor: audit.Actor | str,
    owner: User | None = None,
    team_id: int | None = None,
    priority: int = 0,
) -> Job:
    """Write a queued job and its audit entry in the caller's transaction."""
    if kind not in JOB_KINDS:
        raise InvalidInput(f"kind: unknown job kind {kind!r}; known: {', '.join(sorted(JOB_KINDS))}")
    validator = JOB_KINDS[kind].validator
    if validator:
        load_function(validator)(params)  # raises InvalidInput naming the field
    job = Job(
        kind=kind,
        queue=JOB_KINDS[kind].queue,
        params=params,
        owner_id=owner.id if owner else None,
        team_id=team_id,
        priority=priority,
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, kind="state", message="queued"))
    audit.record(session, actor=actor, action="job.submit", resource=f"job:{job.id}", details={"kind": kind, "queue": job.queue})
    return job


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
    """Raise ``ServiceUnavailable`` if the broker does not answer."""
    from latentops.platform.queue.app import celery_app

    try:
        with celery_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - kombu raises several unrelated connection errors
        raise ServiceUnavailable(f"broker unreachable at {settings.broker_url}: {error}") from None


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


def submit(settings: Settings, *, kind: str, params: dict[str, Any], actor: audit.Actor | str,
           owner_email: str | None = None, team_id: int | None = None, priority: int | None = None,
           subject: dict[str, Any] | None = None) -> int:
    """Create a job and enqueue it, in a transaction of its own: :func:`enqueue`, commit, :func:`send`.

    ``owner_email`` and ``team_id`` name the job's owner and team (each optional).
    """
    with session_scope(settings.database_url) as session:
        owner = None
        if owner_email is not None:
            owner = session.scalar(sa.select(User).where(User.email == owner_email))
            if owner is None:
                raise NotFound(f"owner: no user with email {owner_email!r}")
        team = None
        if team_id is not None:
            team = session.get(Team, team_id)
            if team is None:
                raise NotFound(f"team_id: no team {team_id}")
        job = enqueue(session, settings, kind=kind, params=params, actor=actor, owner=owner, team=team,
                      priority=priority, subject=subject)
    send(settings, job, actor=actor)
    return job.id


def enqueue(session: Session, settings: Settings, *, kind: str, params: dict[str, Any], actor: audit.Actor | str,
            owner: User | None = None, team: Team | None = None, priority: int | None = None,
            subject: dict[str, Any] | None = None) -> Job:
    """Write a queued job in the caller's transaction; after committing it the caller calls :func:`send`.

    The broker is checked first, so that a job is not written only to fail at once. A job for a
    team is admitted by the jobs policy, which also sets its priority; a job without a team (the
    console's own) gets ``priority`` or 0. ``subject``: see :func:`admit`. An API request writes
    its job in the request's own transaction, with the reads that authenticated it.
    """
    if time.monotonic() - _broker_seen.get(settings.broker_url, -BROKER_PING_TTL_S) >= BROKER_PING_TTL_S:
        ping_broker(settings)
        _broker_seen[settings.broker_url] = time.monotonic()
    if team is not None:
        priority = admit(session, actor=actor, team=team, priority=priority, subject=subject)
    return create(session, kind=kind, params=params, actor=actor, owner=owner, team_id=team.id if team else None,
                  priority=priority or 0)


def send(settings: Settings, job: Job, *, actor: audit.Actor | str) -> None:
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


# --- reading and controlling ----------------------------------------------------------------


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


def retry(settings: Settings, *, job_id: int, actor: audit.Actor | str) -> Job:
    """Queue a failed or cancelled job again; a queued, running or succeeded job is refused."""
    ping_broker(settings)
    with session_scope(settings.database_url) as session:
        job = get(session, job_id)
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise Conflict(f"job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried")
        job.state, job.error, job.cancel_requested, job.finished_at = JobState.QUEUED, None, False, None
        job.max_attempts = job.attempts + max(job.max_attempts - job.attempts, 1)
        session.add(JobEvent(job_id=job_id, kind="state", message="queued again by retry"))
        audit.record(session, actor=actor, action="job.retry", resource=f"job:{job_id}", details={"attempts": job.attempts})
    dispatch(settings, job)
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


def sweep(settings: Settings, *, worker: str) -> dict[str, int]:
    """Re-dispatch jobs a crashed worker left behind and queued jobs whose message may be lost.

    A job whose lease expired is set to ``retrying`` (or ``failed`` when out of attempts) and its
    id is sent again; the lease guarantees that duplicates never run twice. Each job is claimed
    for sweeping with a conditional update on ``dispatched_at``, so concurrent sweepers on many
    workers do not all re-send it.
    """
    now = utcnow()
    stale_queued = now - dt.timedelta(seconds=settings.requeue_after_s)
    counts = {"retried": 0, "failed": 0, "requeued": 0}
    actor = f"worker:{worker}"
    to_dispatch: list[Job] = []
    with session_scope(settings.database_url) as session:
        expired = session.scalars(
            sa.select(Job).where(Job.state.in_([JobState.RUNNING, JobState.RETRYING]), Job.lease_expires_at < now)
        ).all()
        for job in expired:
            if job.attempts >= job.max_attempts:
                _finish_unleased(session, job.id, JobState.FAILED, actor=actor,
                                 error=f"worker lost; gave up after {job.attempts} attempts")
                counts["failed"] += 1
                continue
            lost_worker = job.lease_owner  # read first: the update below clears it on the loaded job too
            claimed = session.execute(
                sa.update(Job).where(Job.id == job.id, Job.lease_token == job.lease_token, Job.state == job.state)
                .values(state=JobState.RETRYING, lease_owner=None, lease_expires_at=None, dispatched_at=now)
            )
            if claimed.rowcount == 1:
                session.add(JobEvent(job_id=job.id, kind="warning",
                                     message=f"lease of {lost_worker} expired; dispatched again"))
                audit.record(session, actor=actor, action="job.requeue", resource=f"job:{job.id}",
                             details={"attempts": job.attempts, "lost_worker": lost_worker})
                to_dispatch.append(job)
                counts["retried"] += 1
        lost = session.scalars(
            sa.select(Job).where(Job.state == JobState.QUEUED, sa.func.coalesce(Job.dispatched_at, Job.created_at) < stale_queued)
        ).all()
        for job in lost:
            claimed = session.execute(
                sa.update(Job).where(Job.id == job.id, Job.state == JobState.QUEUED,
                                     Job.dispatched_at.is_(None) if job.dispatched_at is None else Job.dispatched_at == job.dispatched_at)
                .values(dispatched_at=now)
            )
            if claimed.rowcount == 1:
                to_dispatch.append(job)
                counts["requeued"] += 1
    for job in to_dispatch:
        dispatch(settings, job, mark=False)  # claimed above with dispatched_at = now
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


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


# --- executing ------------------------------------------------------------------------------


class JobContext:
    """What a handler sees: its parameters, a work folder, progress, logging and cancellation."""

    def __init__(self, settings: Settings, job: Job, token: int, worker: str) -> None:
        self.settings = settings
        self.job_id = job.id
        self.kind = job.kind
        self.params = dict(job.params)
        self.attempt = job.attempts
        self.token = token
        self.worker = worker
        self.workdir: Path = settings.jobs_dir / str(job.id)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._first_step: int | None = None

    def _guarded_update(self, session: Session, **values: Any) -> None:
        result = session.execute(
            sa.update(Job).where(Job.id == self.job_id, Job.lease_token == self.token).values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"job {self.job_id}: lease token {self.token} is no longer current")

    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Record progress; written at most about once a second (and always at the last step)."""
        now = time.monotonic()
        if self._first_step is None:
            self._first_step, self._started = step, now
        if now - self._last_progress < PROGRESS_INTERVAL_S and step < total:
            return
        self._last_progress = now
        done = step - self._first_step
        rate = done / (now - self._started) if done > 0 and now > self._started else 0.0
        eta = (total - step) / rate if rate > 0 else None
        ops_metrics.training_rate(kind=self.kind, steps_per_second=rate)
        payload = {"step": step, "total": total, "percent": round(100.0 * step / max(total, 1), 1),
                   "eta_s": None if eta is None else round(eta, 1), **{k: float(v) for k, v in metrics.items()}}
        with session_scope(self.settings.database_url) as session:
            self._guarded_update(session, progress=payload, heartbeat_at=utcnow())

    def log(self, message: str, *, kind: str = "log") -> None:
        with session_scope(self.settings.database_url) as session:
            session.add(JobEvent(job_id=self.job_id, kind=kind, message=message))

    def check_cancelled(self) -> None:
        with session_scope(self.settings.database_url) as session:
            if session.scalar(sa.select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise JobCancelled(f"job {self.job_id} was cancelled")


def load_function(target: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (handlers and validators, imported on first use)."""
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def _handler(kind: str) -> Callable[[JobContext], dict[str, Any]]:
    return load_function(JOB_KINDS[kind].handler)


def _verify_params(settings: Settings, job: Job) -> None:
    from latentops.platform.services import job_params

    with session_scope(settings.database_url) as session:
        job_params.verify(session, settings, job)


def _claim(settings: Settings, job_id: int, worker: str) -> Job | str | None:
    """Take the job's lease if nobody holds a live one.

    Returns the job when this worker now runs it, a reason string when the job must wait (its
    team is at its concurrency quota), or None when it is not this worker's to run.
    """
    actor = f"worker:{worker}"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return None
        if job.state.finished:
            log.info("job %s already %s; redelivery ignored", job_id, job.state.value)
            return None
        now = utcnow()
        expires = job.lease_expires_at
        if job.state == JobState.RUNNING and expires is not None and _utc(expires) > now:
            log.info("job %s is leased by %s until %s; not running it twice", job_id, job.lease_owner, expires)
            return None
        if job.cancel_requested:
            _finish_unleased(session, job_id, JobState.CANCELLED, error=None, actor=actor)
            return None
        if job.attempts >= job.max_attempts:
            _finish_unleased(session, job_id, JobState.FAILED,
                             error=f"gave up after {job.attempts} attempts", actor=actor)
            return None
        hold = _quota_hold(session, job)
        if hold is not None:
            if job.hold_reason != hold:
                job.hold_reason = hold
                session.add(JobEvent(job_id=job_id, kind="state", message=f"held back: {hold}"))
            return hold
        seen = job.lease_token
        result = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.lease_token == seen)
            .values(
                lease_token=seen + 1, lease_owner=worker, lease_expires_at=now + dt.timedelta(seconds=settings.job_lease_s),
                heartbeat_at=now, state=JobState.RUNNING, attempts=Job.attempts + 1, hold_reason=None,
                started_at=sa.func.coalesce(Job.started_at, now),
            )
        )
        if result.rowcount != 1:
            return None
        session.refresh(job)
        retried = job.attempts > 1
        session.add(JobEvent(job_id=job_id, kind="state", message=f"running on {worker} (attempt {job.attempts})"))
        audit.record(session, actor=actor, action="job.retry" if retried else "job.start", resource=f"job:{job_id}",
                     details={"attempt": job.attempts, "worker": worker})
        return job


HOLD_RECHECK_S = 5.0
TEAM_LOCK_BASE = 0x6C61_7465_6E74_0000  # + team id: one advisory lock per team


def _quota_hold(session: Session, job: Job) -> str | None:
    """Why the job's team may not start another job now, or None. Quotas are policy data."""
    if job.team_id is None:
        return None
    from latentops.governance import policy

    team = session.get(Team, job.team_id)
    policy.get_service().refresh(session)  # take in data edits made through the product
    quotas = policy.policy_data("jobs.quotas")
    limit = {**quotas.get("default", {}), **quotas.get("teams", {}).get(team.name if team else "", {})}.get(
        "max_concurrent_jobs")
    if limit is None:
        return None
    # Serialise claims per team so two workers cannot both take the last free slot.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": TEAM_LOCK_BASE + job.team_id})
    else:
        session.execute(sa.update(Job).where(Job.id == job.id).values(lease_token=Job.lease_token))  # takes the write lock
    running = session.scalar(sa.select(sa.func.count(Job.id)).where(
        Job.team_id == job.team_id, Job.state == JobState.RUNNING, Job.id != job.id))
    if running is not None and running >= int(limit):
        return f"team {team.name if team else job.team_id} already runs {running} job(s); its quota is {limit}"
    return None


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _finish_unleased(session: Session, job_id: int, state: JobState, *, error: str | None, actor: audit.Actor | str) -> None:
    session.execute(sa.update(Job).where(Job.id == job_id).values(state=state, error=error, finished_at=utcnow()))
    session.add(JobEvent(job_id=job_id, kind="state", message=state.value + (f": {error}" if error else "")))
    audit.record(session, actor=actor, action=f"job.{state.value}", resource=f"job:{job_id}", outcome=_outcome(state),
                 details={"error": error} if error else {})


def _outcome(state: JobState) -> str:
    return {JobState.SUCCEEDED: "success", JobState.CANCELLED: "cancelled"}.get(state, "failure")


class _Heartbeat(threading.Thread):
    """Extends the lease while the handler runs; stops quietly when the lease is lost."""

    def __init__(self, settings: Settings, ctx: JobContext) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{ctx.job_id}")
        self.settings, self.ctx, self.stopped = settings, ctx, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.job_heartbeat_s):
            try:
                with session_scope(self.settings.database_url) as session:
                    now = utcnow()
                    self.ctx._guarded_update(session, heartbeat_at=now,
                                             lease_expires_at=now + dt.timedelta(seconds=self.settings.job_lease_s))
            except LeaseLost:
                log.warning("job %s: lease lost; heartbeat stops", self.ctx.job_id)
                return
            except Exception:  # a database blip must not kill the job; the next beat retries
                log.exception("job %s: heartbeat failed", self.ctx.job_id)


def execute(settings: Settings, *, job_id: int, worker: str) -> JobState | None:
    """Run a job to its outcome on this worker. Returns the final state, or None if not run here."""
    job = _claim(settings, job_id, worker)
    if isinstance(job, str):
        with session_scope(settings.database_url) as session:
            held = get(session, job_id)
        dispatch(settings, held, countdown=HOLD_RECHECK_S)
        return None
    if job is None:
        return None
    ctx = JobContext(settings, job, job.lease_token, worker)
    started = time.monotonic()
    heartbeat = _Heartbeat(settings, ctx)
    heartbeat.start()
    state, result, error = JobState.FAILED, {}, None
    try:
        _verify_params(settings, job)  # params changed since the server built them never run
        result = _handler(job.kind)(ctx) or {}
        state = JobState.SUCCEEDED
    except JobCancelled:
        state = JobState.CANCELLED
    except LeaseLost:
        log.warning("job %s: lease lost while running; another worker owns it", job_id)
        return None
    except LatentopsError as exc:
        error = f"{type(exc).__name__}: {exc.detail}"
    except Exception as exc:  # the outcome is recorded; the traceback goes to the worker log
        log.exception("job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        heartbeat.stopped.set()
    try:
        with session_scope(settings.database_url) as session:
            ctx._guarded_update(session, state=state, result=result, error=error, finished_at=utcnow(),
                                lease_owner=None, lease_expires_at=None)
            session.add(JobEvent(job_id=job_id, kind="state", message=state.value + (f": {error}" if error else "")))
            audit.record(session, actor=f"worker:{worker}", action=f"job.{state.value}", resource=f"job:{job_id}",
                         outcome=_outcome(state), details={"error": error} if error else {"attempt": ctx.attempt})
    except LeaseLost:
        log.warning("job %s: finished but the lease was lost; outcome not written", job_id)
        return None
    ops_metrics.job_finished(kind=job.kind, queue=job.queue, state=state.value, duration_s=time.monotonic() - started)
    return state
