"""Running jobs: claim under a lease, heartbeat, execute, record the outcome; the sweeper.

A worker that receives an id *claims* the job with a conditional UPDATE that bumps
``lease_token`` (a fencing token): every later write by that worker names the token it holds, so a
worker whose lease was taken over can no longer write progress or an outcome. A heartbeat thread
extends the lease while the handler runs. Before the handler runs, the worker checks the job's
stored params against its kind's schema and the job itself (``services.job_params.verify``): a job
whose stored params were changed fails, naming the field.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.platform import metrics as ops_metrics  # "metrics" is a progress() argument
from latentops.platform.database import session_scope
from latentops.platform.services.jobs.control import get
from latentops.platform.services.jobs.kinds import JOB_KINDS, load_function
from latentops.platform.services.jobs.submit import WAITING_STATES, _finish_unleased, _outcome, _utc, dispatch
from latentops.platform.tables import Job, JobEvent, JobState, Team, utcnow

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


class JobCancelled(Exception):
    """Raised inside a handler when cancellation was requested; the job ends ``cancelled``."""


class LeaseLost(Exception):
    """This worker's lease was taken over; it must stop without writing anything more."""



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
        self._losses: list[float] = []  # the loss history so far, so the job page draws the curve while it runs
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
        if "loss" in metrics:
            self._losses.append(float(metrics["loss"]))
        if now - self._last_progress < PROGRESS_INTERVAL_S and step < total:
            return
        self._last_progress = now
        done = step - self._first_step
        rate = done / (now - self._started) if done > 0 and now > self._started else 0.0
        eta = (total - step) / rate if rate > 0 else None
        ops_metrics.training_rate(kind=self.kind, steps_per_second=rate)
        payload: dict[str, Any] = {"step": step, "total": total, "percent": round(100.0 * step / max(total, 1), 1),
                   "eta_s": None if eta is None else round(eta, 1), **{k: float(v) for k, v in metrics.items()}}
        if self._losses:  # at most 200 evenly spaced points
            payload["losses"] = self._losses[::max(1, -(-len(self._losses) // 200))]
        with session_scope(self.settings.database_url) as session:
            self._guarded_update(session, progress=payload, heartbeat_at=utcnow())

    def log(self, message: str, *, kind: str = "log") -> None:
        with session_scope(self.settings.database_url) as session:
            session.add(JobEvent(job_id=self.job_id, kind=kind, message=message))

    def check_cancelled(self) -> None:
        with session_scope(self.settings.database_url) as session:
            if session.scalar(sa.select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise JobCancelled(f"job {self.job_id} was cancelled")



def _handler(kind: str) -> Callable[[JobContext], dict[str, Any]]:
    return load_function(JOB_KINDS[kind].handler)


def _verify_params(settings: Settings, job: Job) -> None:
    from latentops.platform.services import job_params

    kind = JOB_KINDS.get(job.kind)
    if kind is None:
        raise InvalidInput(f"kind: unknown job kind {job.kind!r}")
    validator = load_function(kind.validator) if kind.validator else None
    with session_scope(settings.database_url) as session:
        job_params.verify(session, settings, job, validator=validator)


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


def sweep(settings: Settings, *, worker: str) -> dict[str, int]:
    """Re-dispatch jobs a crashed worker left behind and waiting jobs whose message may be lost.

    A job whose lease expired is set to ``retrying`` (or ``failed`` when out of attempts) and its
    id is sent again; the lease guarantees that duplicates never run twice. A waiting job (queued, or
    retrying) that no worker took within ``requeue_after_s`` of its last dispatch is sent again: its
    message may be lost with the broker, or with a worker that died holding it. Each job is claimed
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
        # Waiting jobs (queued, or retrying after a lost worker) whose message may be lost with the broker.
        lost = session.scalars(
            sa.select(Job).where(Job.state.in_(WAITING_STATES), sa.func.coalesce(Job.dispatched_at, Job.created_at) < stale_queued)
        ).all()
        for job in lost:
            claimed = session.execute(
                sa.update(Job).where(Job.id == job.id, Job.state == job.state,
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

