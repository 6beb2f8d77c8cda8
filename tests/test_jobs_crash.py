"""No job is lost: workers killed with SIGKILL, a broker that loses its data, many workers at once.

Everything here is real: Redis, worker processes, and kill -9. Leases and sweeps are shortened
through the same settings an operator would use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
import sqlalchemy as sa
from job_helpers import submit_job
from test_jobs_queue import wait_finished

from latentops.core.errors import ServiceUnavailable
from latentops.platform.database import session_scope
from latentops.platform.services import jobs
from latentops.platform.tables import AuditEntry, Job, JobState, Team, utcnow

FAST_RECOVERY = {"LATENTOPS_JOB_LEASE_S": "3", "LATENTOPS_JOB_HEARTBEAT_S": "0.5", "LATENTOPS_SWEEP_INTERVAL_S": "1"}


def wait_step(url: str, job_id: int, step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(url) as db:
            if jobs.get(db, job_id).progress.get("step", 0) >= step:
                return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached step {step}")


def audit_actions(url: str, job_id: int) -> list[str]:
    """The job's entries in chain order, once every committed entry has its place (as any reader does:
    a worker's last entry is durable when the job row says finished, and placed moments later)."""
    from latentops.governance import integration

    with session_scope(url) as db:
        integration.catch_up(db)
        return list(db.scalars(sa.select(AuditEntry.action).where(AuditEntry.resource == f"job:{job_id}").order_by(AuditEntry.seq)))


@pytest.mark.parametrize("victim", ["whole worker", "worker child"])
def test_sigkilled_worker_loses_no_job_and_it_resumes_from_its_checkpoint(start_worker, queue_settings, victim: str) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(env=FAST_RECOVERY)
    steps = 24
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": steps, "seed": 3, "step_delay_s": 0.25}, actor="t")
    wait_step(queue_settings.database_url, job_id, 6)
    if victim == "whole worker":
        worker.stop(sig=signal.SIGKILL)
        start_worker(env=FAST_RECOVERY)
    else:
        child = psutil.Process(worker.process.pid).children()[0]
        os.kill(child.pid, signal.SIGKILL)  # the pool replaces it; the job must come back

    job = wait_finished(queue_settings.database_url, job_id, timeout=120)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2
    assert job.result["resumed_from"] >= 6
    # The resumed run ends exactly where an uninterrupted one would.
    assert job.result["final_error"] == pytest.approx(job.result["initial_error"] * 0.64**steps, rel=1e-9)
    actions = audit_actions(queue_settings.database_url, job_id)
    expected = ["job.submit", "job.start", "job.requeue", "job.retry", "job.succeeded"]
    if victim == "worker child" and "job.requeue" not in actions:
        # The broker redelivers a killed child's message. When the replacement child takes it after the
        # lease has expired and before a sweep has seen the expiry, it resumes the job with no requeue.
        expected.remove("job.requeue")
    assert actions == expected


def test_a_replacement_pool_child_forked_while_housekeeping_runs_still_runs_jobs(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    """The pool forks a new child whenever one dies. A child forked while the worker's housekeeping
    thread was inside SQLite inherited that thread's locks and hung at its first connection: the job
    handed to it never started. With the sweep every 20 ms, that happened within five replacements in
    each of three runs; now the fork waits for the housekeeping pass to end."""
    worker = start_worker(env={"LATENTOPS_SWEEP_INTERVAL_S": "0.02"})
    parent = psutil.Process(worker.process.pid)
    for attempt in range(10):
        os.kill(parent.children()[0].pid, signal.SIGKILL)
        job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 1, "seed": attempt}, actor="t")
        assert wait_finished(queue_settings.database_url, job_id, timeout=30).state == JobState.SUCCEEDED, attempt


def test_one_job_never_runs_on_two_workers_at_once(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    start_worker()
    start_worker()
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 8, "step_delay_s": 0.2}, actor="t")
    with session_scope(queue_settings.database_url) as db:
        job = jobs.get(db, job_id)
    for _ in range(4):  # duplicates of the same id reach both workers while it runs
        jobs.dispatch(queue_settings, job)
    finished = wait_finished(queue_settings.database_url, job_id)
    assert finished.state == JobState.SUCCEEDED and finished.attempts == 1
    assert audit_actions(queue_settings.database_url, job_id).count("job.start") == 1


@pytest.fixture
def private_redis(tmp_path):  # type: ignore[no-untyped-def]
    """A Redis of this test's own that it may kill and restart (no persistence: data is lost)."""
    from latentops.platform.stack import free_port

    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]
    state = {"process": subprocess.Popen(argv, stdout=subprocess.DEVNULL)}

    def restart() -> None:
        state["process"].kill()
        state["process"].wait()
        state["process"] = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        _wait_redis(port)

    _wait_redis(port)
    yield f"redis://127.0.0.1:{port}/0", restart
    state["process"].kill()
    state["process"].wait()


def _wait_redis(port: int) -> None:
    import redis

    for _ in range(100):
        try:
            if redis.Redis(port=port).ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise AssertionError("redis did not start")


