"""Prometheus metrics: every series latentops exports, with the ``latentops_`` prefix.

Three kinds of metrics live here:

* **Counters and histograms kept in this process**, incremented through the helper functions
  below. Other modules call them; each helper is keyword-only, cheap, and **never raises** (a
  metrics problem is logged once and counted in ``latentops_metrics_errors_total``; it must never
  fail a request or a job)::

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
  audit checkpoint and verification ages) by ``DatabaseCollector``. The queries run in a
  background thread with a short deadline: a slow or unreachable database makes the scrape
  report ``latentops_metrics_collector_up{collector="database"} 0`` instead of failing or hanging.
  The API's ``/metrics`` adds these; workers do not (every API replica reports the same values,
  so dashboards aggregate them with ``max``).

* **GPU gauges** from NVML (``pynvml`` from the ``nvidia-ml-py`` package) by ``GpuCollector``,
  registered on workers only (``enable_gpu_metrics``). Without the library or a driver it exports
  ``latentops_gpu_nvml_available 0`` and nothing else.

Everything is on prometheus-client's default registry, so counters that other modules declare
themselves (``latentops_audit_integrity_alarms_total`` in governance/audit.py) are exported too.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, ParamSpec

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

from latentops.platform.database import session_scope
from latentops.platform.models import Asset, AuditCheckpoint, AuditEntry, Job, JobState

log = logging.getLogger(__name__)

PREFIX = "latentops_"
CONTENT_TYPE = CONTENT_TYPE_LATEST
QUEUES = ("gpu", "cpu")  # the Celery queues (platform/queue/app.py); kept here so metrics never import Celery
DATABASE_TIMEOUT_S = 2.0
MAX_LABEL_LENGTH = 120

# Jobs run from seconds (diagnostics) to many hours (DreamBooth on a large set).
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POLICY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# --- process metrics ---------------------------------------------------------------------------

JOBS_SUBMITTED = Counter("latentops_jobs_submitted_total", "Jobs written and handed to the broker",
                         ["kind", "queue"])
JOBS_FINISHED = Counter("latentops_jobs_finished_total", "Job attempts that ended on this worker, by final state",
                        ["kind", "queue", "state"])
JOB_DURATION = Histogram("latentops_job_duration_seconds", "Wall time of one job attempt on a worker",
                         ["kind", "queue", "state"], buckets=JOB_BUCKETS)
TRAINING_RATE = Gauge("latentops_training_steps_per_second", "Steps per second of the job running in this worker process",
                      ["kind"])
POLICY_DECISIONS = Counter("latentops_policy_decisions_total", "Policy decisions by policy path and outcome (allow, deny)",
                           ["path", "outcome"])
POLICY_DENIALS = Counter("latentops_policy_denials_total", "Deny reasons by the rule id that produced them",
                         ["path", "rule"])
POLICY_DURATION = Histogram("latentops_policy_evaluation_seconds", "Time to evaluate one policy decision",
                            ["engine"], buckets=POLICY_BUCKETS)
POLICY_ENGINE_ERRORS = Counter("latentops_policy_engine_errors_total",
                               "Evaluations the engine could not answer (the caller denied: fail closed)",
                               ["engine", "reason"])
SCREENING_RESULTS = Counter("latentops_screening_results_total", "Screened images by verdict and model version",
                            ["verdict", "model_version"])
SCREENING_FLAGS = Counter("latentops_screening_flags_total", "Screening flags by category and model version",
                          ["category", "model_version"])
AUDIT_APPENDS = Counter("latentops_audit_appends_total", "Audit entries committed, by action domain (job, model, ...)",
                        ["domain"])
API_LATENCY = Histogram("latentops_api_request_duration_seconds", "API request latency by route template and status",
                        ["method", "route", "status"], buckets=API_BUCKETS)
METRIC_ERRORS = Counter("latentops_metrics_errors_total", "Metrics helpers or collectors that failed (the caller was not)",
                        ["source"])

P = ParamSpec("P")
_warned: set[str] = set()


def _label(value: object) -> str:
    text = "" if value is None else str(value)
    return text[:MAX_LABEL_LENGTH]


def _never_raises(function: Callable[P, None]) -> Callable[P, None]:
    """Metrics are advisory: a bad label or a broken registry is logged once, never raised."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            if function.__name__ not in _warned:
                _warned.add(function.__name__)
                log.warning("metrics helper %s failed; further failures are only counted", function.__name__,
                            exc_info=True)
            try:
                METRIC_ERRORS.labels(function.__name__).inc()
            except Exception:  # the registry itself is broken: nothing more to do
                log.debug("metrics: could not count a helper failure", exc_info=True)

    return wrapper


# --- helpers other modules call ----------------------------------------------------------------


