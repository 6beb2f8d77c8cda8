"""The FastAPI application: routers under ``/api/v1`` and the one error shape.

Every ``LatentopsError`` becomes ``{"error", "detail", "reasons"}`` with the status its class
names; request validation errors use the same shape. Routes stay thin: they translate HTTP into
service calls.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentops.platform.api import health, metrics_route
from latentops.platform.errors import LatentopsError
from latentops.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="latentops", version="0.1.0", docs_url="/api/docs", openapi_url="/api/v1/openapi.json")
    app.state.settings = settings

    @app.exception_handler(LatentopsError)
    async def _latentops_error(_request: Request, error: LatentopsError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in item.get("loc", ())), "message": item.get("msg", "")}
            for item in error.errors()
        ]
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
        return JSONResponse({"error": "invalid_input", "detail": detail, "reasons": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        name = {401: "authentication_failed", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "http_error"
        )
        return JSONResponse({"error": name, "detail": str(error.detail), "reasons": []}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    app.include_router(health.router, prefix="/api/v1")
    app.include_router(metrics_route.router)  # GET /metrics for Prometheus
    app.add_middleware(metrics_route.LatencyMiddleware)
    return app
