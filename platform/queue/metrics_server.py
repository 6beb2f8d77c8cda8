"""A Prometheus endpoint in each worker process.

Jobs run in Celery's prefork children, so their counters (jobs finished, durations, training
rate) live in the child that ran them. Each child therefore serves its own ``/metrics``: child
``i`` listens on ``LATENTOPS_WORKER_METRICS_PORT + i`` (a worker started with ``--gpus 0,1`` has
one child per GPU, so each GPU's numbers come from the process pinned to it). A replaced child
gets the same index back and so the same port.

Off unless ``LATENTOPS_WORKER_METRICS_PORT`` is set (the embedded stack leaves it unset). A port
that cannot be bound is logged and the worker runs on without metrics: metrics never stop jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init
from prometheus_client import REGISTRY, start_http_server

from latentops.core.settings import get_settings
from latentops.platform import metrics

log = logging.getLogger(__name__)


def child_port(base: int, index: int) -> int:
    return base + index


@worker_process_init.connect
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if settings.worker_metrics_port is None:
        return
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0) or 0
    port = child_port(settings.worker_metrics_port, index)
    try:
        metrics.watch_audit_appends()
        metrics.enable_gpu_metrics()
        start_http_server(port, addr=settings.worker_metrics_host, registry=REGISTRY)
    except Exception as error:  # noqa: BLE001 - a taken port must not keep the worker from running jobs
        log.error("worker metrics: could not serve on %s:%s (%s); this process exports no metrics",
                  settings.worker_metrics_host, port, error)
        return
    log.info("worker process %s serves metrics on %s:%s", index, settings.worker_metrics_host, port)
