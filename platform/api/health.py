"""``GET /api/v1/health``: database, broker and worker status, plus the governance layer's state.

``policy`` names the revision in force and any reload error, and with an OPA server the revision
it serves (``stale`` until it has the one in force); ``screening`` (``screening.health``) is
``ok`` with every category covered by a detector, ``partial`` with the detectors covering each
category and the ``uncovered`` ones (and whether policy holds or releases images for them), and
``unscreened`` (loudly) when no real content detector is configured, in which case the policy
decides whether images may be released.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from latentops.core.errors import ServiceUnavailable
from latentops.core.settings import Settings
from latentops.platform.database import check_connection
from latentops.platform.services.jobs import ping_broker

router = APIRouter(tags=["health"])


def _workers(settings: Settings) -> dict[str, Any]:
    from latentops.platform.queue.app import celery_app

    replies = celery_app().control.ping(timeout=1.0) or []
    names = sorted(name for reply in replies for name in reply)
    return {"status": "ok" if names else "none", "workers": names}


def _policy() -> dict[str, Any]:
    from latentops.governance import policy

    try:
        state = policy.status()
    except Exception as error:  # noqa: BLE001 - the report must still come back; the engine fails closed anyway
        return {"status": "error", "detail": f"{type(error).__name__}: {error}"}
    entry = {"status": "ok" if state["revision"] and not state["last_error"] else "error",
             "revision": state["revision"], "engine": state["engine"]}
    if state["last_error"]:
        entry["detail"] = state["last_error"]
    served = getattr(policy.get_service().engine, "server_revision", None)
    if served is not None:  # an OPA server: which revision it decides with (bundle mode: what it pulled)
        entry["served_revision"] = served()
        if entry["status"] == "ok" and entry["served_revision"] != state["revision"]:
            entry["status"] = "stale"
            entry["detail"] = (f"OPA serves revision {entry['served_revision'] or 'none'}, not {state['revision']}; "
                               "decisions fail closed until it has the revision in force")
    return entry


def _screening(settings: Settings) -> dict[str, Any]:
    from latentops.governance import screening

    try:
        return screening.health(settings)
    except Exception as error:  # noqa: BLE001 - the report must still come back
        return {"status": "error", "detail": f"{type(error).__name__}: {error}"}


def _audit_witnesses(settings: Settings) -> dict[str, Any]:
    """Whether every configured witness cosigned the newest audit checkpoint (``missing`` names why not)."""
    from latentops.governance import witness_client, witness_policy
    from latentops.platform.database import session_scope

    try:
        with session_scope(settings.database_url) as db:
            return witness_policy.health(db, witness_client.configured())
    except Exception as error:  # noqa: BLE001 - the report must still come back
        return {"status": "error", "detail": f"{type(error).__name__}: {error}"}


def health_report(settings: Settings) -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        check_connection(settings.database_url)
        report["database"] = {"status": "ok"}
    except ServiceUnavailable as error:
        report["database"] = {"status": "error", "detail": error.detail}
    try:
        ping_broker(settings, timeout=2.0)
        report["broker"] = {"status": "ok"}
        report["workers"] = _workers(settings)
    except ServiceUnavailable as error:
        report["broker"] = {"status": "error", "detail": error.detail}
        report["workers"] = {"status": "unknown", "workers": []}
    report["policy"] = _policy()
    report["screening"] = _screening(settings)
    if settings.audit_witnesses:
        report["audit_witnesses"] = _audit_witnesses(settings)
    healthy = report["database"]["status"] == "ok" and report["broker"]["status"] == "ok"
    report["status"] = "ok" if healthy and report["workers"]["status"] == "ok" else ("degraded" if healthy else "error")
    report["mode"] = settings.mode
    return report


@router.get("/health")
async def health(request: Request, response: Response) -> dict[str, Any]:
    report = await run_in_threadpool(health_report, request.app.state.settings)
    if report["status"] == "error":
        response.status_code = 503
    return report
