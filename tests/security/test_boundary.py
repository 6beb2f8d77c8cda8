"""The request boundary: JSON nesting and size limits answer 422/413 in the one error shape and
store nothing; data nested too deeply for the parser is a 422, not a 500; and an error that no
handler takes is still a JSON (or, for portal pages, HTML) answer, never Starlette's plain text."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user
from fastapi.testclient import TestClient
from PIL import Image

from latentops.core.settings import get_settings
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import ApiToken, Job, PolicyDecision, User

SHAPE = {"error", "detail", "reasons"}


def nested(depth: int) -> str:
    """A JSON array nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def _counts(database_url: str) -> tuple[int, int, int, int]:
    with session_scope(database_url) as session:
        return tuple(int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)  # type: ignore[return-value]
                     for model in (Job, PolicyDecision, User, ApiToken))


@pytest.fixture
def admin(settings_env) -> tuple[TestClient, dict[str, str]]:  # type: ignore[no-untyped-def]
    token = make_user(settings_env.database_url, "dave@example.com", "admin", "ops")
    return TestClient(create_app(settings_env)), bearer(token)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_deeply_nested_finetune_params_get_422_and_nothing_is_stored(admin, settings_env) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    before = _counts(settings_env.database_url)
    answer = api.post("/api/v1/finetune", headers=headers,
                      data={"model": "demo-tiny", "params": '{"a": ' + nested(4000) + "}"},
                      files=[("images", ("cat-01.png", _png(), "image/png"))])
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert set(body) == SHAPE and body["error"] == "invalid_input"
    assert body["detail"] == "params: JSON nested deeper than the limit of 32 levels (LATENTOPS_MAX_JSON_DEPTH)"
    assert _counts(settings_env.database_url) == before
    assert not (settings_env.home / "uploads").exists() or not any((settings_env.home / "uploads").iterdir())


def test_deeply_nested_policy_evaluate_body_gets_422_naming_the_limit(admin, settings_env) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    before = _counts(settings_env.database_url)
    deep = '{"input": {"prompt": "a cat", "extra": ' + nested(2000) + "}}"
    answer = api.post("/api/v1/policies/prompt/evaluate", headers={**headers, "content-type": "application/json"},
                      content=deep)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": "invalid_input",
        "detail": "body: JSON nested deeper than the limit of 32 levels (LATENTOPS_MAX_JSON_DEPTH)",
        "reasons": [{"field": "body", "limit": "max_json_depth", "max_depth": 32}]}
    assert _counts(settings_env.database_url) == before  # no decision recorded

    # At the limit the same route decides as usual.
    within = {"input": {"prompt": "a cat", "extra": json.loads(nested(29))}}
    decided = api.post("/api/v1/policies/prompt/evaluate", headers=headers, json=within)
    assert decided.status_code == 200, decided.text
    assert _counts(settings_env.database_url)[1] == before[1] + 1


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/users", "/api/v1/jobs", "/api/v1/auth/login"])
@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json", None])
def test_every_json_route_refuses_deep_nesting(admin, settings_env, path: str, content_type: str | None) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    before = _counts(settings_env.database_url)
    sent = {**headers, **({"content-type": content_type} if content_type else {})}
    answer = api.post(path, headers=sent, content='{"name": ' + nested(50_000) + "}")
    assert answer.status_code == 422, answer.text
    assert set(answer.json()) == SHAPE and answer.json()["reasons"][0]["limit"] == "max_json_depth"
    assert _counts(settings_env.database_url) == before


def test_json_body_over_the_size_limit_gets_413_declared_or_streamed(admin, settings_env) -> None:  # type: ignore[no-untyped-def]
    api, headers = admin
    before = _counts(settings_env.database_url)
    big = json.dumps({"name": "x", "scopes": ["*"], "padding": "p" * (1024 * 1024)})
    declared = api.post("/api/v1/tokens", headers={**headers, "content-type": "application/json"}, content=big)
    assert declared.status_code == 413
    assert declared.json() == {
        "error": "payload_too_large",
        "detail": "request body: JSON larger than the limit of 1048576 bytes (LATENTOPS_MAX_JSON_BYTES)",
        "reasons": [{"field": "body", "limit": "max_json_bytes", "limit_bytes": 1048576}]}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        data = big.encode()
        for start in range(0, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]

    streamed = api.post("/api/v1/tokens", headers={**headers, "content-type": "application/json"}, content=chunks())
    assert streamed.status_code == 413 and streamed.json()["error"] == "payload_too_large"
    assert _counts(settings_env.database_url) == before
    small = api.post("/api/v1/tokens", headers=headers, json={"name": "fits"})
    assert small.status_code == 201


def test_json_limits_come_from_the_settings(settings_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LATENTOPS_MAX_JSON_DEPTH", "4")
    monkeypatch.setenv("LATENTOPS_MAX_JSON_BYTES", "2048")
    get_settings.cache_clear()
    api = TestClient(create_app(get_settings()))
    deep = api.post("/api/v1/auth/login", json={"email": [[[["x"]]]], "password": "y"})
    assert deep.status_code == 422 and deep.json()["reasons"] == [{"field": "body", "limit": "max_json_depth",
                                                                     "max_depth": 4}]
    big = api.post("/api/v1/auth/login", json={"email": "x" * 3000, "password": "y"})
    assert big.status_code == 413 and "2048 bytes" in big.json()["detail"]


def test_an_unhandled_error_is_a_json_500_for_the_api_and_html_for_pages(settings_env, caplog) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings_env)

    def broken() -> None:
        raise RuntimeError("a server bug")

    # A route with a bug, on the real application and its real middleware.
    app.add_api_route("/api/v1/broken", broken)
    app.add_api_route("/broken", broken)
    api = TestClient(app)  # raises if an exception escapes the application
    answer = api.get("/api/v1/broken")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "internal_error",
                             "detail": "the server failed to answer this request; the error is logged", "reasons": []}
    assert "a server bug" not in answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"  # still inside the security headers
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)

    page = api.get("/broken")
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "internal_error" in page.text and "a server bug" not in page.text