@_never_raises
def job_submitted(*, kind: str, queue: str) -> None:
    """A job was written and its id handed to the broker."""
    JOBS_SUBMITTED.labels(_label(kind), _label(queue)).inc()


@_never_raises
def job_finished(*, kind: str, queue: str, state: str, duration_s: float) -> None:
    """One attempt of a job ended on this worker (``state``: succeeded, failed, cancelled)."""
    JOBS_FINISHED.labels(_label(kind), _label(queue), _label(state)).inc()
    JOB_DURATION.labels(_label(kind), _label(queue), _label(state)).observe(max(float(duration_s), 0.0))
    # The process no longer trains: its rate must not linger at the last value.
    TRAINING_RATE.labels(_label(kind)).set(0.0)


@_never_raises
def training_rate(*, kind: str, steps_per_second: float) -> None:
    """The current steps per second of the job this process runs."""
    TRAINING_RATE.labels(_label(kind)).set(float(steps_per_second))


@_never_raises
def policy_decision(*, path: str, allow: bool, rule_ids: Iterable[str] = (), engine: str = "",
                    duration_s: float | None = None) -> None:
    """A decision was made: one count per decision, and one per deny rule that fired."""
    POLICY_DECISIONS.labels(_label(path), "allow" if allow else "deny").inc()
    for rule in set(rule_ids):
        POLICY_DENIALS.labels(_label(path), _label(rule)).inc()
    if duration_s is not None:
        POLICY_DURATION.labels(_label(engine)).observe(max(float(duration_s), 0.0))


@_never_raises
def policy_engine_error(*, engine: str, reason: str) -> None:
    """The engine could not answer (``reason``: a short word such as timeout, unreachable, malformed)."""
    POLICY_ENGINE_ERRORS.labels(_label(engine), _label(reason)).inc()


@_never_raises
def screening_result(*, model_version: str | int | None, flagged_categories: Iterable[str] = ()) -> None:
    """An image was screened; ``flagged_categories`` are the categories that flagged it (none: released)."""
    version = _label(model_version) or "unknown"
    categories = sorted({_label(category) for category in flagged_categories})
    SCREENING_RESULTS.labels("flagged" if categories else "released", version).inc()
    for category in categories:
        SCREENING_FLAGS.labels(category, version).inc()


@_never_raises
def audit_appended(*, action: str, count: int = 1) -> None:
    """Audit entries were committed (``watch_audit_appends`` calls this; no need to call it twice)."""
    AUDIT_APPENDS.labels(_label(action.split(".", 1)[0])).inc(count)


@_never_raises
def api_request(*, method: str, route: str, status: int, duration_s: float) -> None:
    API_LATENCY.labels(_label(method), _label(route), str(status)).observe(max(float(duration_s), 0.0))


# --- audit appends, counted when their transaction commits -------------------------------------

_AUDIT_KEY = "latentops.audit.appended"  # audit.APPENDS_KEY: audit.record notes each append there
_audit_watch_lock = threading.Lock()
_audit_watched = False


def _count_committed(session: Session) -> None:
    try:
        for action in session.info.pop(_AUDIT_KEY, ()):
            audit_appended(action=action)
    except Exception:  # noqa: BLE001 - counting must never fail the commit it observes
        METRIC_ERRORS.labels("audit_watch").inc()


def _forget_rolled_back(session: Session, _previous_transaction: Any = None) -> None:
    session.info.pop(_AUDIT_KEY, None)


def watch_audit_appends() -> None:
    """Count committed audit entries in this process (idempotent; rolled-back entries are not counted)."""
    global _audit_watched
    with _audit_watch_lock:
        if _audit_watched:
            return
        event.listen(Session, "after_commit", _count_committed)
        event.listen(Session, "after_soft_rollback", _forget_rolled_back)
        _audit_watched = True


# --- gauges read from the database at scrape time ----------------------------------------------


def _age(now: dt.datetime, at: dt.datetime | None) -> float | None:
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return max((now - at).total_seconds(), 0.0)


