"""Schemathesis against the OpenAPI spec: generated requests to every operation, as an admin and a
compliance officer, never get a 5xx (other than 503 for the broker this test does not start), and
every JSON error uses the one shape {error, detail, reasons}."""

from __future__ import annotations

import pytest
import schemathesis
from api_helpers import bearer, make_user
from hypothesis import HealthCheck, given, settings

from latentops.platform.api.app import create_app


@pytest.mark.slow
def test_no_server_errors_and_one_error_shape(settings_env) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings_env)
    tokens = {"admin": make_user(settings_env.database_url, "dave@example.com", "admin", "ops"),
              "officer": make_user(settings_env.database_url, "carol@example.com", "compliance_officer", "compliance")}
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/progress"):
            continue  # a stream that lasts until its job finishes; covered in test_api.py
        role = "officer" if operation.path.startswith(("/api/v1/audit", "/api/v1/quarantine")) else "admin"

        _checker(operation.as_strategy(), tokens[role])()
        checked += 1
    assert checked >= 35


def _checker(strategy, token: str):  # type: ignore[no-untyped-def]
    """A Hypothesis test for one operation, sending ``token``'s bearer header."""

    @given(case=strategy)
    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(headers=bearer(token))
        # 503 names a backing service that is down (no broker in this test); anything else 5xx is a bug.
        assert response.status_code < 500 or response.status_code == 503, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
        content_type = " ".join(response.headers.get("content-type") or [])
        if response.status_code >= 400 and content_type.startswith("application/json") and "health" not in case.path:
            assert set(response.json()) == {"error", "detail", "reasons"}, response.text[:300]

    return check
