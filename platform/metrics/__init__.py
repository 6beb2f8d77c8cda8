"""Prometheus metrics: every series latentops exports, with the ``latentops_`` prefix.

Three kinds of metrics live here:

* **Counters and histograms kept in this process** (``counters.py``), incremented through the
  helper functions re-exported here. Other modules call them; each helper is keyword-only,
  cheap, and **never raises** (a metrics problem is logged once and counted in
  ``latentops_metrics_errors_total``; it must never fail a request or a job)::

      from latentops.platform import metrics

      metrics.job_submitted(kind="lora", queue="gpu")
      metrics.job_finished(kind="lora", queue="gpu", state="succeeded", duration_s=812.5)
      metrics.training_rate(kind="lora", steps_per_second=3.2)
      metrics.policy_decision(path="prompt/decision", allow=False, rule_ids=["prompt.protected_name"],
                              engine="embedded", duration_s=0.004)
      metrics.policy_engine_error(engine="opa", reason="timeout")
      metrics.screening_result(model_version="sd-tiny@3", flagged_categories=["nudity"])
      metrics.audit_appended(action="job.submit")   # counted automatically, see watch_audit_appends
      metrics.api_request(method="GET", route="/api/v1/jobs/{job_id}", status=200, duration_s=0.012)

* **Gauges read from the database at scrape time** (jobs by state, queue depth, quarantine size,
  audit checkpoint and verification ages) by ``DatabaseCollector`` (``db.py``). The queries run
  in a background thread with a short deadline: a slow or unreachable database makes the scrape
  report ``latentops_metrics_collector_up{collector="database"} 0`` instead of failing or hanging.
  The API's ``/metrics`` adds these; workers do not (every API replica reports the same values,
  so dashboards aggregate them with ``max``).

* **GPU gauges** from NVML (``pynvml`` from the ``nvidia-ml-py`` package) by ``GpuCollector``
  (``gpu.py``), registered on workers only (``enable_gpu_metrics``). Without the library or a
  driver it exports ``latentops_gpu_nvml_available 0`` and nothing else.

Everything is on prometheus-client's default registry, so counters that other modules declare
themselves (``latentops_audit_integrity_alarms_total`` in governance/audit_mac.py) are exported too.
``render`` below is the text exposition that ``/metrics`` and the worker's metrics server serve.
"""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from latentops.platform.metrics.counters import (
    METRIC_ERRORS,
    api_request,
    audit_appended,
    job_finished,
    job_submitted,
    policy_decision,
    policy_engine_error,
    screening_result,
    training_rate,
    watch_audit_appends,
)
from latentops.platform.metrics.db import DATABASE_TIMEOUT_S, DatabaseCollector
from latentops.platform.metrics.gpu import GpuCollector, enable_gpu_metrics

__all__ = [
    "CONTENT_TYPE", "DatabaseCollector", "GpuCollector", "api_request", "audit_appended", "enable_gpu_metrics",
    "job_finished", "job_submitted", "policy_decision", "policy_engine_error", "render", "screening_result",
    "training_rate", "watch_audit_appends",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(*, database_url: str | None = None, timeout_s: float = DATABASE_TIMEOUT_S) -> bytes:
    """The text exposition of this process's metrics, plus the database gauges when a URL is given.

    Never raises: a failing part is left out and counted in ``latentops_metrics_errors_total``.
    """
    parts: list[bytes] = []
    try:
        if database_url:
            parts.append(generate_latest(DatabaseCollector(database_url, timeout_s=timeout_s)))
    except Exception:
        METRIC_ERRORS.labels("render_database").inc()
        log.warning("metrics: database gauges could not be rendered", exc_info=True)
    try:
        parts.insert(0, generate_latest(REGISTRY))
    except Exception:
        log.warning("metrics: the process registry could not be rendered", exc_info=True)
    return b"".join(parts)
