"""``GET /api/v1/health`` reports each backing service, and the error shape is stable."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from latentops.core.settings import load_settings
from latentops.platform.api.app import create_app


def test_health_with_broker_down_is_503_and_names_the_broker(broker_down) -> None:  # type: ignore[no-untyped-def]
    response = TestClient(create_app(broker_down)).get("/api/v1/health")
    body = response.json()
    assert response.status_code == 503
    assert body["database"] == {"status": "ok"}
    assert body["broker"]["status"] == "error" and "redis://127.0.0.1:1/0" in body["broker"]["detail"]
    assert body["status"] == "error"


def test_health_with_database_down_reports_it(settings_env, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app

    monkeypatch.setenv("LATENTOPS_BROKER_URL", redis_url)
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    celery_app.cache_clear()
    try:
        response = TestClient(create_app(get_settings())).get("/api/v1/health")
    finally:
        celery_app.cache_clear()
    body = response.json()
    assert response.status_code == 503
    assert body["database"]["status"] == "error" and "127.0.0.1:1" in body["database"]["detail"]
    assert body["broker"] == {"status": "ok"}
    assert body["workers"] == {"status": "none", "workers": []}


def test_unknown_route_uses_the_error_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(create_app(load_settings(home=tmp_path)))
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "Not Found", "reasons": []}
    wrong_method = client.delete("/api/v1/health")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_health_reports_the_policy_revision_and_that_images_are_unscreened(settings_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from latentops.governance import policy

    monkeypatch.setenv("LATENTOPS_NSFWJS_DIR", str(tmp_path / "no-nsfwjs"))  # no converted nsfwjs either

    body = TestClient(create_app(settings_env)).get("/api/v1/health").json()
    assert body["policy"]["status"] == "ok"
    assert body["policy"]["revision"] == policy.revision() and len(body["policy"]["revision"]) == 64
    # No content detector is configured in a fresh home: the platform says so.
    assert body["screening"]["status"] == "unscreened"
    assert "no real content detector" in body["screening"]["detail"].lower()
