"""Gauges read from the database at scrape time: ``DatabaseCollector``.

Jobs by state, queue depth, quarantine size, audit checkpoint and verification ages. The queries
run in a background thread with a short deadline: a slow or unreachable database makes the
scrape report ``latentops_metrics_collector_up{collector="database"} 0`` instead of failing or
hanging. The API's ``/metrics`` adds these; workers do not (every API replica reports the same
values, so dashboards aggregate them with ``max``).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from latentops.governance.tables.witness import AuditCosignature, AuditWitnessStatus
from latentops.platform.database import session_scope
from latentops.platform.metrics.counters import METRIC_ERRORS
from latentops.platform.tables import Asset, AuditCheckpoint, AuditEntry, Job, JobState

log = logging.getLogger(__name__)

QUEUES = ("gpu", "cpu")  # the Celery queues (platform/queue/app.py); kept here so metrics never import Celery
DATABASE_TIMEOUT_S = 2.0


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
        witnesses = _witnesses(session, now)
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
        "witnesses": witnesses,
    }


def _witnesses(session: Any, now: dt.datetime) -> dict[str, Any]:
    """Per witness (name+keyhash) that was ever asked: cosigned the latest checkpoint, age of its
    last cosignature; and how many cosignatures the latest checkpoint has."""
    latest = session.scalar(sa.select(sa.func.max(AuditCheckpoint.id)))
    done = {f"{name}+{key_hash}" for name, key_hash in session.execute(
        sa.select(AuditCosignature.witness, AuditCosignature.key_hash).where(AuditCosignature.checkpoint_id == latest))}
    rows = session.execute(sa.select(AuditWitnessStatus.witness, AuditWitnessStatus.last_success_at)).all()
    return {"cosignatures": len(done),
            "each": [(witness, witness in done, _age(now, last)) for witness, last in rows]}


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
        cosignatures = _gauge("latentops_audit_checkpoint_cosignatures",
                              "Witness cosignatures on the newest audit checkpoint")
        cosigned = _gauge("latentops_audit_witness_cosigned_latest",
                          "1 if the witness cosigned the newest audit checkpoint", ["witness"])
        cosigned_age = _gauge("latentops_audit_witness_last_cosignature_age_seconds",
                              "Time since the witness last cosigned an audit checkpoint", ["witness"])
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
            cosignatures.add_metric([], data["witnesses"]["cosignatures"])
            for witness, done, age in data["witnesses"]["each"]:
                cosigned.add_metric([witness], 1.0 if done else 0.0)
                if age is not None:
                    cosigned_age.add_metric([witness], age)
        yield from (jobs, depth, oldest, quarantine, entries, checkpoint_age, unsigned, verified_age,
                    verification_age, verification_ok, cosignatures, cosigned, cosigned_age)
