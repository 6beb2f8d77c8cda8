"""Celery tasks: thin. Each takes ids, calls a service, and lets the service record the outcome."""

from __future__ import annotations

import socket

from celery import shared_task

from latentops.core.settings import get_settings
from latentops.platform.services import jobs


@shared_task(name="latentops.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: object, job_id: int) -> None:
    """Run one job to its outcome. Safe to deliver twice: the job's lease decides who runs it."""
    hostname = getattr(getattr(self, "request", None), "hostname", None) or socket.gethostname()
    jobs.execute(get_settings(), job_id=job_id, worker=str(hostname))
