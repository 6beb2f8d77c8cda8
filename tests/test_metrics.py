"""Prometheus metrics on the API: scraped with the real app after real actions, on SQLite and
PostgreSQL; a failing or hanging database never fails the scrape or any other request."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from job_helpers import queued_job
from prometheus_client.parser import text_string_to_metric_families

from latentops.core.settings import load_settings
from latentops.governance import audit
from latentops.platform import metrics
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.metrics.db import DatabaseCollector
from latentops.platform.services import jobs
from latentops.platform.tables import Asset, AuditEntry


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample in an exposition, keyed by name and label set."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(client: TestClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_scrape_reports_jobs_quarantine_audit_and_latency_after_real_actions(settings_env, cli) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    with TestClient(create_app(settings_env)) as client:
        appends_before = value(scrape(client), "latentops_audit_appends_total", domain="job") or 0.0
        with session_scope(url) as db:
            for _ in range(3):
                queued_job(db, kind="diagnostics", params={"steps": 2}, actor="tester")
        with session_scope(url) as db:
            jobs.cancel(db, job_id=1, actor="tester")
            db.add(Asset(seed=1, prompt_ref="0" * 64, content_hash="a" * 64, path="/x.png", status="quarantined"))
            db.add(Asset(seed=2, prompt_ref="0" * 64, content_hash="b" * 64, path="/y.png", status="released"))
        # A signed checkpoint and a verification, through the real CLI.
        assert cli("audit", "checkpoint").returncode == 0
        verified = cli("audit", "verify")
        assert verified.returncode == 0, verified.stderr
        for _ in range(2):
            assert client.get("/api/v1/health").status_code in (200, 503)
        assert client.get("/api/v1/no-such-route").status_code == 404

        text = scrape(client)

    assert value(text, "latentops_metrics_collector_up", collector="database") == 1.0
    assert value(text, "latentops_jobs", queue="gpu", state="queued") == 2.0
    assert value(text, "latentops_jobs", queue="gpu", state="cancelled") == 1.0
    assert value(text, "latentops_jobs", queue="gpu", state="running") == 0.0
    assert value(text, "latentops_jobs", queue="cpu", state="queued") == 0.0
    assert value(text, "latentops_queue_depth", queue="gpu") == 2.0
    assert value(text, "latentops_queue_depth", queue="cpu") == 0.0
    assert (value(text, "latentops_queue_oldest_job_age_seconds", queue="gpu") or -1) >= 0.0
    assert value(text, "latentops_quarantine_size") == 1.0

    with session_scope(url) as db:
        entries = db.scalar(sa.select(sa.func.count(AuditEntry.seq)))
    assert value(text, "latentops_audit_entries") == float(entries)
    # The checkpoint covers everything before the verify entry; only that entry is unsigned.
    assert value(text, "latentops_audit_entries_since_checkpoint") == 1.0
    assert 0.0 <= (value(text, "latentops_audit_checkpoint_age_seconds") or -1) < 300
    assert 0.0 <= (value(text, "latentops_audit_verified_checkpoint_age_seconds") or -1) < 300
    assert 0.0 <= (value(text, "latentops_audit_verification_age_seconds") or -1) < 300
    assert value(text, "latentops_audit_verification_ok") == 1.0
    # Three submits and one cancel were committed in this process and counted by domain.
    assert value(text, "latentops_audit_appends_total", domain="job") == appends_before + 4

    health = value(text, "latentops_api_request_duration_seconds_count", method="GET", route="/api/v1/health",
                   status="200") or value(text, "latentops_api_request_duration_seconds_count", method="GET",
                                          route="/api/v1/health", status="503")
    assert health is not None and health >= 2
    assert (value(text, "latentops_api_request_duration_seconds_count", method="GET", route="<unmatched>",
                  status="404") or 0) >= 1
    # Raw paths never become labels.
    assert "no-such-route" not in text


def test_failed_verification_is_reported(settings_env, cli) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings_env.database_url) as db:
        audit.record(db, actor="tester", action="audit.verify", resource="audit:log", outcome="failure",
                     details={"ok": False})
    with TestClient(create_app(settings_env)) as client:
        text = scrape(client)
    assert value(text, "latentops_audit_verification_ok") == 0.0
    # Never verified intact: no age is exported, so the stale alert's absent() branch fires.
    assert value(text, "latentops_audit_verification_age_seconds") is None
    assert value(text, "latentops_audit_checkpoint_age_seconds") is None
    assert value(text, "latentops_audit_entries_since_checkpoint") == 1.0


def test_unreachable_database_leaves_scrape_and_requests_working(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LATENTOPS_DATABASE_URL", raising=False)
    settings = load_settings(home=tmp_path, database_url="postgresql://postgres@127.0.0.1:9/nowhere",
                             broker_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings)) as client:
        errors_before = value(scrape(client), "latentops_metrics_errors_total", source="database") or 0.0
        text = scrape(client)
        assert client.get("/api/v1/health").status_code == 503  # the health route still answers
    assert value(text, "latentops_metrics_collector_up", collector="database") == 0.0
    assert value(text, "latentops_metrics_errors_total", source="database") == errors_before + 1
    assert value(text, "latentops_jobs", queue="gpu", state="queued") is None
    # The process's own metrics are still there.
    assert "latentops_api_request_duration_seconds_bucket" in text


def test_unreadable_sqlite_file_is_a_collector_error_not_a_failed_scrape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    damaged = tmp_path / "latentops.db"
    damaged.write_bytes(b"this is not a database" * 100)
    settings = load_settings(home=tmp_path, database_url=f"sqlite:///{damaged}", broker_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings)) as client:
        text = scrape(client)
    assert value(text, "latentops_metrics_collector_up", collector="database") == 0.0


@pytest.mark.postgres
def test_a_hanging_database_query_times_out_instead_of_blocking_the_scrape(postgres_url) -> None:  # type: ignore[no-untyped-def]
    # Another transaction holds an exclusive lock on jobs: the collector's read blocks on it.
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with session_scope(postgres_url) as db:
            db.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        text = metrics.render(database_url=postgres_url, timeout_s=0.5)
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert took < 5.0
    assert value(text.decode(), "latentops_metrics_collector_up", collector="database") == 0.0
    # Once the lock is gone and the abandoned read has ended (its statement timeout, or the lock's
    # release), the next scrape reads the database again.
    abandoned = DatabaseCollector._in_flight[postgres_url]
    assert abandoned in concurrent.futures.wait([abandoned], timeout=10).done
    again = metrics.render(database_url=postgres_url, timeout_s=5.0).decode()
    assert value(again, "latentops_metrics_collector_up", collector="database") == 1.0


def test_helpers_never_raise_and_count_their_own_failures() -> None:
    before = value(metrics.render().decode(), "latentops_metrics_errors_total", source="job_finished") or 0.0
    metrics.job_finished(kind="diagnostics", queue="gpu", state="succeeded", duration_s="soon")  # type: ignore[arg-type]
    metrics.training_rate(kind="lora", steps_per_second=None)  # type: ignore[arg-type]
    text = metrics.render().decode()
    assert value(text, "latentops_metrics_errors_total", source="job_finished") == before + 1
    assert value(text, "latentops_metrics_errors_total", source="training_rate") is not None


def test_helpers_record_policy_and_screening_outcomes() -> None:
    def read(name: str, **labels: str) -> float:
        return value(metrics.render().decode(), name, **labels) or 0.0

    denied = read("latentops_policy_decisions_total", path="test/decision", outcome="deny")
    rule = read("latentops_policy_denials_total", path="test/decision", rule="test.rule")
    metrics.policy_decision(path="test/decision", allow=False, rule_ids=["test.rule", "test.rule"], engine="embedded",
                            duration_s=0.01)
    metrics.policy_decision(path="test/decision", allow=True, engine="embedded", duration_s=0.01)
    metrics.policy_engine_error(engine="opa", reason="timeout")
    metrics.screening_result(model_version="tiny@1", flagged_categories=["violence", "nudity"])
    metrics.screening_result(model_version="tiny@1")
    assert read("latentops_policy_decisions_total", path="test/decision", outcome="deny") == denied + 1
    assert read("latentops_policy_denials_total", path="test/decision", rule="test.rule") == rule + 1  # once per decision
    assert read("latentops_policy_engine_errors_total", engine="opa", reason="timeout") >= 1
    assert read("latentops_screening_flags_total", category="nudity", model_version="tiny@1") >= 1
    assert read("latentops_screening_results_total", verdict="released", model_version="tiny@1") >= 1
    assert read("latentops_screening_results_total", verdict="flagged", model_version="tiny@1") >= 1


def test_rolled_back_audit_entries_are_not_counted(sqlite_url) -> None:  # type: ignore[no-untyped-def]
    metrics.watch_audit_appends()

    def appends() -> float:
        return value(metrics.render().decode(), "latentops_audit_appends_total", domain="metricstest") or 0.0

    before = appends()
    with pytest.raises(RuntimeError), session_scope(sqlite_url) as db:
        audit.record(db, actor="tester", action="metricstest.one", resource="x:1")
        raise RuntimeError("roll back")
    assert appends() == before
    with session_scope(sqlite_url) as db:
        audit.record(db, actor="tester", action="metricstest.one", resource="x:1")
        audit.record(db, actor="tester", action="metricstest.two", resource="x:2")
    assert appends() == before + 2
