"""OPA in bundle mode: the API serves the bundle in force over OPA's bundle service protocol, an
OPA-compatible server pulls it (polling, ETag, bearer token), and the OPA engine trusts a decision
only when OPA made it with the revision in force.

The end-to-end tests run the real API (uvicorn in a subprocess, itself deciding through the same
OPA in bundle mode, like an API pod with its sidecar) and ``tests/opa_compat.py`` with
an OPA configuration pointing at it; the test process plays a worker with its own bundle-mode
engine. Policy data is edited through the product (``policy.set_policy_data``).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import api_server, bearer, free_port, make_token, make_user
from conftest import REPO
from fastapi.testclient import TestClient
from opa_compat import (
    BundleFiles,
    ConfigError,
    OpaCompatServer,
    bundle_sources,
    load_config,
    read_bundle,
)

from latentops.governance import policy
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR, load_bundle
from latentops.governance.policy_engine import CompileError
from latentops.governance.policy_opa import OpaEngine
from latentops.platform.api import policies as policies_api
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.services import tokens as tokens_service
from latentops.platform.tables import ApiToken, PolicyDecision, User

BUNDLE_PATH = "/api/v1/policies/bundle.tar.gz"
OPA_EMAIL = "opa-bundle@example.com"


def _opa_config(service_url: str, token_path: Path, *, low: float = 0.2, high: float = 0.5) -> dict[str, Any]:
    """deploy/k8s/base/opa-config.yaml with the test's API, token file and a faster polling period."""
    config = load_config(REPO / "deploy" / "k8s" / "base" / "opa-config.yaml", {"LATENTOPS_POLICY_BUNDLE_SERVICE": service_url})
    config["services"]["latentops"]["credentials"]["bearer"]["token_path"] = str(token_path)
    config["bundles"]["latentops"]["polling"] = {"min_delay_seconds": low, "max_delay_seconds": high}
    return config


@dataclass
class Stack:
    api: str
    api_process: subprocess.Popen[bytes]
    opa: OpaCompatServer
    token_file: Path
    database_url: str
    admin: str
    reader: str


