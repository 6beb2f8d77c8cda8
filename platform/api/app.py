"""The FastAPI application: routers under ``/api/v1`` and the one error shape.

Every ``LatentopsError`` becomes ``{"error", "detail", "reasons"}`` with the status its class
names; request validation errors use the same shape, and so do the boundary's limits (JSON size
and nesting, upload size) and the last-resort 500 (``limits``). A 429 says when to come back
(``Retry-After``). Routes stay thin: they translate HTTP into service calls.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Scope

from latentops.core.errors import LatentopsError, retry_after
from latentops.core.settings import Settings, get_settings
from latentops.governance import integration
from latentops.platform import database
from latentops.platform.api import (
    assets,
    audit,
    auth,
    copyright,
    datasets,
    docs,
    finetune,
    generations,
    health,
    jobs,
    metrics_route,
    models,
    policies,
    quarantine,
    screening,
    users,
)
from latentops.platform.api.limits import (
    INTERNAL_ERROR,
    JsonLimitMiddleware,
    LastResortMiddleware,
)
from latentops.platform.api.security import (
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    TrustedProxyMiddleware,
)
from latentops.platform.services.auth import LoginThrottle
from latentops.platform.web import admin_pages, compliance_pages, dataset_pages, pages, policy_pages, portal

log = logging.getLogger(__name__)
# What FastAPI says (400) when a request body cannot be decoded at all, e.g. invalid UTF-8.
BODY_PARSE_ERROR = "There was an error parsing the body"


def settle_heap(settings: Settings) -> None:
    """Load what the first request would, then move every object made so far out of the collector's sight.

    A server process holds a large, permanent heap: the policy engine's native libraries come with
    torch, hundreds of thousands of objects that never become garbage. Python's full collection
    walks all of them, pausing every request in the process for 200-250 ms each time it runs (a
    p99 of job submits of 350 ms at 40 requests/s, measured). Frozen (``gc.freeze``), they are
    skipped; objects made by requests are collected as before. What the first requests would
    import or load (the database driver, the policies in force, the broker's client, each job
    kind's parameter check) is loaded here first: left to them, it stayed in the collector's sight
    (full collections of 27-51 ms every few seconds under load, measured; with these loaded first
    and the routes' set-up frozen too, ``route_once``, none in a 60 s run at 50 requests/s).
    """
    from latentops.governance import audit_mac, native, policy
    from latentops.governance.policy_engine import EngineUnavailable
    from latentops.platform.queue import app as queue
    from latentops.platform.services import jobs

    try:
        native.load_regopy()
    except ImportError as error:  # the policy service reports a missing engine on the first decision
        log.warning("policy engine not importable at startup: %s", error)
    try:  # the policy revision in force (files and data edits), which the first decision would load
        with database.session_scope(settings.database_url) as session:
            policy.get_service().refresh(session)
    except (LatentopsError, sa_exc.SQLAlchemyError, EngineUnavailable) as error:  # not ready: the first decision loads them
        log.warning("policies not loaded at startup: %s", error)
    try:  # the audit MAC key, which the first audited request would read
        audit_mac.load_or_create_key(audit_mac.key_path(settings))
    except (LatentopsError, OSError) as error:  # reported again by the first audited request
        log.warning("audit MAC key not loaded at startup: %s", error)
    queue.load_client()
    for kind in jobs.JOB_KINDS.values():  # each kind's parameter check, imported by its first submit
        if kind.validator:
            jobs.load_function(kind.validator)
    gc.collect()
    gc.freeze()


async def route_once(app: FastAPI) -> None:
    """Pass one request for a path that no route has through the router, past the middleware (no
    metrics, no log): FastAPI sets up its routes' request handling on the first request it routes,
    some 15,000 objects that belong in the heap ``settle_heap`` freezes, not in the collector's sight."""
    path = "/api/v1/.startup"
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
        "client": None, "server": None, "state": {}, "app": app,
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: Message) -> None:
        return None

    try:
        await app.router(scope, receive, send)
    except StarletteHTTPException:  # the 404 the app's handler would have rendered
        pass


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await route_once(app)
    settle_heap(settings)
    # Requests hand their audit entries to this thread instead of integrating them themselves (one
    # per database and process: a second app on the same database shares the first one's).
    engine = database.get_engine(settings.database_url)
    integrator = None
    if integration.integrator_for(engine) is None:
        integrator = integration.Integrator(engine, delay_s=settings.audit_batch_ms / 1000).start()
    try:
        yield
    finally:
        if integrator is not None:
            await asyncio.to_thread(integrator.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="latentops", version="0.1.0", docs_url=None, redoc_url=None, openapi_url="/api/v1/openapi.json",
                  lifespan=_lifespan)
    app.state.settings = settings
    app.state.login_throttle = LoginThrottle(settings.login_rate_per_minute)

    @app.exception_handler(LatentopsError)
    async def _latentops_error(request: Request, error: LatentopsError) -> Response:
        if portal.wants_html(request):  # a portal page or htmx fragment: the same error, as HTML
            page = portal.error_page(request, error.status_code, error.error, error.detail, error.reasons)
            page.headers.update(retry_after(error))
            return page
        return JSONResponse(error.to_json(), status_code=error.status_code, headers=retry_after(error))

    # Data too deeply nested to process (JSON in a form field, say): the client's doing, not the server's.
    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, _error: RecursionError) -> JSONResponse:
        log.warning("request data nested too deeply to process: %s %s", request.method, request.url.path)
        return JSONResponse({"error": "invalid_input",
                             "detail": "request: data nested too deeply to process (JSON may nest at most "
                                       f"{settings.max_json_depth} levels, LATENTOPS_MAX_JSON_DEPTH)",
                             "reasons": [{"field": "request", "limit": "max_json_depth",
                                          "max_depth": settings.max_json_depth}]}, status_code=422)

    # Reached only through the outer middleware (LastResortMiddleware answers the rest): JSON, not text.
    @app.exception_handler(Exception)
    async def _unhandled(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error answering %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    # A number the database cannot hold (an id beyond 64 bits) is bad input, not a server error.
    @app.exception_handler(OverflowError)
    @app.exception_handler(sa_exc.DataError)
    async def _out_of_range(_request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": "invalid_input", "detail": "a number in the request is out of range",
                             "reasons": []}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in item.get("loc", ())), "message": item.get("msg", "")}
            for item in error.errors()
        ]
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
        return JSONResponse({"error": "invalid_input", "detail": detail, "reasons": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        name = {401: "authentication_failed", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "http_error"
        )
        detail = str(error.detail)
        if error.status_code == 400 and detail == BODY_PARSE_ERROR:  # FastAPI's words for a body it cannot decode
            name, detail = "invalid_input", "body: not a JSON document in UTF-8 (check the encoding and the syntax)"
        if portal.wants_html(request):
            return portal.error_page(request, error.status_code, name, detail, [])
        return JSONResponse({"error": name, "detail": detail, "reasons": []}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    app.include_router(health.router, prefix="/api/v1")
    for module in (auth, users, jobs, finetune, generations, datasets, models, assets, audit, policies, quarantine,
                   copyright, screening):
        app.include_router(module.router, prefix="/api/v1")
    portal.install(app, pages.router, dataset_pages.router, compliance_pages.router, admin_pages.router, policy_pages.router)
    app.include_router(metrics_route.router)  # GET /metrics for Prometheus
    docs.install(app)
    # Outermost last: latency > forwarded client > headers > last resort > JSON limits > upload limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(JsonLimitMiddleware, max_bytes=settings.max_json_bytes, max_depth=settings.max_json_depth)
    app.add_middleware(LastResortMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(TrustedProxyMiddleware, trusted=settings.trusted_proxies)
    app.add_middleware(metrics_route.LatencyMiddleware)
    return app