@pytest.mark.usefixtures("database_url")
def test_broker_restart_that_loses_every_message_loses_no_job(settings_env, private_redis, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import WorkerProcess

    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app

    url, restart = private_redis
    monkeypatch.setenv("LATENTOPS_BROKER_URL", url)
    get_settings.cache_clear()
    celery_app.cache_clear()
    settings = get_settings()
    ids = [submit_job(settings, kind="diagnostics", params={"steps": 2}, actor="t") for _ in range(3)]
    with session_scope(settings.database_url) as db:  # one as the sweep leaves a job whose worker was lost
        db.execute(sa.update(Job).where(Job.id == ids[2]).values(state=JobState.RETRYING, attempts=1, dispatched_at=utcnow()))
    restart()  # every queued message is gone; the database still knows the jobs
    worker = WorkerProcess({**os.environ, **FAST_RECOVERY, "LATENTOPS_REQUEUE_AFTER_S": "1"}, tmp_path / "w.log")
    try:
        worker.wait_ready()
        for job_id in ids:
            assert wait_finished(settings.database_url, job_id, timeout=90).state == JobState.SUCCEEDED
    finally:
        worker.stop()
        celery_app.cache_clear()


def test_database_outage_at_submit_sends_nothing_to_the_broker(queue_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import redis

    from latentops.core.settings import get_settings

    monkeypatch.setenv("LATENTOPS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    with pytest.raises(ServiceUnavailable, match="database unreachable"):
        submit_job(get_settings(), kind="diagnostics", params={}, actor="t")
    client = redis.Redis.from_url(queue_settings.broker_url)
    assert client.llen("gpu") == 0 and client.llen("cpu") == 0


@pytest.mark.slow
def test_four_workers_run_two_hundred_jobs_each_exactly_once(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    for _ in range(4):
        start_worker()
    ids = [submit_job(queue_settings, kind="diagnostics", params={"steps": 1, "seed": n}, actor="t") for n in range(200)]
    deadline = time.monotonic() + 300
    with session_scope(queue_settings.database_url) as db:
        while time.monotonic() < deadline:
            done = db.scalar(sa.select(sa.func.count(Job.id)).where(Job.state == JobState.SUCCEEDED))
            if done == len(ids):
                break
            db.rollback()
            time.sleep(0.5)
        rows = db.execute(sa.select(Job.id, Job.state, Job.attempts, Job.result)).all()
        starts = dict(db.execute(sa.select(AuditEntry.resource, sa.func.count()).where(AuditEntry.action == "job.start")
                                 .group_by(AuditEntry.resource)).all())
    assert len(rows) == 200
    assert all(state == JobState.SUCCEEDED and attempts == 1 for _, state, attempts, _ in rows)
    assert starts == {f"job:{job_id}": 1 for job_id in ids}
    workers_used = {result.get("worker") for *_, result in rows}
    assert len(workers_used) >= 2, "the jobs should spread over several workers"


# Several workers claiming one team's jobs at once is the production setting (PostgreSQL); the
# embedded SQLite stack runs a single worker, so this test pins the PostgreSQL backend.
@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_team_at_its_concurrency_quota_waits_and_is_told_why(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    from latentops.governance import policy
    from latentops.platform.services import users

    with session_scope(queue_settings.database_url) as db:
        users.create_user(db, email="q@x.io", role="submitter", team="vision", password=None, actor="t")
        users.create_user(db, email="r@x.io", role="submitter", team="other", password=None, actor="t")
        team_id = db.scalar(sa.select(Team.id).where(Team.name == "vision"))
        policy.set_policy_data(db, key="jobs.quotas", actor="t",
                               value={"default": {"max_concurrent_jobs": 4, "max_queued_jobs": 50, "max_gpu_hours": 100},
                                      "teams": {"vision": {"max_concurrent_jobs": 1}}})
    start_worker()
    start_worker()
    first = submit_job(queue_settings, kind="diagnostics", params={"steps": 40, "step_delay_s": 0.5}, actor="q@x.io",
                        team_id=team_id)
    wait_step(queue_settings.database_url, first, 1)  # two idle workers: either could claim first otherwise
    second = submit_job(queue_settings, kind="diagnostics", params={"steps": 2}, actor="q@x.io", team_id=team_id)
    deadline = time.monotonic() + 30
    reason = None
    while reason is None and time.monotonic() < deadline:
        with session_scope(queue_settings.database_url) as db:
            reason = jobs.get(db, second).hold_reason
        time.sleep(0.1)
    assert reason == "team vision already runs 1 job(s); its quota is 1"
    with session_scope(queue_settings.database_url) as db:  # the slot frees when the first ends, however it ends
        jobs.cancel(db, job_id=first, actor="q@x.io")
    a = wait_finished(queue_settings.database_url, first)
    b = wait_finished(queue_settings.database_url, second, timeout=90)
    assert (a.state, b.state) == (JobState.CANCELLED, JobState.SUCCEEDED)
    assert b.started_at is not None and a.finished_at is not None and b.started_at >= a.finished_at
    assert b.hold_reason is None
