"""Nothing outlives ``latentops up``, and a lost lease names the worker that held it.

A ``kill -9`` of ``up`` during a job used to leave its worker and the worker's pool child running:
Celery answers SIGTERM by finishing the running job, so the orphan finished it beside the worker
of the restarted stack. Now every process ``up`` started, and every process those started, dies
with it. Everything here is real: the stack, its Redis, worker and API, and SIGKILL. Descendants
are found by walking ``/proc``; the parent-death signal is Linux's, so these tests need Linux.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from job_helpers import queued_job, submit_finetune, submit_job
from test_stack import _alive, _latentops, _read_until, _wait_health

from latentops.platform.database import session_scope
from latentops.platform.services import jobs
from latentops.platform.services.jobs import executor
from latentops.platform.stack import free_port
from latentops.platform.tables import AuditEntry, Job, JobEvent, JobState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")

REPO = Path(__file__).resolve().parents[2]
FAST_RECOVERY = {"LATENTOPS_JOB_LEASE_S": "3", "LATENTOPS_JOB_HEARTBEAT_S": "0.5", "LATENTOPS_SWEEP_INTERVAL_S": "1"}
GONE_WITHIN_S = 20.0


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root`` (children, their children, ...) -> its command line."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # gone while we looked
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def wait_until(condition, what: str, timeout: float = 60.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def survivors(pids: dict[int, str]) -> dict[int, str]:
    return {pid: line for pid, line in pids.items() if _alive(pid)}


@pytest.fixture
def stack_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A fresh home for ``up``; this test process reads the same home's database and broker."""
    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app

    home = Path("/tmp") / f"lo-ph-{os.getpid()}-{tmp_path.name[-10:]}"  # short: it holds a unix socket
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_") and k != "MLFLOW_TRACKING_URI"}
    env.update(LATENTOPS_HOME=str(home), COLUMNS="200", **FAST_RECOVERY)
    for key in list(os.environ):
        if key.startswith("LATENTOPS_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("LATENTOPS_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    celery_app.cache_clear()
    yield env
    get_settings.cache_clear()
    celery_app.cache_clear()
    shutil.rmtree(home, ignore_errors=True)


class Stack:
    """One ``latentops up``: its process, and the pids it printed for its children."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.process = subprocess.Popen(_latentops("up", "--port", str(port)), env=env, cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = _read_until(self.process, "latentops is up")
        _wait_health(port, self.process)
        found = re.search(r"started worker \(pid (\d+)", self.started)
        assert found, self.started
        self.worker_pid = int(found.group(1))

    def worker_name(self) -> str:
        return f"latentops-{self.worker_pid}@"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=90)


def _job(url: str, job_id: int) -> Job:
    with session_scope(url) as db:
        return jobs.get(db, job_id)


def _events(url: str, job_id: int) -> list[str]:
    with session_scope(url) as db:
        return list(db.scalars(sa.select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _kill_up_and_expect_no_survivor(stack: Stack) -> None:
    """SIGKILL ``up`` (only ``up``) and wait for every process below it to be gone."""
    family = descendants(stack.process.pid)
    assert stack.worker_pid in family, family
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(10)
    deadline = time.monotonic() + GONE_WITHIN_S
    while survivors(family) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = survivors(family)
    for pid in alive:  # leave nothing behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"still running {GONE_WITHIN_S:.0f}s after up was killed: {alive}"


def test_sigkilled_up_takes_its_whole_tree_and_the_next_stack_names_the_lost_worker(stack_env) -> None:  # type: ignore[no-untyped-def]
    from latentops.core.settings import get_settings

    port = free_port()
    first = Stack(stack_env, port)
    url = get_settings().database_url
    try:
        job_id = submit_job(get_settings(), kind="diagnostics", params={"steps": 600, "step_delay_s": 0.1},
                             actor="cli:test")
        wait_until(lambda: int(_job(url, job_id).progress.get("step", 0)) >= 2, "the job to run")
        running = _job(url, job_id)
        assert running.state == JobState.RUNNING and (running.lease_owner or "").startswith(first.worker_name())
        pool_children = descendants(first.worker_pid)
        assert pool_children, "the worker runs its job in a prefork child"
        _kill_up_and_expect_no_survivor(first)
        # Nobody works on the job any more: its progress stands still past a few heartbeats.
        stalled = _job(url, job_id).progress.get("step")
        time.sleep(2.0)  # a span in which to see that nothing happens, not a synchronisation
        assert _job(url, job_id).progress.get("step") == stalled
    finally:
        first.stop()

    second = Stack(stack_env, port)
    try:
        wait_until(lambda: (job := _job(url, job_id)).attempts == 2 and job.state == JobState.RUNNING,
                   "the next stack to take the job over", timeout=45)
        lost = [m for m in _events(url, job_id) if m.startswith("lease of ")]
        assert lost == [f"lease of {running.lease_owner} expired; dispatched again"], lost
        assert "None" not in lost[0]
        assert (_job(url, job_id).lease_owner or "").startswith(second.worker_name())
        with session_scope(url) as db:
            jobs.cancel(db, job_id=job_id, actor="cli:test")  # so that stopping the stack needs no grace period
        ended = wait_until(lambda: (job := _job(url, job_id)).state.finished and job, "the job to end on cancel")
        assert ended.state == JobState.CANCELLED
    finally:
        second.stop()
    assert second.process.returncode == 0


@pytest.mark.usefixtures("database_url")
def test_the_event_for_an_expired_lease_names_the_worker_that_held_it(queue_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from latentops.core.settings import get_settings

    monkeypatch.setenv("LATENTOPS_JOB_LEASE_S", "0.5")
    get_settings.cache_clear()
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        job_id = queued_job(db, kind="diagnostics", params={"steps": 2}, actor="cli:test").id
    crashed = "latentops-4242@gpu-node-7"
    claimed = executor._claim(settings, job_id, crashed)  # what a worker does when it takes the job
    assert isinstance(claimed, Job) and claimed.lease_owner == crashed
    # The worker dies here: nothing extends its lease; the next sweep after expiry takes the job back.
    wait_until(lambda: jobs.sweep(settings, worker="latentops-1@gpu-node-8")["retried"] == 1, "the lease to expire",
               timeout=20)

    assert [m for m in _events(settings.database_url, job_id) if m.startswith("lease of ")] == [
        f"lease of {crashed} expired; dispatched again"]
    with session_scope(settings.database_url) as db:
        job = jobs.get(db, job_id)
        assert (job.state, job.lease_owner) == (JobState.RETRYING, None)
        details = db.scalars(sa.select(AuditEntry.details).where(AuditEntry.action == "job.requeue",
                                                                  AuditEntry.resource == f"job:{job_id}")).one()
    assert json.loads(details)["lost_worker"] == crashed


@pytest.mark.slow
def test_sigkilled_up_takes_the_training_processes_of_a_running_fine_tune_with_it(stack_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The deepest tree ``up`` has: up -> worker -> pool child (the launcher) -> two training processes."""
    from finetune_helpers import draw_glyphs

    from latentops.core.settings import get_settings
    from latentops.pipelines import tiny
    from latentops.platform.services import finetune
    from latentops.platform.services import models as models_service

    (tmp_path / "instances").mkdir()
    instances = draw_glyphs(tmp_path / "instances")
    stack = Stack(stack_env, free_port())
    try:
        settings = get_settings()
        with session_scope(settings.database_url) as db:
            models_service.import_model(db, source=tiny.create("sd1", tmp_path / "sd1"), name="tiny", actor="cli:test",
                                        store_root=settings.model_store, sensitivity="public")
        values = {"instance_prompt": "a sks glyph", "rank": 4, "resolution": 32, "batch_size": 1, "lr": 1e-3,
                  "seed": 7, "steps": 5000, "checkpoint_every": 1000, "validation_steps": 1, "processes": 2}
        job_id = submit_finetune(settings, actor="cli:test", request=finetune.Request(
            model="tiny", instance_dir=instances, values=values, adapter_name="glyph", attest_licence=True,
            attest_consent=True))

        def training_processes() -> dict[int, str]:
            return {pid: line for pid, line in descendants(stack.process.pid).items() if "_process_main" in line}

        trainers = wait_until(lambda: len(training_processes()) == 2 and training_processes(),
                              "two training processes", timeout=120, interval=0.5)
        assert _job(settings.database_url, job_id).state == JobState.RUNNING
        launcher = {pid: line for pid, line in descendants(stack.worker_pid).items() if pid not in trainers}
        assert launcher, "the pool child that launched the training processes"
        _kill_up_and_expect_no_survivor(stack)
        assert not survivors(trainers)
    finally:
        stack.stop()
