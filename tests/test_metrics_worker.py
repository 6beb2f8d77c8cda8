"""Each worker process serves its own metrics: a real worker, a real job, a real scrape."""

from __future__ import annotations

import socket
import time

import httpx
from job_helpers import submit_job
from prometheus_client.parser import text_string_to_metric_families
from test_jobs_queue import wait_finished

from latentops.platform.stack import free_port
from latentops.platform.tables import JobState


def read(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def scrape(port: int, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_worker_process_exports_job_metrics_after_running_a_job(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    start_worker(env={"LATENTOPS_WORKER_METRICS_PORT": str(port), "LATENTOPS_WORKER_METRICS_HOST": "127.0.0.1"})
    before = scrape(port)
    assert read(before, "latentops_jobs_finished_total", kind="diagnostics", queue="gpu", state="succeeded") is None
    # No GPU here: NVML says so and nothing else about GPUs is exported.
    assert read(before, "latentops_gpu_nvml_available") == 0.0
    assert "latentops_gpu_utilization_percent{" not in before

    job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 3, "seed": 0}, actor="tester")
    assert wait_finished(queue_settings.database_url, job_id).state == JobState.SUCCEEDED

    after = scrape(port)
    assert read(after, "latentops_jobs_finished_total", kind="diagnostics", queue="gpu", state="succeeded") == 1.0
    assert read(after, "latentops_job_duration_seconds_count", kind="diagnostics", queue="gpu", state="succeeded") == 1.0
    duration = read(after, "latentops_job_duration_seconds_sum", kind="diagnostics", queue="gpu", state="succeeded")
    assert duration is not None and 0.0 < duration < 120.0
    # The rate gauge is reset when the job ends, so an idle worker does not look busy.
    assert read(after, "latentops_training_steps_per_second", kind="diagnostics") == 0.0
    # The job's audit entries (start, outcome) were committed in this process.
    assert (read(after, "latentops_audit_appends_total", domain="job") or 0.0) >= 2.0


def test_a_taken_metrics_port_does_not_stop_the_worker_from_running_jobs(start_worker, queue_settings) -> None:  # type: ignore[no-untyped-def]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        worker = start_worker(env={"LATENTOPS_WORKER_METRICS_PORT": str(port)})
        job_id = submit_job(queue_settings, kind="diagnostics", params={"steps": 2}, actor="tester")
        assert wait_finished(queue_settings.database_url, job_id).state == JobState.SUCCEEDED
    assert f"could not serve on 0.0.0.0:{port}" in worker.log_path.read_text()
