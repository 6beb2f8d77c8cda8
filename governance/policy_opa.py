"""The policy engine on an OPA server or sidecar, reached over its REST API (opa-python-client).

The OPA engine either pushes each bundle to the server over REST (``push`` mode, development) or
leaves the server to pull it from the API's bundle endpoint and trusts a decision only when the
server made it with the revision in force (``bundle`` mode, production; see ``OpaEngine``).

Errors and decisions are those of every engine (``policy_engine``): ``EngineUnavailable`` when no
usable decision comes back, ``CompileError`` when a bundle is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from latentops.governance.policy_bundle import PolicyBundle
from latentops.governance.policy_engine import (
    DEFAULT_TIMEOUT_S,
    CompileError,
    EngineUnavailable,
    check_decision,
    compile_check,
)

OPA_MODES = ("push", "bundle")
DEFAULT_BUNDLE_WAIT_S = 15.0
LOAD_TIMEOUT_S = 60.0  # pushing policies and data (compiled by OPA on upload), not deciding
_SYNC_POLL_S = 0.25


def served_revisions(response: Mapping[str, Any]) -> set[str]:
    """The bundle revisions an OPA answer was made with (``?provenance=true``).

    OPA names each activated bundle with its manifest revision (``provenance.bundles.<name>.revision``);
    a server configured the legacy way gives one ``provenance.revision``.
    """
    provenance = response.get("provenance")
    if not isinstance(provenance, Mapping):
        return set()
    found = {str(b["revision"]) for b in (provenance.get("bundles") or {}).values() if isinstance(b, Mapping) and b.get("revision")}
    if provenance.get("revision"):
        found.add(str(provenance["revision"]))
    return found


class OpaEngine:
    """An OPA server or sidecar reached over its REST API.

    ``mode="push"`` (development): ``load`` uploads the modules and data to the server, which must
    then hold no bundle of its own (OPA refuses REST writes under a bundle's roots).

    ``mode="bundle"`` (production): the server pulls the bundle from the API (OPA's bundle service
    protocol, ``GET /api/v1/policies/bundle.tar.gz``) and ``load`` pushes nothing; it compile-checks
    the bundle in a child process so a bundle OPA would refuse never comes into force here. Every
    decision is asked with ``?provenance=true`` and trusted only when it was made with the revision
    in force. After a new revision comes into force, OPA has ``bundle_wait_s`` to poll and activate
    it; until then a decision made with another revision waits for it, and past that time it fails
    closed (``EngineUnavailable`` naming both revisions).
    """

    name = "opa"

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, mode: str = "push",
                 bundle_wait_s: float = DEFAULT_BUNDLE_WAIT_S) -> None:
        from opa_client import OpaClient

        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError(f"LATENTOPS_OPA_URL: {url!r} is not an http(s) URL")
        if mode not in OPA_MODES:
            raise ValueError(f"LATENTOPS_OPA_MODE: {mode!r} is not one of {', '.join(OPA_MODES)}")
        if bundle_wait_s <= 0:
            raise ValueError(f"LATENTOPS_OPA_BUNDLE_WAIT_S: must be positive, got {bundle_wait_s}")
        self.url = url
        self.mode = mode
        self.bundle_wait_s = bundle_wait_s
        port = parsed.port or (443 if parsed.scheme == "https" else 8181)
        self.client = OpaClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https", timeout=timeout_s, retries=0)
        # Loading policies is not on a request's path: OPA compiles every module it is sent, which
        # on a busy host can take longer than a decision may wait; only decisions keep the short timeout.
        self.admin = OpaClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https",
                               timeout=max(timeout_s, LOAD_TIMEOUT_S), retries=0)
        self._bundle: PolicyBundle | None = None
        # Bundle mode: by when OPA must serve the revision in force (replaced whole on each load, so a
        # thread still deciding with an older revision finds no time left); one thread at a time waits.
        self._deadlines: dict[str, float] = {}
        self._sync = threading.Lock()

    def load(self, bundle: PolicyBundle, *, with_tests: bool = False) -> None:
        """Push modules and data (push mode), or compile-check the bundle OPA will pull (bundle mode)."""
        if self.mode == "bundle":
            compile_check(bundle.modules, bundle.data, [bundle.entrypoint(path) for path in bundle.paths])
            self._deadlines = {bundle.revision: time.monotonic() + self.bundle_wait_s}
            self._bundle = bundle
            return
        try:
            self.admin.update_or_create_data(bundle.data["policy_data"], "policy_data")
            self.admin.update_or_create_data({"revision": bundle.revision}, "latentops_meta")
            self._upload({**bundle.modules, **(bundle.tests if with_tests else {})})
        except CompileError as error:
            raise CompileError(f"the OPA server at {self.url} refused the bundle: {error}") from None
        except Exception as error:  # noqa: BLE001 - the OPA client raises its own errors and plain HTTP ones
            raise CompileError(f"the OPA server at {self.url} refused the bundle: {_opa_message(error)}") from None
        self._bundle = bundle

    def _upload(self, sources: dict[str, str]) -> None:
        """Upload modules so that each one's imports are already there (OPA compiles on upload)."""
        pending = dict(sorted(sources.items()))
        while pending:
            failures: dict[str, Exception] = {}
            for path, source in pending.items():
                try:
                    self.admin.update_policy_from_string(source, path.replace("/", "_").removesuffix(".rego"), rego_compat=False)
                except Exception as error:  # noqa: BLE001 - retried once its dependencies are uploaded
                    failures[path] = error
            if len(failures) == len(pending):
                failed, failure = next(iter(failures.items()))
                raise CompileError(f"{failed}: {_opa_message(failure)}")
            pending = {path: sources[path] for path in failures}

    def _query(self, path: str, input: dict[str, Any], *, provenance: bool = False) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self.client.query_rule(input, f"latentops/{path}", "decision",
                                                              query_params={"provenance": "true"} if provenance else None)
        except Exception as error:  # noqa: BLE001 - connection refused, timeout, HTTP error: all mean unavailable
            raise EngineUnavailable(f"OPA server at {self.url}: {type(error).__name__}: {str(error)[:300]}") from None
        return response

    def evaluate(self, path: str, input: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "bundle":
            response = self._evaluate_pulled(path, input)
        else:
            response = self._query(path, input)
        if "result" not in response:
            raise EngineUnavailable(f"decision for {path!r} is undefined on the OPA server")
        return check_decision(response["result"])

    def _evaluate_pulled(self, path: str, input: dict[str, Any]) -> dict[str, Any]:
        """The answer, provided OPA made it with the revision in force (waiting for OPA if need be)."""
        bundle = self._bundle
        if bundle is None:
            raise EngineUnavailable("no policy bundle is loaded")
        response = self._query(path, input, provenance=True)
        if bundle.revision in served_revisions(response):
            return response
        self._await_revision(bundle.revision)
        response = self._query(path, input, provenance=True)
        served = served_revisions(response)
        if bundle.revision not in served:  # OPA changed revision again in between (a restart, a newer one)
            raise EngineUnavailable(self._mismatch(bundle.revision, served))
        return response

    def _await_revision(self, wanted: str) -> None:
        """Return once OPA serves ``wanted``; raise ``EngineUnavailable`` if it does not by the deadline.

        One thread at a time polls; the others queue on the lock and, once OPA caught up, pass after
        one check. Past the deadline each check is made once, so a stuck OPA denies at once.
        """
        with self._sync:
            while True:
                served = self.served_revisions()
                if wanted in served:
                    return
                remaining = self._deadlines.get(wanted, 0.0) - time.monotonic()
                if remaining <= 0:
                    raise EngineUnavailable(self._mismatch(wanted, served))
                time.sleep(min(_SYNC_POLL_S, remaining))

    def _mismatch(self, wanted: str, served: set[str]) -> str:
        held = f"revision {', '.join(sorted(served))}" if served else "no policy bundle"
        return (f"OPA server at {self.url} serves {held}, not the revision in force {wanted} "
                f"(it had {self.bundle_wait_s:g} s to pull it from the bundle service)")

    def served_revisions(self) -> set[str]:
        """The bundle revisions the OPA server has activated (empty when unreachable or without a bundle)."""
        try:
            return served_revisions(self.client.query_rule({}, "latentops_meta", query_params={"provenance": "true"}))
        except Exception:  # noqa: BLE001 - unreachable or an HTTP error: no revision can be trusted
            return set()

    def server_revision(self) -> str | None:
        try:
            return str(self.client.get_data("latentops_meta/revision")["result"])
        except Exception:  # noqa: BLE001 - unreachable or an HTTP error: no revision known
            return None

    def query_test(self, package: str, rule: str) -> bool:
        # A policy test is not a decision on a request's path: a decision table of dozens of cases can
        # take OPA longer than a decision may wait, so it runs with the loading timeout.
        try:
            response = self.admin.query_rule({}, package, rule)
        except Exception as error:  # noqa: BLE001 - unreachable or an HTTP error
            raise EngineUnavailable(str(error)[:300]) from None
        return response.get("result") is True


def _opa_message(error: Exception) -> str:
    """OPA's own message: opa-python-client errors carry it as ``message`` (with compile errors in ``str``)."""
    message = getattr(error, "message", None)
    if isinstance(message, str) and message and not getattr(error, "errors", None):
        return message[:500]
    return str(error)[:500] or type(error).__name__