def _read_database(url: str, timeout_s: float) -> dict[str, Any]:
    """One consistent read of everything the database gauges need."""
    now = dt.datetime.now(dt.UTC)
    with session_scope(url) as session:
        if session.get_bind().dialect.name == "postgresql":
            # The thread is abandoned at the deadline; this makes PostgreSQL stop its query too.
            session.execute(sa.text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
        jobs = session.execute(sa.select(Job.queue, Job.state, sa.func.count(Job.id)).group_by(Job.queue, Job.state)).all()
        oldest = session.execute(
            sa.select(Job.queue, sa.func.min(sa.func.coalesce(Job.dispatched_at, Job.created_at)))
            .where(Job.state.in_([JobState.QUEUED, JobState.RETRYING])).group_by(Job.queue)
        ).all()
        quarantined = session.scalar(sa.select(sa.func.count(Asset.id)).where(Asset.status == "quarantined"))
        last_seq = session.scalar(sa.select(sa.func.max(AuditEntry.seq)))
        checkpoint = session.execute(
            sa.select(AuditCheckpoint.tree_size, AuditCheckpoint.at).order_by(AuditCheckpoint.id.desc()).limit(1)
        ).first()
        verify = sa.select(AuditEntry.at, AuditEntry.outcome, AuditEntry.details).where(AuditEntry.action == "audit.verify")
        last_verify = session.execute(verify.order_by(AuditEntry.seq.desc()).limit(1)).first()
        last_ok = session.execute(
            verify.where(AuditEntry.outcome == "success").order_by(AuditEntry.seq.desc()).limit(1)
        ).first()
        verified_checkpoint_at = None
        if last_ok is not None:
            verified_size = _verified_tree_size(last_ok.details)
            if verified_size is not None:
                verified_checkpoint_at = session.scalar(
                    sa.select(sa.func.max(AuditCheckpoint.at)).where(AuditCheckpoint.tree_size <= verified_size)
                )
    return {
        "jobs": [(queue, JobState(state).value, int(count)) for queue, state, count in jobs],
        "oldest": {queue: _age(now, at) for queue, at in oldest},
        "quarantined": int(quarantined or 0),
        "audit_entries": 0 if last_seq is None else int(last_seq) + 1,
        "checkpoint": None if checkpoint is None else (int(checkpoint.tree_size), _age(now, checkpoint.at)),
        "last_verify": None if last_verify is None else (last_verify.outcome == "success", _age(now, last_verify.at)),
        "last_ok_age": None if last_ok is None else _age(now, last_ok.at),
        "verified_checkpoint_age": _age(now, verified_checkpoint_at),
    }


def _verified_tree_size(details: str) -> int | None:
    try:
        size = json.loads(details).get("tree_size")
    except (ValueError, AttributeError):
        return None
    return int(size) if isinstance(size, int) else None


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class DatabaseCollector(Collector):
    """Gauges computed from the database when scraped, within ``timeout_s``.

    At most one read per database runs at a time: if the previous one is still stuck past its
    deadline, the scrape reports the collector down at once instead of piling up threads.
    """

    _executor: ClassVar = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="metrics-db")
    _in_flight: ClassVar[dict[str, concurrent.futures.Future[dict[str, Any]]]] = {}
    _lock: ClassVar = threading.Lock()

    def __init__(self, database_url: str, *, timeout_s: float = DATABASE_TIMEOUT_S) -> None:
        self.database_url = database_url
        self.timeout_s = timeout_s

    def _read(self) -> dict[str, Any] | None:
        with self._lock:
            future = self._in_flight.get(self.database_url)
            if future is None or future.done():
                future = self._executor.submit(_read_database, self.database_url, self.timeout_s)
                self._in_flight[self.database_url] = future
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            log.warning("metrics: database read took longer than %.1fs; database gauges skipped", self.timeout_s)
            METRIC_ERRORS.labels("database_timeout").inc()
        except Exception as error:  # noqa: BLE001 - a scrape must still answer
            log.warning("metrics: database read failed (%s); database gauges skipped", str(error).splitlines()[0][:200])
            METRIC_ERRORS.labels("database").inc()
        return None

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not query the database.
        yield from self._families(None, 0.0)

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        data = self._read()
        yield from self._families(data, time.monotonic() - started)

    def _families(self, data: dict[str, Any] | None, elapsed: float) -> Iterator[Metric]:
        up = _gauge("latentops_metrics_collector_up", "1 if the collector answered within its deadline", ["collector"])
        up.add_metric(["database"], 0.0 if data is None else 1.0)
        yield up
        took = _gauge("latentops_metrics_collector_duration_seconds", "Time the collector took", ["collector"])
        took.add_metric(["database"], elapsed)
        yield took
        jobs = _gauge("latentops_jobs", "Jobs in the database by queue and state", ["queue", "state"])
        depth = _gauge("latentops_queue_depth", "Jobs waiting to run (queued or retrying) by queue", ["queue"])
        oldest = _gauge("latentops_queue_oldest_job_age_seconds", "Time since the longest-waiting job was (last) handed to the broker", ["queue"])
        quarantine = _gauge("latentops_quarantine_size", "Images held in quarantine for compliance review")
        entries = _gauge("latentops_audit_entries", "Entries in the audit log (tree size)")
        checkpoint_age = _gauge("latentops_audit_checkpoint_age_seconds", "Age of the newest signed audit checkpoint")
        unsigned = _gauge("latentops_audit_entries_since_checkpoint", "Audit entries not yet covered by a signed checkpoint")
        verified_age = _gauge("latentops_audit_verified_checkpoint_age_seconds",
                              "Age of the newest checkpoint covered by the last successful verification")
        verification_age = _gauge("latentops_audit_verification_age_seconds",
                                  "Time since the audit trail last verified intact (latentops audit verify)")
        verification_ok = _gauge("latentops_audit_verification_ok", "1 if the latest audit verification found the trail intact")
        if data is not None:
            counts = {(queue, state): count for queue, state, count in data["jobs"]}
            for queue in sorted(set(QUEUES) | {queue for queue, _ in counts}):
                for state in JobState:
                    jobs.add_metric([queue, state.value], counts.get((queue, state.value), 0))
                depth.add_metric([queue], counts.get((queue, "queued"), 0) + counts.get((queue, "retrying"), 0))
                oldest.add_metric([queue], data["oldest"].get(queue) or 0.0)
            quarantine.add_metric([], data["quarantined"])
            entries.add_metric([], data["audit_entries"])
            if data["checkpoint"] is not None:
                size, age = data["checkpoint"]
                checkpoint_age.add_metric([], age)
                unsigned.add_metric([], max(data["audit_entries"] - size, 0))
            else:
                unsigned.add_metric([], data["audit_entries"])
            if data["verified_checkpoint_age"] is not None:
                verified_age.add_metric([], data["verified_checkpoint_age"])
            if data["last_ok_age"] is not None:
                verification_age.add_metric([], data["last_ok_age"])
            if data["last_verify"] is not None:
                verification_ok.add_metric([], 1.0 if data["last_verify"][0] else 0.0)
        yield from (jobs, depth, oldest, quarantine, entries, checkpoint_age, unsigned, verified_age,
                    verification_age, verification_ok)


