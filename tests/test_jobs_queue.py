"""Jobs through the real queue: a real Redis broker and real worker processes."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from job_helpers import submit_job

from latentops.core.errors import InvalidInput, PolicyDenied, ServiceUnavailable
from latentops.governance import integration
from latentops.platform.database import session_scope
from latentops.platform.services import jobs
from latentops.platform.tables import AuditEntry, Job, JobEvent, JobState, Team


def wait_finished(url: str, job_id: int, timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(url) as db:
            job = jobs.get(db, job_id)
            if job.state.finished:
                return job
        time.sleep(0.2)
    with session_scope(url) as db:  # what the job went through, so a failure says where it stopped
        job = jobs.get(db, job_id)
        events = db.execute(sa.select(JobEvent.at, JobEvent.kind, JobEvent.message)
                            .where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        state = (f"state {job.state.value}, attempts {job.attempts}, lease {job.lease_owner} until "
                 f"{job.lease_expires_at}, progress {job.progress}")
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {state}; events:\n"
                         + "\n".join(f"  {at} {kind}: {message}" for at, kind, message in events))


def test_job_runs_on_a_real_worker_and_records_progress_and_audit(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    start_worker()
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 5, "seed": 1}, actor="tester")
    job = wait_finished(queue_settings.database_url, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1
    assert job.progress["step"] == 5 and job.progress["total"] == 5 and job.progress["percent"] == 100.0
    assert job.result["device"] == "cpu" and job.result["steps"] == 5
    assert job.result["final_error"] == pytest.approx(job.result["initial_error"] * 0.64**5, rel=1e-4)
    assert job.lease_owner is None
    with session_scope(queue_settings.database_url) as db:
        integration.catch_up(db)  # the worker's last entries may still be pending
        actions = list(db.scalars(sa.select(AuditEntry.action).where(AuditEntry.resource == f"job:{job_id}").order_by(AuditEntry.seq)))
        messages = [e.message for e in jobs.events(db, job_id)]
    assert actions == ["job.submit", "job.start", "job.succeeded"]
    assert messages[0] == "queued" and messages[-1] == "succeeded"


def test_invalid_parameters_are_refused_at_submit_and_nothing_is_created(queue_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="steps: must be an integer between 1 and 10000, got 0"):
        submit_job(queue_settings, kind="diagnostics", params={"steps": 0}, actor="tester")
    with pytest.raises(InvalidInput, match="colour: unknown parameter"):
        submit_job(queue_settings, kind="diagnostics", params={"colour": "red"}, actor="tester")
    with pytest.raises(InvalidInput, match="kind: unknown job kind 'mine'"):
        submit_job(queue_settings, kind="mine", params={}, actor="tester")
    with session_scope(queue_settings.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0
        assert db.scalar(sa.select(sa.func.count(AuditEntry.seq))) == 0


def test_a_job_that_fails_on_the_worker_records_the_reason(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    # The job's checkpoint is damaged before it starts: it must fail with that reason, not hang.
    damaged = queue_settings.jobs_dir / "1"
    damaged.mkdir(parents=True)
    (damaged / "checkpoint.json").write_text("{not json")
    start_worker()
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 3}, actor="tester")
    assert job_id == 1
    job = wait_finished(queue_settings.database_url, job_id)
    assert job.state == JobState.FAILED
    assert job.error is not None and job.error.startswith(f"InvalidInput: checkpoint {damaged / 'checkpoint.json'}: unreadable")
    with session_scope(queue_settings.database_url) as db:
        integration.catch_up(db)  # the worker's last entries may still be pending
        outcome = db.scalar(sa.select(AuditEntry.outcome).where(AuditEntry.action == "job.failed"))
    assert outcome == "failure"


def test_submit_with_broker_down_creates_nothing(broker_down) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ServiceUnavailable, match="broker unreachable at redis://127.0.0.1:1/0"):
        submit_job(broker_down, kind="diagnostics", params={}, actor="tester")
    with session_scope(broker_down.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Job.id))) == 0
        assert db.scalar(sa.select(sa.func.count(AuditEntry.seq))) == 0


def test_cancelling_a_queued_job_ends_it_and_the_worker_skips_it(queue_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 3}, actor="tester")
    with session_scope(queue_settings.database_url) as db:
        assert jobs.cancel(db, job_id=job_id, actor="tester").state == JobState.CANCELLED
    start_worker()
    later = submit_job(queue_settings, kind="diagnostics", params={"steps": 2}, actor="tester")
    assert wait_finished(queue_settings.database_url, later).state == JobState.SUCCEEDED
    with session_scope(queue_settings.database_url) as db:
        cancelled = jobs.get(db, job_id)
        assert cancelled.state == JobState.CANCELLED and cancelled.attempts == 0
        with pytest.raises(Exception, match="already finished"):
            jobs.cancel(db, job_id=job_id, actor="tester")


def test_redelivered_job_id_does_not_run_twice(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker()
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 2}, actor="tester")
    assert wait_finished(queue_settings.database_url, job_id).state == JobState.SUCCEEDED
    with session_scope(queue_settings.database_url) as db:
        job = jobs.get(db, job_id)
    jobs.dispatch(queue_settings, job)  # the broker hands the same id out again
    ignored = f"job {job_id} already succeeded; redelivery ignored".encode()
    deadline = time.monotonic() + 30
    while ignored not in worker.log_path.read_bytes():
        assert time.monotonic() < deadline, worker.log_path.read_text()[-3000:]
        time.sleep(0.05)
    with session_scope(queue_settings.database_url) as db:
        assert jobs.get(db, job_id).attempts == 1
        integration.catch_up(db)
        starts = db.scalar(sa.select(sa.func.count()).where(AuditEntry.resource == f"job:{job_id}", AuditEntry.action == "job.start"))
    assert starts == 1


def _team_with(settings, **roles: str) -> int:  # type: ignore[no-untyped-def]
    """Team "vision" with one user per ``email=role``; returns the team id."""
    from latentops.platform.services import users

    with session_scope(settings.database_url) as db:
        for email, role in roles.items():
            users.create_user(db, email=f"{email}@x.io", role=role, team="vision", password=None, actor="t")
        return int(db.scalar(sa.select(Team.id).where(Team.name == "vision")))


def test_an_admins_job_gets_the_admin_priority_and_runs_before_earlier_ones(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    team_id = _team_with(queue_settings, sub="submitter", boss="admin")
    # Queue everything before a worker exists, then let one worker drain the queue in order.
    low = [submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="sub@x.io", team_id=team_id)
           for _ in range(3)]
    high = submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="boss@x.io", team_id=team_id)
    with session_scope(queue_settings.database_url) as db:
        assert [jobs.get(db, job_id).priority for job_id in [*low, high]] == [0, 0, 0, 5]
        assert jobs.queue_position(db, jobs.get(db, high)) == 0
        assert [jobs.queue_position(db, jobs.get(db, job_id)) for job_id in low] == [1, 2, 3]
        obligations = [json.loads(e.details).get("obligations") for e in db.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "policy.decision").order_by(AuditEntry.seq))]
    assert obligations[-1] == {"priority": 5}, "the decision that set the priority is on the record"
    start_worker()
    for job_id in [*low, high]:
        wait_finished(queue_settings.database_url, job_id)
    with session_scope(queue_settings.database_url) as db:
        order = [row.id for row in db.scalars(sa.select(Job).order_by(Job.started_at))]
    assert order[0] == high, order


def test_a_priority_above_the_role_maximum_or_a_full_queue_is_refused_and_nothing_is_queued(queue_settings) -> None:  # type: ignore[no-untyped-def]
    from latentops.governance import policy

    team_id = _team_with(queue_settings, sub="submitter")
    with pytest.raises(PolicyDenied) as refused:
        submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="sub@x.io", team_id=team_id, priority=7)
    assert refused.value.reasons == ["jobs.priority: priority 7 is above 4, the highest your role may ask for"]
    with session_scope(queue_settings.database_url) as db:
        policy.set_policy_data(db, key="jobs.quotas", actor="t", value={
            "default": {"max_concurrent_jobs": 4, "max_queued_jobs": 2, "max_gpu_hours": 100}, "teams": {}})
    kept = [submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="sub@x.io", team_id=team_id,
                        priority=4) for _ in range(2)]
    with pytest.raises(PolicyDenied) as full:
        submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="sub@x.io", team_id=team_id)
    assert full.value.reasons == ["jobs.quota.queued_jobs: team already has 2 jobs waiting; the quota is 2"]
    with session_scope(queue_settings.database_url) as db:
        assert list(db.scalars(sa.select(Job.id).order_by(Job.id))) == kept
        assert [jobs.get(db, job_id).priority for job_id in kept] == [4, 4]
        denials = db.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "policy.decision", AuditEntry.outcome == "deny"))
    assert denials == 2


def test_workers_sign_the_first_audit_checkpoint_without_being_asked(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    from latentops.governance import checkpoints

    start_worker(env={"LATENTOPS_SWEEP_INTERVAL_S": "0.5"})
    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 1}, actor="tester")
    wait_finished(queue_settings.database_url, job_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with session_scope(queue_settings.database_url) as db:
            latest = checkpoints.latest(db)
        if latest is not None:
            break
        time.sleep(0.3)
    assert latest is not None and latest.tree_size >= 1
    assert queue_settings.audit_signing_key is not None and queue_settings.audit_signing_key.exists()


def test_gpu_hours_count_every_process_of_a_multi_process_fine_tune(database_url: str, fresh_policy) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from latentops.platform.tables import utcnow

    with session_scope(database_url) as db:
        db.add(Team(name="vision"))
        db.flush()
        team_id = db.scalar(sa.select(Team.id).where(Team.name == "vision"))
        end = utcnow()
        for processes in (1, 4):  # 30 minutes each, on the gpu queue
            db.add(Job(kind="finetune", queue="gpu", params={"config": {"processes": processes}}, team_id=team_id,
                       state=JobState.SUCCEEDED, started_at=end - dt.timedelta(minutes=30), finished_at=end))
        db.add(Job(kind="diagnostics", queue="gpu", params={"steps": 1}, team_id=team_id, state=JobState.QUEUED))
    with session_scope(database_url) as db:
        assert jobs.usage(db, team_id) == {"queued_jobs": 1, "gpu_hours": 2.5, "period": "rolling_days:30"}


def test_queue_positions_count_the_queued_jobs_ahead_on_the_same_queue(database_url: str) -> None:
    """Run order is priority, then age, per queue; finished and running jobs are not in the queue."""
    layout = [("gpu", 0, JobState.QUEUED), ("gpu", 5, JobState.QUEUED), ("cpu", 0, JobState.QUEUED),
              ("gpu", 0, JobState.RUNNING), ("gpu", 0, JobState.QUEUED), ("cpu", 3, JobState.QUEUED),
              ("gpu", 5, JobState.SUCCEEDED), ("gpu", 5, JobState.QUEUED), ("cpu", 0, JobState.QUEUED),
              ("gpu", -1, JobState.QUEUED)]
    with session_scope(database_url) as db:
        rows = [Job(kind="diagnostics", queue=queue, priority=priority, state=state)
                for queue, priority, state in layout]
        db.add_all(rows)
        db.flush()

        def ahead(job: Job) -> int | None:
            if job.state != JobState.QUEUED:
                return None
            return sum(1 for other in rows if other.queue == job.queue and other.state == JobState.QUEUED
                       and (other.priority, -other.id) > (job.priority, -job.id))

        expected = {job.id: ahead(job) for job in rows}
        assert jobs.queue_positions(db, rows) == expected
        assert jobs.queue_positions(db, rows[5:7]) == {rows[5].id: 0, rows[6].id: None}  # a page of the list
        assert [jobs.queue_position(db, job) for job in rows] == list(expected.values())
    # gpu: priority 5 (ids 2, 8) first, then priority 0 (ids 1, 5), then -1; cpu: 6, then 3, 9.
    assert list(expected.values()) == [2, 0, 1, None, 3, 0, None, 1, 2, 4]
