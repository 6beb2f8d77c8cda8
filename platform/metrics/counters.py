"""Counters and histograms kept in this process, and the helpers other modules call to move them.

Each helper is keyword-only, cheap, and **never raises**: a metrics problem is logged once and
counted in ``latentops_metrics_errors_total``; it must never fail a request or a job. Audit appends
are counted when their transaction commits (``watch_audit_appends``), never when rolled back.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PREFIX = "latentops_"
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
