"""``GET /metrics`` for Prometheus, and the middleware that times every API request.

The scrape returns this process's counters and histograms plus the gauges read from the
database (see ``latentops.platform.metrics``). It always answers 200: a slow or failing database
shows up as ``latentops_metrics_collector_up{collector="database"} 0``, never as a failed scrape.

Latency is labelled by the matched route *template* (``/api/v1/jobs/{job_id}``), never the raw
path, so the number of series stays bounded; requests that match no route share ``<unmatched>``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentops.platform import metrics

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])
UNMATCHED = "<unmatched>"


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    settings = request.app.state.settings
    body = await run_in_threadpool(metrics.render, database_url=settings.database_url)
    return Response(content=body, media_type=metrics.CONTENT_TYPE)


def _templates(app: Any) -> list[tuple[str, re.Pattern[str]]]:
    """The app's path templates (from its OpenAPI paths, which carry router prefixes), static first."""
    cached = getattr(app.state, "metrics_route_templates", None)
    if cached is None:
        paths = sorted(app.openapi().get("paths", {}), key=lambda path: (path.count("{"), path))
        cached = [(path, compile_path(path)[0]) for path in paths]
        app.state.metrics_route_templates = cached
    return cached


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    if route is None:
        return UNMATCHED
    path = str(scope.get("path", ""))
    try:
        for template, regex in _templates(scope["app"]):
            if regex.match(path):
                return template
    except Exception:  # an app whose schema cannot be built still gets a bounded label below
        log.debug("metrics: no OpenAPI paths to name routes with", exc_info=True)
    # Routes outside the schema (/metrics, docs): the route's own template, without router prefix.
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED)


class LatencyMiddleware:
    """Pure ASGI middleware: observes ``latentops_api_request_duration_seconds`` for HTTP requests.

    Creating it also starts counting committed audit entries in the API process.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        metrics.watch_audit_appends()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before sending a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics.api_request(method=str(scope.get("method", "")), route=_route_template(scope), status=status,
                                duration_s=time.perf_counter() - started)