# --- GPUs through NVML -------------------------------------------------------------------------


class GpuCollector(Collector):
    """Utilisation and memory of the GPUs this process may use, read through NVML at scrape time.

    Only the devices named in ``CUDA_VISIBLE_DEVICES`` (a worker child is pinned to one) are
    reported, by their physical index. No library, no driver or no GPU: nothing but
    ``latentops_gpu_nvml_available 0``.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _library(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml  # nvidia-ml-py

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as error:  # noqa: BLE001 - no library, no driver, no device: a CPU worker
                log.info("NVML unavailable (%s); GPU metrics off", error)
        return self._nvml

    @staticmethod
    def _visible(count: int) -> list[int]:
        wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
        if wanted is None or not wanted.strip():
            return list(range(count))
        indices = [part.strip() for part in wanted.split(",")]
        if all(part.isdigit() for part in indices):
            return [int(part) for part in indices if int(part) < count]
        return list(range(count))  # UUIDs or MIG names: report every device the driver shows

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._families(self._library())
        except Exception:
            METRIC_ERRORS.labels("gpu").inc()
            log.warning("metrics: reading NVML failed", exc_info=True)

    def _families(self, nvml: Any) -> Iterator[Metric]:
        available = _gauge("latentops_gpu_nvml_available", "1 if NVML answered on this worker")
        utilisation = _gauge("latentops_gpu_utilization_percent", "GPU busy percentage over the last sample period",
                             ["gpu", "name"])
        used = _gauge("latentops_gpu_memory_used_bytes", "GPU memory in use (all processes)", ["gpu", "name"])
        total = _gauge("latentops_gpu_memory_total_bytes", "GPU memory installed", ["gpu", "name"])
        torch_allocated = _gauge("latentops_gpu_torch_allocated_bytes", "GPU memory held by this process's tensors",
                                 ["device"])
        available.add_metric([], 0.0 if nvml is None else 1.0)
        if nvml is not None:
            for index in self._visible(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilisation.add_metric([str(index), name], float(rates.gpu))
                used.add_metric([str(index), name], float(memory.used))
                total.add_metric([str(index), name], float(memory.total))
        torch = sys.modules.get("torch")  # never import torch for a scrape; report only if a job loaded it
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for device in range(torch.cuda.device_count()):
                torch_allocated.add_metric([str(device)], float(torch.cuda.memory_allocated(device)))
        yield from (available, utilisation, used, total, torch_allocated)


_gpu_collector: GpuCollector | None = None


def enable_gpu_metrics() -> None:
    """Export GPU gauges from this process (workers call this once; idempotent)."""
    global _gpu_collector
    with _audit_watch_lock:
        if _gpu_collector is None:
            _gpu_collector = GpuCollector()
            REGISTRY.register(_gpu_collector)


# --- exposition --------------------------------------------------------------------------------


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

