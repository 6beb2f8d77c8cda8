"""The API documentation, served from this server only: Swagger UI at ``/api/docs``, ReDoc at ``/api/redoc``.

FastAPI's own pages load their scripts, styles and fonts from a CDN. These pages load the same
Swagger UI and ReDoc builds from the ``fastapi-offline`` package (``/api/docs/assets/...``) and
set Swagger UI up from a script file rather than inline, so the pages work under a
Content-Security-Policy that names no other origin (``security.DOCS_CSP``). Swagger UI's online
spec validator is turned off: it would send the spec to validator.swagger.io.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_PATH = "/api/docs/assets"
router = APIRouter(include_in_schema=False)

_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API</title>
<link rel="icon" href="{assets}/favicon.png"><link rel="stylesheet" href="{assets}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script><script src="/api/docs/init.js"></script></body></html>
"""
_REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API</title>
<link rel="icon" href="{assets}/favicon.png"></head>
<body><redoc spec-url="{spec}" hide-download-button="false"></redoc>
<script src="{assets}/redoc.standalone.js"></script></body></html>
"""


def _spec_url(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + str(request.app.openapi_url)


@router.get("/api/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    root = str(request.scope.get("root_path", ""))
    return HTMLResponse(_SWAGGER_PAGE.format(title=html.escape(request.app.title), assets=root + ASSETS_PATH))


@router.get("/api/docs/init.js")
def swagger_init(request: Request) -> Response:
    options = {"url": _spec_url(request), "dom_id": "#swagger-ui", "layout": "BaseLayout", "deepLinking": True,
               "showExtensions": True, "showCommonExtensions": True, "validatorUrl": None}
    script = (f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(options)}, "
              "{presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}));\n")
    return Response(script, media_type="text/javascript")


@router.get("/api/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    root = str(request.scope.get("root_path", ""))
    return HTMLResponse(_REDOC_PAGE.format(title=html.escape(request.app.title), assets=root + ASSETS_PATH,
                                           spec=html.escape(_spec_url(request))))


def install(app: FastAPI) -> None:
    """Add the documentation pages and their assets to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS)), name="api-docs-assets")