@pytest.fixture
def stack(settings_env, tmp_path: Path) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """The API (bundle mode, deciding through the OPA) and the OPA pulling its bundle from that API."""
    url = settings_env.database_url
    token_file = tmp_path / "opa-bundle-token"
    token_file.write_text(make_user(url, OPA_EMAIL, "submitter", "platform", scopes=["policy:bundle"]) + "\n")
    admin = make_user(url, "admin@example.com", "admin", "ops")
    reader = make_token(url, "admin@example.com", scopes=["read"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    opa = OpaCompatServer(config=_opa_config(f"{base}/api/v1", token_file)).start()
    try:
        with api_server(tmp_path / "uvicorn.log", port=port, LATENTOPS_POLICY_ENGINE="opa", LATENTOPS_OPA_MODE="bundle",
                        LATENTOPS_OPA_URL=opa.url, LATENTOPS_OPA_BUNDLE_WAIT_S="2") as (_, process):
            yield Stack(base, process, opa, token_file, url, admin, reader)
    finally:
        opa.stop()
        policy.use_service(None)


def _worker_service(stack: Stack, *, wait_s: float) -> policy.PolicyService:
    """This process as a worker: its own bundle-mode engine on the same OPA."""
    service = policy.PolicyService(engine=OpaEngine(stack.opa.url, mode="bundle", bundle_wait_s=wait_s))
    policy.use_service(service)
    return service


def _decide(database_url: str, text: str) -> policy.Decision:
    with session_scope(database_url) as db:
        return policy.decide("prompt", {"prompt": text}, session=db, actor="cli:worker")


def _edit(database_url: str, key: str, value: Any) -> str:
    with session_scope(database_url) as db:
        return policy.set_policy_data(db, key=key, value=value, actor="cli:admin", note="bundle test")


@pytest.mark.one_backend
def test_policy_edits_reach_the_pulling_opa_without_a_restart_and_a_stuck_opa_fails_closed(  # type: ignore[no-untyped-def]
        stack: Stack, monkeypatch) -> None:
    monkeypatch.setattr(policy, "RELOAD_CHECK_S", 0.0)
    service = _worker_service(stack, wait_s=30.0)
    api_pid = stack.api_process.pid

    # 1. OPA pulled the revision in force; decisions come from OPA, made with that revision.
    first = _decide(stack.database_url, "pikachu on a skateboard")
    assert (first.allow, first.rule_ids, first.engine) == (False, ["prompt.protected_name"], "opa")
    assert stack.opa.bundle_status("latentops").revision == first.revision == service.bundle.revision  # type: ignore[union-attr]
    assert service.engine.served_revisions() == {first.revision}  # type: ignore[attr-defined]
    # The API decides through the same OPA: the admin's access to the policy status is OPA's decision.
    shown = httpx.get(f"{stack.api}/api/v1/policies", headers=bearer(stack.admin), timeout=30)
    assert shown.status_code == 200 and shown.json()["revision"] == first.revision and shown.json()["engine"] == "opa"
    # OPA keeps polling; with nothing changed, the API answers 304 Not Modified.
    _wait(lambda: stack.opa.bundle_status("latentops").not_modified >= 1, "a poll answered 304 Not Modified")

    # 2. A policy-data edit through the product: a new revision that OPA pulls; nothing restarts.
    second_revision = _edit(stack.database_url, "prompt.max_length", 10)
    second = _decide(stack.database_url, "a lighthouse at dusk")
    assert second.revision == second_revision != first.revision
    assert (second.allow, second.rule_ids) == (False, ["prompt.too_long"])
    status = stack.opa.bundle_status("latentops")
    assert status.revision == second_revision and status.activations == 2 and status.etag == f'"{second_revision}"'
    assert stack.api_process.poll() is None and stack.api_process.pid == api_pid

    # 3. OPA gets stuck: its token is revoked, the API refuses its pulls, it keeps the second revision.
    with session_scope(stack.database_url) as db:
        token_id = db.scalar(sa.select(ApiToken.id).join(User, User.id == ApiToken.user_id).where(User.email == OPA_EMAIL))
        assert token_id is not None
        tokens_service.revoke_token(db, token_id=token_id, actor="cli:admin")
    failures = stack.opa.bundle_status("latentops").failures
    deadline = time.monotonic() + 15
    while stack.opa.bundle_status("latentops").failures == failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "HTTP 401" in stack.opa.bundle_status("latentops").last_error
    service.engine.bundle_wait_s = 1.0  # type: ignore[attr-defined]
    third_revision = _edit(stack.database_url, "prompt.max_length", 12)
    edited = time.monotonic()
    started = time.monotonic()
    stuck = _decide(stack.database_url, "a lighthouse")
    assert time.monotonic() - started < 10, "the wait for OPA is bounded"
    assert (stuck.allow, stuck.reasons, stuck.rule_ids) == (False, ["policy engine unavailable"], ["policy.engine_unavailable"])
    assert stuck.revision == third_revision and stack.opa.bundle_status("latentops").revision == second_revision
    with session_scope(stack.database_url) as db:
        row = db.get(PolicyDecision, stuck.decision_id)
        assert row is not None and row.allow is False and row.engine == "opa" and row.revision == third_revision
        entry = policy.decision_entry(db, row.id)
        assert entry is not None and entry.outcome == "deny"
        error = json.loads(entry.details)["engine_error"]
        assert f"serves revision {second_revision}" in error and f"not the revision in force {third_revision}" in error
    # The API's own decisions fail closed the same way, recorded, in the standard error shape (once
    # its reload check, every policy.RELOAD_CHECK_S, has taken in the edit)...
    time.sleep(max(0.0, 2.2 - (time.monotonic() - edited)))
    refused = httpx.get(f"{stack.api}/api/v1/policies", headers=bearer(stack.admin), timeout=30)
    assert refused.status_code == 403 and refused.json()["error"] == "policy_denied"
    assert refused.json()["reasons"] == ["policy.engine_unavailable: policy engine unavailable"]
    health = httpx.get(f"{stack.api}/api/v1/health", timeout=30).json()["policy"]
    assert (health["status"], health["revision"], health["served_revision"]) == ("stale", third_revision, second_revision)
    assert f"OPA serves revision {second_revision}" in health["detail"]
    # ...but the bundle route does not depend on that OPA: a valid token still gets the new revision.
    fresh = make_token(stack.database_url, OPA_EMAIL, scopes=["policy:bundle"])
    pulled = httpx.get(f"{stack.api}{BUNDLE_PATH}", headers=bearer(fresh), timeout=30)
    assert pulled.status_code == 200 and pulled.headers["etag"] == f'"{third_revision}"'

    # 4. Recovery without a restart: the new token in OPA's credentials file (read on every pull).
    stack.token_file.write_text(fresh)
    stack.opa.wait_for_revision("latentops", third_revision, timeout_s=30)
    recovered = _decide(stack.database_url, "a lighthouse")
    assert (recovered.allow, recovered.revision, recovered.engine) == (True, third_revision, "opa")
    assert httpx.get(f"{stack.api}/api/v1/policies", headers=bearer(stack.admin), timeout=30).status_code == 200
    health = httpx.get(f"{stack.api}/api/v1/health", timeout=30).json()["policy"]
    assert (health["status"], health["served_revision"]) == ("ok", third_revision)
    assert stack.api_process.poll() is None and stack.api_process.pid == api_pid


def test_live_bundle_endpoint_and_an_opa_that_holds_the_bundle(stack: Stack) -> None:
    status = stack.opa.wait_for_revision("latentops", load_bundle().revision, timeout_s=30)
    assert httpx.get(f"{stack.opa.url}/health?bundles", timeout=5).status_code == 200
    # The endpoint answers OPA's protocol: ETag = revision, 304 while it is current.
    token = stack.token_file.read_text().strip()
    full = httpx.get(f"{stack.api}{BUNDLE_PATH}", headers=bearer(token), timeout=30)
    assert full.status_code == 200 and full.headers["content-type"] == "application/gzip"
    assert full.headers["etag"] == status.etag and read_bundle(full.content).revision == status.revision
    same = httpx.get(f"{stack.api}{BUNDLE_PATH}", headers={**bearer(token), "If-None-Match": status.etag}, timeout=30)
    assert same.status_code == 304 and same.content == b""
    # Wrong scope or no token, decided in process while the API's engine is OPA.
    wrong = httpx.get(f"{stack.api}{BUNDLE_PATH}", headers=bearer(stack.reader), timeout=30)
    assert wrong.status_code == 403 and wrong.json() == {
        "error": "policy_denied", "detail": "access policy denied: this API token's scopes do not allow policies.bundle",
        "reasons": ["access.scope: this API token's scopes do not allow policies.bundle"]}
    assert httpx.get(f"{stack.api}{BUNDLE_PATH}", timeout=30).status_code == 401
    # Pushing to an OPA that serves a bundle is refused, as OPA refuses writes under a bundle's roots.
    with pytest.raises(CompileError, match='path /policy_data is owned by bundle "latentops"'):
        OpaEngine(stack.opa.url, mode="push").load(load_bundle())
    refused = httpx.put(f"{stack.opa.url}/v1/policies/x", content="package latentops.x\nimport rego.v1\ny := 1\n", timeout=5)
    assert refused.status_code == 400 and "owned by bundle" in refused.json()["message"]
    assert stack.opa.bundle_status("latentops").revision == status.revision


# --- the endpoint in process (embedded engine) ---------------------------------------------------


@pytest.fixture
def api(settings_env) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    policy.use_service(None)  # this test's settings and database, not an earlier test's service
    yield TestClient(create_app(settings_env))
    policy.use_service(None)


def test_bundle_endpoint_serves_the_revision_in_force_to_scoped_tokens_only(  # type: ignore[no-untyped-def]
        api: TestClient, settings_env, monkeypatch) -> None:
    url = settings_env.database_url
    opa_token = make_user(url, OPA_EMAIL, "submitter", "platform", scopes=["policy:bundle"])
    everything = make_user(url, "admin@example.com", "admin", "ops")
    reader = make_token(url, "admin@example.com", scopes=["read", "audit"])

    served = api.get(BUNDLE_PATH, headers=bearer(opa_token))
    expected = load_bundle(DEFAULT_POLICY_DIR, [])
    assert served.status_code == 200 and served.headers["etag"] == f'"{expected.revision}"'
    assert served.content == expected.tarball, "the same bytes as `latentops policy bundle` writes"
    files = read_bundle(served.content)
    assert isinstance(files, BundleFiles) and files.revision == expected.revision
    assert files.data["latentops_meta"] == {"revision": expected.revision} and "policy_data" in files.data
    assert not any(name.endswith("_test.rego") for name in files.modules)
    assert api.get(BUNDLE_PATH, headers=bearer(everything)).status_code == 200  # "*" includes policy:bundle

    # 304 when If-None-Match names the revision (strong, weak, in a list, or *); 200 otherwise.
    for header in (f'"{expected.revision}"', f'W/"{expected.revision}"', f'"old", "{expected.revision}"', "*"):
        again = api.get(BUNDLE_PATH, headers={**bearer(opa_token), "If-None-Match": header})
        assert again.status_code == 304 and again.headers["etag"] == f'"{expected.revision}"' and again.content == b"", header
    assert api.get(BUNDLE_PATH, headers={**bearer(opa_token), "If-None-Match": '"old"'}).status_code == 200

    # A policy-data edit gives a new revision and the endpoint serves it (the old ETag gets 200).
    monkeypatch.setattr(policy, "RELOAD_CHECK_S", 0.0)
    with session_scope(url) as db:
        revision = policy.set_policy_data(db, key="prompt.max_length", value=900, actor="cli:admin")
    newer = api.get(BUNDLE_PATH, headers={**bearer(opa_token), "If-None-Match": f'"{expected.revision}"'})
    assert newer.status_code == 200 and newer.headers["etag"] == f'"{revision}"' != f'"{expected.revision}"'
    assert read_bundle(newer.content).data["policy_data"]["prompt"]["max_length"] == 900

    # Refusals, in the standard error shape: no token, a session instead of a token, unknown, wrong scope.
    missing = api.get(BUNDLE_PATH)
    assert missing.status_code == 401 and missing.json()["error"] == "authentication_failed"
    assert missing.json()["detail"].startswith("authorization: the policy bundle is served to API tokens only")
    login = api.post("/api/v1/auth/login", json={"email": "admin@example.com", "password": "correct horse battery staple"})
    assert login.status_code == 200
    assert api.get(BUNDLE_PATH).status_code == 401, "a browser session is not enough"
    api.cookies.clear()
    unknown = api.get(BUNDLE_PATH, headers=bearer("lat_not-a-token"))
    assert unknown.status_code == 401 and unknown.json() == {"error": "authentication_failed", "detail": "token: unknown token",
                                                             "reasons": []}
    wrong = api.get(BUNDLE_PATH, headers=bearer(reader))
    assert wrong.status_code == 403 and wrong.json()["error"] == "policy_denied"
    assert wrong.json()["reasons"] == ["access.scope: this API token's scopes do not allow policies.bundle"]
    # The refusal is recorded like every access denial; a token with only this scope reaches nothing else.
    with session_scope(url) as db:
        denied = db.scalars(sa.select(PolicyDecision).where(PolicyDecision.path == "access", PolicyDecision.allow.is_(False))).all()
        assert [row.rule_ids for row in denied] == [["access.scope"]]
    assert api.get("/api/v1/jobs", headers=bearer(opa_token)).status_code == 403
    assert api.get("/api/v1/policies", headers=bearer(opa_token)).status_code == 403


# --- the OPA-compatible server's side of the protocol ---------------------------------------------


class _BundleServer:
    """A plain HTTP bundle server (the external edge): serves whatever bundle the test sets, records requests."""

    def __init__(self) -> None:
        self.content, self.etag, self.status = b"", "", 200
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(dict(self.headers))
                if outer.status != 200:
                    body = b'{"error": "authentication_failed"}'
                    self.send_response(outer.status)
                elif outer.etag and self.headers.get("If-None-Match") == outer.etag:
                    self.send_response(304)
                    self.send_header("ETag", outer.etag)
                    self.end_headers()
                    return
                else:
                    body = outer.content
                    self.send_response(200)
                    self.send_header("ETag", outer.etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, files: dict[str, str], revision: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, text in {**files, ".manifest": json.dumps({"revision": revision, "roots": ["demo"]})}.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
        self.content, self.etag = buffer.getvalue(), f'"{revision}"'


def _wait(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_compat_server_polls_with_etag_keeps_the_last_good_bundle_and_reports_revisions(tmp_path: Path) -> None:
    source = _BundleServer()
    source.serve({"demo/a.rego": "package demo\nimport rego.v1\nanswer := data.demo.n * 2\n", "demo/data.json": '{"n": 21}'}, "r1")
    token = tmp_path / "token"
    token.write_text("first\n")
    config = {"services": {"s": {"url": source.url, "credentials": {"bearer": {"token_path": str(token)}}}},
              "bundles": {"demo": {"service": "s", "resource": "b.tar.gz", "polling": {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1}}}}
    source.status = 401  # the first pulls are refused: no bundle, and OPA's readiness says so
    opa = OpaCompatServer(config=config).start()
    try:
        _wait(lambda: "HTTP 401" in opa.bundle_status("demo").last_error, "the refused pull")
        assert httpx.get(f"{opa.url}/health?bundles", timeout=5).status_code == 500
        assert httpx.get(f"{opa.url}/health", timeout=5).status_code == 200
        source.status = 200
        status = opa.wait_for_revision("demo", "r1", timeout_s=30)
        assert httpx.post(f"{opa.url}/v1/data/demo/answer?provenance=true", json={"input": {}}, timeout=5).json() == {
            "result": 42, "provenance": {"version": "opa-compat", "bundles": {"demo": {"revision": "r1"}}}}
        assert httpx.get(f"{opa.url}/health?bundles", timeout=5).status_code == 200
        _wait(lambda: opa.bundle_status("demo").not_modified >= 2, "304 answers")
        assert source.requests[0]["Authorization"] == "Bearer first" and "If-None-Match" not in source.requests[0]
        assert status.downloads == status.activations == 1
        assert source.requests[-1]["If-None-Match"] == status.etag == '"r1"'

        # A bundle that does not compile is not activated: the last good one keeps serving.
        source.serve({"demo/a.rego": "package demo\nimport rego.v1\nanswer := 1 +\n"}, "r2")
        _wait(lambda: "not activated" in opa.bundle_status("demo").last_error, "the refused bundle")
        assert opa.bundle_status("demo").revision == "r1"
        assert httpx.post(f"{opa.url}/v1/data/demo/answer", json={"input": {}}, timeout=5).json() == {"result": 42}
        # Data outside the manifest roots is refused too.
        source.serve({"demo/a.rego": "package demo\nimport rego.v1\nanswer := 1\n", "other/data.json": "{}"}, "r3")
        _wait(lambda: "outside the manifest roots" in opa.bundle_status("demo").last_error, "the out-of-roots bundle")

        # The server refusing the credentials: reported, the bundle stays; the token file is read again each time.
        source.status = 401
        _wait(lambda: "HTTP 401" in opa.bundle_status("demo").last_error, "the 401")
        token.write_text("second")
        source.status = 200
        source.serve({"demo/a.rego": "package demo\nimport rego.v1\nanswer := data.demo.n + 1\n", "demo/data.json": '{"n": 1}'}, "r4")
        opa.wait_for_revision("demo", "r4", timeout_s=30)
        assert source.requests[-1]["Authorization"] == "Bearer second"
        assert httpx.post(f"{opa.url}/v1/data/demo/answer", json={"input": {}}, timeout=5).json() == {"result": 2}
        # REST writes under the bundle's roots are refused; elsewhere they are fine.
        owned = httpx.put(f"{opa.url}/v1/data/demo/n", json=5, timeout=5)
        assert owned.status_code == 400 and owned.json()["message"] == 'path /demo/n is owned by bundle "demo"'
        assert httpx.put(f"{opa.url}/v1/data/elsewhere", json={"k": 1}, timeout=5).status_code == 204
    finally:
        opa.stop()
        source.server.shutdown()


def test_deploy_opa_configurations_pull_from_the_api_bundle_route(tmp_path: Path) -> None:
    compose = bundle_sources(load_config(REPO / "deploy" / "compose" / "opa-config.yaml", {"LATENTOPS_OPA_BUNDLE_TOKEN": "lat_x"}))
    k8s = bundle_sources(load_config(REPO / "deploy" / "k8s" / "base" / "opa-config.yaml",
                                     {"LATENTOPS_POLICY_BUNDLE_SERVICE": "http://127.0.0.1:8000/api/v1"}))
    assert [s.url for s in compose] == [f"http://api:8000{BUNDLE_PATH}"] and compose[0].authorization() == "Bearer lat_x"
    assert [s.url for s in k8s] == [f"http://127.0.0.1:8000{BUNDLE_PATH}"] and k8s[0].token_path
    assert {(s.min_delay_s, s.max_delay_s) for s in compose + k8s} == {(2.0, 10.0)}
    assert BUNDLE_PATH.removeprefix("/api/v1") in [route.path for route in policies_api.router.routes]  # type: ignore[attr-defined]
    # An unset variable is empty, as in `opa run`; features the compat server lacks are refused, not ignored.
    (unset,) = bundle_sources(load_config(REPO / "deploy" / "compose" / "opa-config.yaml", {}))
    assert unset.authorization() is None
    with pytest.raises(ConfigError, match="bundles.b: signing not supported"):
        bundle_sources({"services": {"s": {"url": "http://x"}}, "bundles": {"b": {"service": "s", "signing": {"keyid": "k"}}}})
    with pytest.raises(ConfigError, match="decision_logs not supported"):
        bundle_sources({"decision_logs": {"console": True}})


def test_the_opa_mode_is_a_setting_and_push_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from latentops.core.errors import ConfigurationError
    from latentops.core.settings import load_settings

    for key in ("LATENTOPS_OPA_MODE", "LATENTOPS_OPA_BUNDLE_WAIT_S"):
        monkeypatch.delenv(key, raising=False)
    assert (load_settings().opa_mode, load_settings().opa_bundle_wait_s) == ("push", 15.0)
    monkeypatch.setenv("LATENTOPS_OPA_MODE", "pull")
    with pytest.raises(ConfigurationError, match="^LATENTOPS_OPA_MODE: .*'pull'"):
        load_settings()
    monkeypatch.setenv("LATENTOPS_OPA_MODE", "bundle")
    monkeypatch.setenv("LATENTOPS_OPA_BUNDLE_WAIT_S", "3")
    settings = load_settings()
    engine = policy.make_engine("opa", opa_url="http://127.0.0.1:8181", opa_mode=settings.opa_mode,
                                opa_bundle_wait_s=settings.opa_bundle_wait_s)
    assert isinstance(engine, OpaEngine) and (engine.mode, engine.bundle_wait_s) == ("bundle", 3.0)
    with pytest.raises(ValueError, match="LATENTOPS_OPA_MODE: 'pull' is not one of push, bundle"):
        OpaEngine("http://127.0.0.1:8181", mode="pull")
